"""``--datastore`` of the ``checkpoint`` commands accepts every datastore Metaflow's own
``--datastore`` accepts, ours (``s3-compatible``, ``coreweave``) among them, and maps each to
the checkpoint store of the datastore it is built on (review r14 R3: the list was hard-coded to
``local|s3|azure|gs``, so ``metaflow checkpoint list --datastore s3-compatible`` was refused
while a flow on that datastore worked).  Run as a user runs them: ``metaflow checkpoint ...``
in subprocesses, against a real S3 server (moto).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli.test_cli import assert_user_error, cli, version_of
from metaflow_extensions.checkpointing.plugins.checkpointing.cli.stores import datastore_kinds


def test_datastore_choices_are_the_registered_datastores(flow_env):
    """The checkpoint CLI's ``--datastore`` accepts exactly Metaflow's own ``--datastore``
    choices (read from Metaflow's command, not from our list), so a datastore a flow accepts
    is never refused by the checkpoint CLI; another name is a usage error naming them all."""
    from metaflow.cli import start

    (theirs,) = [p.type.choices for p in start.params if p.name == "datastore"]
    env, tmp = flow_env
    result = cli(env, tmp, "list", "--datastore", "bogus", expect=2)
    offered = re.search(r"invalid choice: bogus\. \(choose from (.*)\)", result.stderr)
    assert offered, result.describe()
    assert sorted(offered.group(1).split(", ")) == sorted(theirs)
    assert offered.group(1).startswith("local, s3, azure, gs, ")  # stable, readable order
    kinds = datastore_kinds()
    # Ours are Metaflow's S3 datastore under other names: an S3 root; spin is a local one.
    assert {d: kinds[d] for d in ("s3-compatible", "coreweave", "spin")} == {
        "s3-compatible": "s3",
        "coreweave": "s3",
        "spin": "local",
    }


@pytest.mark.s3
def test_datastore_s3_compatible_and_coreweave_list_the_s3_store(s3_server, flow_env, tmp_path):
    """A checkpoint uploaded with ``--datastore s3`` is listed by ``--datastore
    s3-compatible`` and ``--datastore coreweave`` (the same ``<sysroot>/mf.checkpointing``),
    with or without ``--root``; before: "invalid choice: s3-compatible", exit 2."""
    env, tmp = flow_env
    bucket = s3_server["new_bucket"]()
    env = dict(env, METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket, **s3_server["env"])
    model = Path(tmp_path, "model")
    model.mkdir()
    (model / "weights.bin").write_bytes(b"w" * 100)
    version = version_of(cli(env, tmp, "upload", model, "--name", "m", "--datastore", "s3").stdout)

    root = "s3://%s/mf/mf.checkpointing" % bucket
    for args in (
        ["--datastore", "s3-compatible"],
        ["--datastore", "coreweave"],
        ["--datastore", "s3-compatible", "--root", "s3://%s/mf" % bucket],
    ):
        refs = cli(env, tmp, "list", "--json", *args).json()
        assert [(r["version"], r["root"]) for r in refs] == [(version, root)], args

    # With no S3 root configured, the error names the variable the datastore reads.
    del env["METAFLOW_DATASTORE_SYSROOT_S3"]
    missing = cli(env, tmp, "list", "--datastore", "coreweave", expect=1)
    assert_user_error(missing, "METAFLOW_DATASTORE_SYSROOT_S3", "--root s3://bucket/metaflow")
