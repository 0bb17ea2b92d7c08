"""What the ``checkpoint`` commands print and which store they reach (issue 15, items 4 and 6):
short ids and rounded floats in tables, what ``list`` without a target lists, and
``--datastore``/``--root`` reaching a datastore's checkpoints (local, S3 on moto; the Azure and
GCS roots they build).  Run as a user runs them: ``metaflow checkpoint ...`` in subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from integration.flowrun import subprocess_env

from cli.test_cli import assert_user_error, cli, json_stdout, version_of
from metaflow_extensions.checkpointing.plugins.checkpointing.cli.output import round_float

pytestmark = pytest.mark.flow

#: Metadata as training loops log it: floats with every digit.
METRICS = {"val_loss": 0.1 + 0.2, "lr": 1.23456e-05, "top1": 0.912345, "tokens": 12345.678}


@pytest.fixture
def model_dir(tmp_path) -> Path:
    src = tmp_path / "model"
    src.mkdir()
    (src / "weights.bin").write_bytes(b"w" * 100)
    return src


@pytest.mark.parametrize(
    "value,shown",
    [
        (0.1 + 0.2, "0.3"),
        (0.912345, "0.9123"),
        (12345.678, "12346"),
        (2.0, "2"),
        (-0.5, "-0.5"),
        (1.23456e-05, "1.235e-05"),
        (3.0e20, "3e+20"),
        (0.0, "0"),
        (float("inf"), "inf"),
    ],
)
def test_a_float_in_a_table_has_four_significant_digits(value, shown):
    assert round_float(value) == shown


def test_named_listing_shows_ids_rounded_floats_and_says_what_it_lists(flow_env, model_dir):
    env, tmp = flow_env
    uploaded = cli(env, tmp, "upload", model_dir, "--name", "m", "--metadata", json.dumps(METRICS))
    version = version_of(uploaded.stdout)

    listed = cli(env, tmp, "list")
    rows = listed.table()
    assert rows[0][:3] == ["CHECKPOINT", "ID", "NAME"]
    assert rows[1][:3] == ["m@" + version, version[:8], "m"]
    assert rows[1][-1] == "lr=1.235e-05 tokens=12346 top1=0.9123 +1"
    # --json keeps every digit.
    assert json_stdout(env, tmp, "list", "--json")[0]["metadata"] == METRICS
    # The displayed id is accepted back.
    assert cli(env, tmp, "show", "m@" + version[:8]).fields()["id"] == version[:8]

    # Without a target: one line on stderr says what is listed and how to list a flow.
    store = tmp / ".metaflow" / "mf.checkpointing"
    assert listed.diagnostics() == [
        "Listing the named checkpoints (uploads) of the store %s; to list a flow's "
        "checkpoints: metaflow checkpoint list MyFlow" % store
    ]
    assert cli(env, tmp, "list", "--named").diagnostics() == []  # asked for: nothing to explain


def test_root_may_be_a_datastore_root_or_a_checkpoint_root(flow_env, model_dir):
    """``--root`` given the datastore root (``.metaflow``) finds ``mf.checkpointing/`` below it;
    a checkpoint root (the default one, or a custom one) is used as given, as before."""
    env, tmp = flow_env
    cli(env, tmp, "upload", model_dir, "--name", "m")
    custom = tmp / "custom"
    cli(env, tmp, "upload", model_dir, "--name", "c", "--root", custom)
    assert not (custom / "mf.checkpointing").exists()  # a new store: created where it was told

    def names(*args):
        return [r["name"] for r in cli(env, tmp, "list", "--json", *args).json()]

    datastore = tmp / ".metaflow"
    assert names("--root", datastore) == ["m"]  # before: [], the datastore root as a store
    assert names("--datastore-root", datastore) == ["m"]  # Metaflow's spelling
    assert names("--root", datastore / "mf.checkpointing") == ["m"]
    assert names("--datastore", "local") == ["m"]  # found from the configured sysroot
    assert names("--datastore", "local", "--root", datastore) == ["m"]
    assert names("--root", custom) == ["c"]
    assert names("--datastore", "local", "--root", custom) == ["c"]  # holds checkpoints: as is
    # The option reaches every command (here: a run's checkpoints are read there too).
    assert cli(env, tmp, "show", "m", "--json", "--root", datastore).json()["name"] == "m"


def test_a_root_with_no_checkpoint_store_is_said_on_read_commands(flow_env, model_dir):
    """A mistyped ``--root`` on list/show/du/verify says "No checkpoint store at <root>" on
    stderr (before: "0 checkpoints", "OK" and exit 0, as if it were an empty store); verify
    exits non-zero; a root that holds checkpoints says nothing of the kind."""
    env, tmp = flow_env
    cli(env, tmp, "upload", model_dir, "--name", "m")
    typo = tmp / "no" / "such" / "dir"
    said = "No checkpoint store at %s" % typo
    for args, rc in (("list",), 0), (("du",), 0), (("verify",), 1), (("show", "m"), 1):
        result = cli(env, tmp, *args, "--root", typo, expect=rc)
        assert said in result.stderr, result.describe()
    assert not typo.exists()  # reading did not create it
    real = cli(env, tmp, "verify", "--root", tmp / ".metaflow")
    assert "No checkpoint store" not in real.stderr, real.describe()


def test_datastore_choices_and_roots_of_another_datastore_are_refused(flow_env):
    env, tmp = flow_env
    unknown = cli(env, tmp, "list", "--datastore", "hdfs", expect=2)
    assert "hdfs" in unknown.stderr and "local, s3, azure, gs" in unknown.stderr
    mismatch = cli(env, tmp, "list", "--datastore", "s3", "--root", tmp, expect=2)
    assert "is not a root of the s3 datastore (e.g. s3://bucket/metaflow)" in mismatch.stderr
    missing = cli(env, tmp, "list", "--datastore", "s3", expect=1)
    assert_user_error(missing, "no s3 datastore root is configured", "--root")


def test_datastore_alone_builds_each_datastores_checkpoint_root(flow_env):
    """``--datastore D`` alone is D's configured root + ``mf.checkpointing`` (Azure's
    ``container/prefix`` as ``az://``), whatever METAFLOW_CHECKPOINT_ROOT says.  Azure and GCS
    are not reachable here: the root each builds is checked (nothing is read to build it)."""
    env, tmp = flow_env
    env = dict(
        env,
        METAFLOW_DATASTORE_SYSROOT_S3="s3://bkt/metaflow/",
        METAFLOW_DATASTORE_SYSROOT_GS="gs://gbkt/metaflow",
        METAFLOW_DATASTORE_SYSROOT_AZURE="container/metaflow",
        METAFLOW_CHECKPOINT_ROOT=str(tmp / "elsewhere"),
    )
    script = (
        "import json\n"
        "from metaflow_extensions.checkpointing.plugins.checkpointing.cli.stores import "
        "store_root\n"
        "print(json.dumps({d: store_root(None, d) for d in ('local', 's3', 'gs', 'azure')}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=subprocess_env(env),
        cwd=str(tmp),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "local": str(tmp / ".metaflow" / "mf.checkpointing"),
        "s3": "s3://bkt/metaflow/mf.checkpointing",
        "gs": "gs://gbkt/metaflow/mf.checkpointing",
        "azure": "az://container/metaflow/mf.checkpointing",
    }


@pytest.mark.s3
def test_datastore_s3_reaches_the_configured_s3_store(s3_server, flow_env, model_dir):
    env, tmp = flow_env
    bucket = s3_server["new_bucket"]()
    env = dict(env, METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket, **s3_server["env"])
    uploaded = cli(env, tmp, "upload", model_dir, "--name", "s3m", "--datastore", "s3")
    version = version_of(uploaded.stdout)
    keys = s3_server["client"].list_objects_v2(Bucket=bucket, Prefix="mf/")["Contents"]
    assert any(k["Key"].startswith("mf/mf.checkpointing/manifests/") for k in keys)

    root = "s3://%s/mf/mf.checkpointing" % bucket
    for args in (
        ["--datastore", "s3"],
        ["--root", "s3://%s/mf" % bucket],  # a datastore root: mf.checkpointing/ below it
        ["--datastore", "s3", "--root", "s3://%s/mf" % bucket],
        ["--root", root],  # the checkpoint root itself, as before
    ):
        refs = cli(env, tmp, "list", "--json", *args).json()
        assert [(r["version"], r["root"]) for r in refs] == [(version, root)], args
    # Another datastore root given with --datastore: its store is below it, even when new.
    cli(
        env,
        tmp,
        "upload",
        model_dir,
        "--name",
        "n",
        "--datastore",
        "s3",
        "--root",
        "s3://%s/x" % bucket,
    )
    keys = s3_server["client"].list_objects_v2(Bucket=bucket, Prefix="x/")["Contents"]
    assert all(k["Key"].startswith("x/mf.checkpointing/") for k in keys)
