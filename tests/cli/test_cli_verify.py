"""``checkpoint verify`` on the command line and ``Checkpoint().verify``: against the checkpoints
of a real run of cli_flow.py (local datastore) and named checkpoints on S3 (moto), with every
kind of problem injected into the store for real."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import flow_environment
from integration.flowrun import local_root, run_flow

from .test_cli import (  # noqa: F401 - fixtures: _client_namespace (autouse), s3_cli_env, model_dir
    FLOW,
    FLOW_FILE,
    Cli,
    _client_namespace,
    assert_user_error,
    cli,
    model_dir,
    s3_cli_env,
)

pytestmark = pytest.mark.flow


@dataclass
class Ran:
    env: dict
    tmp: Path
    run: str
    refs: list  # `list FLOW/run --json`, newest first: final, epoch 2, epoch 1, epoch 0

    @property
    def root(self) -> Path:
        return local_root(self.tmp)

    def epoch(self, n: int) -> dict:
        return next(r for r in self.refs if r["metadata"].get("epoch") == n)

    def manifest(self, ref: dict) -> Path:
        return self.root / ref["key"]

    def blob(self, ref: dict) -> tuple[str, Path]:
        """The (only) blob of a checkpoint of cli_flow.py: its files are packed together."""
        body = json.loads(self.manifest(ref).read_bytes())
        (h,) = {c[0] for f in body["files"] for c in f["chunks"]}
        return "blobs/%s/%s" % (h[:2], h), self.root / "blobs" / h[:2] / h


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> Ran:
    tmp = tmp_path_factory.mktemp("verify")
    (tmp / "home").mkdir()
    env = flow_environment(tmp)
    run = run_flow(FLOW_FILE, env, tmp)
    refs = cli(env, tmp, "list", "%s/%s" % (FLOW, run.id), "--json").json()
    return Ran(env, tmp, run.id, refs)


@pytest.fixture
def world(ran):
    """The run's store, restored after the test (mtimes included) whatever it broke."""
    backup = ran.tmp / "backup"
    shutil.copytree(ran.root, backup)
    yield ran
    shutil.rmtree(ran.root)
    shutil.copytree(backup, ran.root)
    shutil.rmtree(backup)


def verify(world: Ran, *args, expect: int = 0, flow: bool = False) -> Cli:
    return cli(world.env, world.tmp, "verify", *args, expect=expect, flow=flow)


def problems(result: Cli) -> dict:
    """{key: PROBLEM} from the table printed before the summary."""
    table = result.stdout.split("\n\n")[0].splitlines()
    assert table[0].split() == ["PROBLEM", "KEY", "DETAIL"], result.describe()
    return {line.split()[1]: line.split()[0] for line in table[1:]}


# ------------------------------------------------------------------------------ clean
def test_a_clean_store_passes_for_every_target(world):
    whole = verify(world)
    assert whole.stdout.startswith("Checked 4 checkpoints of the whole store in %s" % world.root)
    assert whole.stdout.rstrip().endswith("OK: 4 intact checkpoints.")
    doc = verify(world, "--json", "--deep").json()
    assert doc["ok"] is True and doc["problems"] == 0 and doc["deep"] is True
    assert doc["manifests"] == 4 and doc["checkpoints_ok"] == 4
    assert doc["bytes_hashed"] == sum(
        p.stat().st_size for p in (world.root / "blobs").rglob("*") if p.is_file()
    )
    assert doc["unreferenced"] == {"blobs": 0, "bytes": 0, "keys": []}
    run = "%s/%s" % (FLOW, world.run)
    for target, count in [(FLOW, 4), (run, 4), (run + "/train", 4), (world.refs[0]["pathspec"], 4)]:
        doc = verify(world, target, "--json").json()
        assert (doc["ok"], doc["manifests"], doc["target"]) == (True, count, target)
        assert doc["unreferenced"] is None and doc["orphaned_leases"] is None  # whole store only
    one = verify(world, world.refs[1]["key"], "--json").json()
    assert (one["ok"], one["manifests"], one["target"]) == (True, 1, world.refs[1]["key"])
    by_url = verify(world, world.refs[1]["url"], "--deep").stdout
    assert "OK: 1 intact checkpoint (" in by_url
    # The flow CLI: the store of the flow's datastore, pure JSON on stdout.
    flow_json = verify(world, "--json", flow=True)
    assert json.loads(flow_json.stdout)["manifests"] == 4


# ------------------------------------------------------------------------------ problems
def delete_blob(world: Ran) -> tuple:
    key, path = world.blob(world.epoch(0))
    path.unlink()
    return "MISSING", world.epoch(0)["key"], lambda doc: doc["missing"][0]["key"]


def flip_byte(world: Ran) -> tuple:
    key, path = world.blob(world.epoch(0))
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    assert verify(world, "--json").json()["ok"] is True  # same size: only --deep can tell
    return "CORRUPT", key, lambda doc: doc["corrupt"][0]["key"]


def truncate_manifest(world: Ran) -> tuple:
    path = world.manifest(world.epoch(1))
    path.write_bytes(path.read_bytes()[:80])
    return "DAMAGED", world.epoch(1)["key"], lambda doc: doc["damaged"][0]["key"]


def newer_format(world: Ran) -> tuple:
    path = world.manifest(world.epoch(1))
    body = json.loads(path.read_bytes())
    path.write_text(json.dumps(dict(body, format="metaflow-checkpointing/2", extra={"new": 1})))
    return "DAMAGED", world.epoch(1)["key"], lambda doc: doc["damaged"][0]["key"]


def unreferenced_blob(world: Ran) -> tuple:
    key, _path = world.blob(world.epoch(0))
    cli(world.env, world.tmp, "delete", world.epoch(0)["key"], "--yes")
    return "UNREFERENCED", key, lambda doc: doc["unreferenced"]["keys"][0]


def expired_lease(world: Ran) -> tuple:
    """What a save killed mid-way leaves: its lease, never refreshed again (an hour old)."""
    lease = world.root / "leases" / "0123456789abcdef"
    lease.mkdir(parents=True)
    (lease / "start").write_text('{"ttl": 600}')
    (lease / "alive").write_text("")
    hour_ago = time.time() - 3600
    for path in lease.iterdir():
        os.utime(path, (hour_ago, hour_ago))
    return (
        "LEASE",
        "leases/0123456789abcdef",
        lambda doc: "leases/%s" % (doc["orphaned_leases"][0]["session"]),
    )


PROBLEMS = [
    delete_blob,
    flip_byte,
    truncate_manifest,
    newer_format,
    expired_lease,
    unreferenced_blob,
]


@pytest.mark.parametrize("inject", PROBLEMS, ids=[f.__name__ for f in PROBLEMS])
def test_each_problem_is_reported_with_its_key_and_exit_1(world, inject):
    kind, key, found = inject(world)
    deep = ("--deep",) if inject is flip_byte else ()
    text = verify(world, *deep, expect=1)
    assert problems(text).get(key) == kind, text.describe()
    assert "PROBLEMS: 1 " in text.stdout
    doc = verify(world, "--json", *deep, expect=1).json()
    assert doc["ok"] is False and found(doc) == key
    if kind == "DAMAGED":
        reason = "newer_format" if inject is newer_format else "unparsable"
        assert doc["damaged"] == [
            {"key": key, "reason": reason, "error": doc["damaged"][0]["error"]}
        ]
        # The checkpoint's data is no longer referenced by a readable manifest either.
        assert len(doc["unreferenced"]["keys"]) == 1


def test_a_narrower_target_sees_only_its_checkpoints(world):
    delete_blob(world)
    run = "%s/%s" % (FLOW, world.run)
    doc = verify(world, run, "--json", expect=1).json()
    assert [m["key"] for m in doc["missing"]] == [world.epoch(0)["key"]]
    assert doc["missing"][0]["files"] == ["nested/epoch.txt", "weights.bin"]
    assert (
        verify(world, world.refs[0]["key"])
        .stdout.rstrip()
        .endswith(
            "intact checkpoint (leases and unreferenced data are checked only for the whole store)."
        )
    )


def test_gc_clears_what_verify_calls_unreferenced(world):
    _kind, key, _found = unreferenced_blob(world)
    before = verify(world, "--json", expect=1).json()["unreferenced"]
    report = cli(world.env, world.tmp, "gc", "--grace-hours", "0", "--json").json()
    assert report["blobs_deleted"] == before["blobs"] == 1
    assert report["bytes_reclaimed"] == before["bytes"]
    verify(world, "--deep")


# ------------------------------------------------------------------------------ errors
def test_bad_targets_are_one_error_line_and_usage_errors_exit_2(world):
    assert_user_error(verify(world, "NoSuchFlow", expect=1), "Unknown flow 'NoSuchFlow'")
    missing = world.refs[0]["key"].replace("-final.json", "-gone.json")
    assert_user_error(verify(world, missing, expect=1), "No checkpoint with key")
    for args in (["--bogus"], ["a", "b"]):
        result = verify(world, *args, expect=2)
        assert "Usage: metaflow checkpoint verify" in result.stderr


def test_the_client_verifies_a_store_a_key_or_a_reference(world):
    from metaflow import Checkpoint

    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
        CheckpointNotFound,
    )

    client = Checkpoint(root=str(world.root))
    assert client.verify().ok and client.verify(deep=True).checkpoints_ok == 4
    ref = dict(world.refs[1], root=str(world.root))
    assert client.verify(ref).manifests == 1
    delete_blob(world)
    report = client.verify(world.epoch(0)["key"])
    assert not report.ok and [m.key for m in report.missing] == [world.epoch(0)["key"]]
    with pytest.raises(CheckpointNotFound):
        client.verify(world.refs[0]["key"].replace("-final.json", "-gone.json"))


# ------------------------------------------------------------------------------ S3
@pytest.mark.s3
def test_verify_named_checkpoints_on_s3(request, s3_server):
    env, tmp, bucket = request.getfixturevalue("s3_cli_env")
    model = request.getfixturevalue("model_dir")
    root = "s3://%s/mf/mf.checkpointing" % bucket
    cli(env, tmp, "upload", model, "--name", "s3model", "--root", root)
    ok = cli(env, tmp, "verify", "--root", root, "--deep")
    assert "OK: 1 intact checkpoint." in ok.stdout
    listed = s3_server["client"].list_objects_v2(Bucket=bucket, Prefix="mf/mf.checkpointing/blobs/")
    (blob,) = [o["Key"] for o in listed["Contents"]]
    s3_server["client"].delete_object(Bucket=bucket, Key=blob)
    doc = cli(env, tmp, "verify", "--root", root, "--json", expect=1).json()
    assert doc["missing"][0]["blobs"] == {
        blob.rsplit("/", 1)[1]: sorted(p.name for p in model.iterdir())
    }
    ref = cli(env, tmp, "list", "--root", root, "--json").json()[0]
    assert doc["missing"][0]["key"] == ref["key"]


# ------------------------------------------------------------------------------ progress
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_one_bar_per_phase_only_on_a_terminal(monkeypatch):
    from metaflow._vendor import click
    from metaflow._vendor.click._termui_impl import ProgressBar

    from metaflow_extensions.checkpointing.plugins.checkpointing.cli import lifecycle, output

    terminal = _Terminal()
    monkeypatch.setattr(click, "get_text_stream", lambda name: terminal)
    monkeypatch.setattr(output, "PROGRESS_REDRAW_SECONDS", 0.0)
    monkeypatch.setattr(ProgressBar, "is_fast", lambda self: False)
    with output.phase_progress(lifecycle.VERIFY_PHASES) as progress:
        assert progress is not None
        for done in range(5):
            progress("manifests", done, 4)
        for done in range(0, 2048 + 1, 512):
            progress("bytes", done, 2048)
    drawn = terminal.getvalue()
    assert "Reading 4 manifests" in drawn and "Re-hashing 2.0 KiB" in drawn
    assert drawn.count("100%") >= 2

    monkeypatch.setattr(click, "get_text_stream", lambda name: io.StringIO())
    with output.phase_progress(lifecycle.VERIFY_PHASES) as progress:
        assert progress is None
