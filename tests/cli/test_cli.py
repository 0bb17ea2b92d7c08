"""The ``checkpoint`` command line, run as a user runs it: ``metaflow checkpoint ...`` and
``python flow.py checkpoint ...`` in subprocesses, against checkpoints of real flow runs (local
datastore) and named checkpoints on the local store and on a local S3 server (moto).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pty
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
from conftest import flow_environment
from integration.flowrun import FLOWS, local_root, run_flow, subprocess_env
from test_registration import COMMANDS

pytestmark = pytest.mark.flow

METAFLOW = Path(sys.executable).parent / "metaflow"
FLOW_FILE = FLOWS / "cli_flow.py"
FLOW = "CliCkptFlow"
HEADER = ["CHECKPOINT", "ID", "NAME", "ATTEMPT", "STATUS", "CREATED (UTC)", "SIZE", "METADATA"]
#: Bytes of each checkpoint of cli_flow.py: weights.bin (300 KiB) + nested/epoch.txt (1 byte).
CKPT_SIZE = 300 * 1024 + 1


def _flow_module():
    spec = importlib.util.spec_from_file_location("cli_flow", FLOW_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


weights = _flow_module().weights


# ------------------------------------------------------------------------------ running


@dataclass
class Cli:
    """One finished command: exit code, stdout without ``metaflow``'s banner, stderr."""

    args: list
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def table(self) -> list[list[str]]:
        """Rows of a table printed by ``list``/``show`` (columns are 2+ spaces apart)."""
        return [re.split(r"\s{2,}", line.strip()) for line in self.stdout.splitlines() if line]

    def fields(self) -> dict[str, str]:
        """``label: value`` lines printed by ``show`` (up to the blank line)."""
        head = self.stdout.split("\n\n", 1)[0]
        return dict(re.match(r"(\S+):\s+(.*)$", line).groups() for line in head.splitlines())

    def diagnostics(self) -> list[str]:
        """Non-empty stderr lines except the flow CLI's "Metaflow ... executing" banner."""
        return [
            line
            for line in self.stderr.splitlines()
            if line.strip() and not line.startswith("Metaflow ")
        ]

    def describe(self) -> str:
        return "%s -> %d\n--- stdout\n%s\n--- stderr\n%s" % (
            " ".join(map(str, self.args)),
            self.returncode,
            self.stdout[-3000:],
            self.stderr[-3000:],
        )


def cli(
    env: dict,
    cwd: Path,
    *args: Any,
    flow: bool = False,
    top: tuple = (),
    stdin: Any = subprocess.DEVNULL,
    expect: Optional[int] = 0,
) -> Cli:
    """Run ``metaflow checkpoint ARGS`` (or ``python cli_flow.py TOP checkpoint ARGS``)."""
    if flow:
        argv = [sys.executable, str(FLOW_FILE), *top, "checkpoint", *map(str, args)]
    else:
        argv = [str(METAFLOW), "checkpoint", *map(str, args)]
    proc = subprocess.run(
        argv,
        env=subprocess_env(env),
        cwd=str(cwd),
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    stdout = proc.stdout
    # `metaflow` itself prints its version banner on stdout before any command's output.
    if not flow and stdout.startswith("Metaflow ("):
        stdout = stdout.split("\n", 1)[1].lstrip("\n")
    result = Cli(argv, proc.returncode, stdout, proc.stderr)
    if expect is not None:
        assert result.returncode == expect, result.describe()
    return result


def assert_user_error(result: Cli, *fragments: str) -> str:
    """Exit 1, exactly one ``Error: ...`` line on stderr, nothing on stdout, no traceback."""
    assert result.returncode == 1, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    lines = result.diagnostics()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.describe()
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout.strip() == "", result.describe()
    return lines[0]


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def version_of(line: str) -> str:
    return re.search(r"version ([0-9a-f]+)", line).group(1)


def json_stdout(env: dict, cwd: Path, *args: Any, flow: bool = False) -> Any:
    """``checkpoint ARGS`` (``--json`` among them) as a program reads it: stdout parsed whole by
    ``json.loads``, nothing stripped; the entry point's banner must be on stderr."""
    argv = [sys.executable, str(FLOW_FILE)] if flow else [str(METAFLOW)]
    proc = subprocess.run(
        [*argv, "checkpoint", *map(str, args)],
        env=subprocess_env(env),
        cwd=str(cwd),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.match(r"Metaflow \S+", proc.stderr), proc.stderr  # the banner, on stderr
    return json.loads(proc.stdout)


def json_commands() -> set[str]:
    """Every ``checkpoint`` command that has ``--json``."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.cli.base import checkpoint

    return {
        name
        for name, command in checkpoint.commands.items()
        if any(p.name == "as_json" for p in command.params)
    }


# ------------------------------------------------------------------------------ fixtures


@dataclass
class World:
    env: dict
    tmp: Path
    run: str  # a run of the user "tester" (the tests' namespace)
    other_run: str  # a run of the user "other"
    refs: list  # `list FLOW/run --json` of `run`, newest first

    @property
    def task(self) -> str:
        return self.refs[0]["pathspec"]

    def by_epoch(self, epoch: int) -> dict:
        return next(r for r in self.refs if r["metadata"].get("epoch") == epoch)


@pytest.fixture(scope="module", autouse=True)
def _client_namespace():
    """``Runner`` opens the run with this process's client: make it independent of this
    process's user name, which the tests don't set (as tests/integration/conftest.py does)."""
    from metaflow import namespace
    from metaflow.client import core

    saved = core.current_namespace
    namespace(None)
    yield
    core.current_namespace = saved


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """Two runs of cli_flow.py (users tester and other) on a local datastore."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "home").mkdir()
    env = flow_environment(tmp)
    mine = run_flow(FLOW_FILE, env, tmp)
    theirs = run_flow(FLOW_FILE, dict(env, USER="other", METAFLOW_USER="other"), tmp)
    refs = cli(env, tmp, "list", "%s/%s" % (FLOW, mine.id), "--json").json()
    return World(env, tmp, mine.id, theirs.id, refs)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A model directory of 25 small files (more than `show` lists by default)."""
    src = tmp_path / "model"
    src.mkdir()
    for i in range(25):
        (src / ("part-%02d.bin" % i)).write_bytes(bytes([i]) * (100 + i))
    return src


# ------------------------------------------------------------------------------ registration


def test_both_entry_points_offer_the_checkpoint_commands(flow_env):
    """``metaflow checkpoint``, ``python -m metaflow.cmd.main_cli checkpoint`` and ``python
    flow.py checkpoint`` list every command (tests/test_registration.py checks the strings)."""
    env, tmp = flow_env
    top = subprocess.run(
        [str(METAFLOW), "--help"], env=subprocess_env(env), cwd=tmp, capture_output=True, text=True
    )
    assert top.returncode == 0, top.stderr
    assert re.search(r"^\s+checkpoint\s+Browse, load, upload, prune", top.stdout, re.M)
    module = subprocess.run(
        [sys.executable, "-m", "metaflow.cmd.main_cli", "checkpoint", "--help"],
        env=subprocess_env(env),
        cwd=tmp,
        capture_output=True,
        text=True,
    )
    assert module.returncode == 0, module.stderr
    for stdout in (
        module.stdout,
        cli(env, tmp, "--help").stdout,
        cli(env, tmp, "--help", flow=True).stdout,
    ):
        commands = re.findall(r"^  (\w+)  ", stdout.split("Commands:")[1], re.M)
        assert commands == COMMANDS


# ------------------------------------------------------------------------------ list


def test_list_prints_a_table_of_a_runs_checkpoints_newest_first(world):
    rows = cli(world.env, world.tmp, "list", "%s/%s" % (FLOW, world.run)).table()
    assert rows[0] == HEADER
    assert len(rows) == 5
    assert {row[0] for row in rows[1:]} == {world.task}
    assert world.task.startswith("%s/%s/train/" % (FLOW, world.run))
    # ID: the short id of each version (the first 8 hex digits), in the order of --json.
    assert [row[1] for row in rows[1:]] == [r["version"][:8] for r in world.refs]
    # The displayed ID is accepted back: TASK@<id> is that checkpoint, in both entry points.
    for flow_cli in (False, True):
        shown = cli(world.env, world.tmp, "show", "%s@%s" % tuple(rows[3][:2]), flow=flow_cli)
        assert shown.fields()["key"] == world.refs[2]["key"]
    assert [row[2] for row in rows[1:]] == ["final", "mfchckpt", "mfchckpt", "mfchckpt"]
    assert [row[3] for row in rows[1:]] == ["0"] * 4  # a succeeded attempt: its number alone
    assert [row[4] for row in rows[1:]] == ["uploaded"] * 4
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row[5]) for row in rows[1:])
    assert [row[6] for row in rows[1:]] == ["300.0 KiB"] * 4
    # Metrics first, at most three fields, then how many more there are.
    assert [row[7] for row in rows[1:]] == [
        "done=true",
        "epoch=2 lr=0.1 val_loss=0.3 +1",
        "epoch=1 lr=0.1 val_loss=0.2 +1",
        "epoch=0 lr=0.1 val_loss=0.5 +1",
    ]


def test_list_json_has_the_references(world):
    refs = world.refs
    assert [(r["name"], r["metadata"].get("epoch")) for r in refs] == [
        ("final", None),
        ("mfchckpt", 2),
        ("mfchckpt", 1),
        ("mfchckpt", 0),
    ]
    root = str(local_root(world.tmp))
    for r in refs:
        assert r["pathspec"] == world.task
        assert (r["flow"], r["run"], r["step"], r["attempt"]) == (FLOW, world.run, "train", 0)
        assert r["namespace"] == "user:tester"
        assert r["root"] == root and r["url"] == root + "/" + r["key"]
        assert r["key"].startswith("manifests/") and r["key"].endswith(".json")
        assert (r["size"], r["files_count"]) == (CKPT_SIZE, 2)
    assert [r["latest"] for r in refs] == [False, True, True, True]
    assert refs[1]["metadata"] == {"epoch": 2, "val_loss": 0.3, "lr": 0.1, "note": "cli test"}


def test_flow_cli_lists_its_own_flow_by_default(world):
    listed = cli(world.env, world.tmp, "list", "--json", flow=True).json()
    # Only this user's run: the other user's run is in another namespace.
    assert [r["key"] for r in listed] == [r["key"] for r in world.refs]
    table = cli(world.env, world.tmp, "list", "--latest-only", flow=True).table()
    assert table[0] == HEADER and len(table) == 4


def test_runs_are_read_from_the_store_their_tasks_used(flow_env):
    """A run saved with @checkpoint(root=...) is found in that store by both entry points,
    although the flow CLI's own store (for names and uploads) is the datastore's."""
    env, tmp = flow_env
    custom = tmp / "custom-store"
    run = run_flow(FLOW_FILE, dict(env, CLI_CKPT_ROOT=str(custom)), tmp).id
    listed = cli(env, tmp, "list", "--json", flow=True).json()
    assert len(listed) == 4 and {r["root"] for r in listed} == {str(custom)}
    assert cli(env, tmp, "list", FLOW, "--json").json() == listed
    task = listed[0]["pathspec"]
    assert task.startswith("%s/%s/train/" % (FLOW, run))
    cli(env, tmp, "load", task, tmp / "out", flow=True)
    assert tree(tmp / "out") == {"nested/epoch.txt": b"2", "weights.bin": weights(2)}
    # An alias of the flow names the run's checkpoints too: resolved in the store they are in.
    last = next(r for r in listed if r["latest"])
    for flow_cli in (True, False):
        shown = cli(env, tmp, "show", FLOW + "@last", "--json", flow=flow_cli).json()
        assert (shown["key"], shown["root"]) == (last["key"], str(custom))
    assert not (tmp / ".metaflow" / "mf.checkpointing").exists()


def test_json_is_the_only_thing_on_stdout_in_both_entry_points(world):
    """Every command with ``--json``, as ``metaflow checkpoint`` (whose "Metaflow (<version>)"
    banner used to be stdout's first line) and ``python flow.py checkpoint``: stdout parses
    as JSON, whole."""
    run = "%s/%s" % (FLOW, world.run)
    commands = {
        "list": ["list", run],
        "show": ["show", world.task],
        "du": ["du", FLOW],
        "verify": ["verify", run],
        "prune": ["prune", run, "--keep-last", "1", "--dry-run"],
        "gc": ["gc", "--dry-run"],
    }
    assert set(commands) == json_commands()
    for flow_cli in (False, True):
        out = {
            name: json_stdout(world.env, world.tmp, *args, "--json", flow=flow_cli)
            for name, args in commands.items()
        }
        assert [r["key"] for r in out["list"]] == [r["key"] for r in world.refs]
        assert out["show"]["key"] == world.by_epoch(2)["key"]
        assert out["du"]["total"]["checkpoints"] == 4
        assert out["verify"]["ok"] is True
        assert {p["group"] for p in out["prune"]} == {
            "%s/train[_]:final" % FLOW,
            "%s/train[_]:mfchckpt" % FLOW,
        }
        assert out["gc"]["blobs_deleted"] == 0


def test_list_orders_by_a_metadata_field_and_filters(world):
    target = "%s/%s" % (FLOW, world.run)

    def losses(*args):
        return [r["metadata"].get("val_loss") for r in cli(*args, "--json").json()]

    base = (world.env, world.tmp, "list", target)
    assert losses(*base, "--order-by", "val_loss") == [0.2, 0.3, 0.5, None]
    assert losses(*base, "--order-by", "-val_loss") == [0.5, 0.3, 0.2, None]
    assert losses(*base, "--order-by=-val_loss", "--limit", "2") == [0.5, 0.3]
    table = cli(*base, "--order-by", "-val_loss").table()
    assert table[1][7] == "val_loss=0.5 epoch=0 lr=0.1 +1"  # the ordering field comes first

    assert [r["name"] for r in cli(*base, "--name", "final", "--json").json()] == ["final"]
    assert len(cli(*base, "--latest-only", "--json").json()) == 3
    assert len(cli(world.env, world.tmp, "list", FLOW, "--step", "train", "--json").json()) == 4
    assert cli(world.env, world.tmp, "list", FLOW, "--run", world.run, "--json").json() == (
        cli(*base, "--json").json()
    )
    keys = [row[0] for row in cli(*base, "--keys").table()[1:]]
    assert keys == [r["key"] for r in world.refs]

    empty = cli(*base, "--attempt", "1")
    assert empty.stdout == ""
    assert empty.diagnostics() == ["No checkpoints of %s." % target]
    assert cli(*base, "--attempt", "1", "--json").json() == []


def test_list_sees_other_namespaces_only_when_asked(world):
    theirs = "%s/%s" % (FLOW, world.other_run)
    refused = cli(world.env, world.tmp, "list", theirs, expect=1)
    assert_user_error(refused, "Run %s is not in the current namespace" % theirs)
    assert "--all-namespaces" in refused.stderr

    for option in (["--all-namespaces"], ["--namespace", "user:other"]):
        refs = cli(world.env, world.tmp, "list", theirs, "--json", *option).json()
        assert len(refs) == 4 and {r["namespace"] for r in refs} == {"user:other"}
    everyone = cli(world.env, world.tmp, "list", FLOW, "--json", "--all-namespaces").json()
    assert {r["run"] for r in everyone} == {world.run, world.other_run}
    usage = cli(world.env, world.tmp, "list", "--all-namespaces", "--namespace", "x", expect=2)
    assert "not both" in usage.stderr


# ------------------------------------------------------------------------------ show


def test_show_describes_a_checkpoint_and_its_files(world):
    shown = cli(world.env, world.tmp, "show", world.task)  # a task: its latest checkpoint
    latest = world.by_epoch(2)
    fields = shown.fields()
    assert fields["key"] == latest["key"]
    assert fields["url"] == latest["url"]
    # The reference shown designates this checkpoint (the bare pathspec is the task's latest,
    # which for an older one is another checkpoint); --json gives the same spelling as "ref".
    assert fields["reference"] == "%s@%s" % (world.task, latest["version"][:8])
    assert fields["pathspec"] == world.task
    assert fields["id"] == latest["version"][:8]
    assert (fields["name"], fields["attempt"], fields["latest"]) == ("mfchckpt", "0", "yes")
    assert fields["namespace"] == "user:tester"
    assert fields["size"] == "300.0 KiB (%d bytes)" % CKPT_SIZE
    assert fields["files"] == "2"
    assert json.loads(fields["metadata"]) == latest["metadata"]
    assert fields["saved"] == "read 300.0 KiB, uploaded 300.0 KiB, deduplicated 0 B"
    assert re.fullmatch(r"scan \d+\.\d{3} s, upload \d+\.\d{3} s", fields["took"])
    files = shown.table()[-3:]
    assert files == [["SIZE", "FILE"], ["1 B", "nested/epoch.txt"], ["300.0 KiB", "weights.bin"]]

    first = world.by_epoch(0)
    for reference in (first["key"], first["url"]):
        data = cli(world.env, world.tmp, "show", reference, "--json").json()
        assert data["key"] == first["key"] and data["metadata"]["epoch"] == 0
        assert data["ref"] == "%s@%s" % (world.task, first["version"][:8])
        again = cli(world.env, world.tmp, "show", data["ref"], "--json").json()
        assert again["key"] == first["key"]  # the spelling shown is typed back
        assert data["files"] == [
            {"path": "nested/epoch.txt", "size": 1},
            {"path": "weights.bin", "size": 300 * 1024},
        ]
        assert {"bytes_read", "bytes_uploaded", "bytes_deduplicated", "seconds"} <= set(
            data["stats"]
        )


# ------------------------------------------------------------------------------ load


def test_load_and_download_write_the_checkpoints_bytes(world):
    tmp = world.tmp / "loads"
    first = world.by_epoch(0)
    loaded = cli(world.env, world.tmp, "load", first["key"], tmp / "epoch0")
    assert loaded.stdout == "Loaded %s@%s (300.0 KiB, 2 files) into %s\n" % (
        world.task,
        first["version"][:8],
        tmp / "epoch0",
    )
    assert loaded.diagnostics() == []  # not a terminal: no progress bar
    assert tree(tmp / "epoch0") == {"nested/epoch.txt": b"0", "weights.bin": weights(0)}

    cli(world.env, world.tmp, "download", world.task, tmp / "latest")
    assert tree(tmp / "latest") == {"nested/epoch.txt": b"2", "weights.bin": weights(2)}

    # The flow CLI finds the run's store from the run itself.
    cli(world.env, world.tmp, "load", world.by_epoch(1)["url"], tmp / "flow", flow=True)
    assert tree(tmp / "flow") == {"nested/epoch.txt": b"1", "weights.bin": weights(1)}


def test_load_refuses_a_non_empty_directory_unless_forced(world):
    target = world.tmp / "busy"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    refused = cli(world.env, world.tmp, "load", world.task, target, expect=1)
    assert_user_error(
        refused, "Cannot load into %s: the directory is not empty" % target, "--force"
    )
    assert tree(target) == {"mine.txt": b"keep me"}  # nothing written

    cli(world.env, world.tmp, "download", world.task, target, "--force")
    assert tree(target) == {
        "mine.txt": b"keep me",
        "nested/epoch.txt": b"2",
        "weights.bin": weights(2),
    }


# ------------------------------------------------------------------------------ named


def test_named_checkpoints_upload_list_show_load_delete(flow_env, model_dir):
    env, tmp = flow_env
    first = cli(env, tmp, "upload", model_dir, "--name", "tiny", "--metadata", '{"top1": 0.7}')
    version = version_of(first.stdout)
    assert first.stdout == "Uploaded 'tiny' version %s (2.7 KiB, 2.7 KiB new).\n" % version
    again = cli(env, tmp, "upload", model_dir, "--name", "tiny", "--metadata", '{"top1": 0.7}')
    assert again.stdout == (
        "'tiny' is already stored as version %s (2.7 KiB): 0 bytes uploaded.\n" % version
    )

    (model_dir / "part-00.bin").write_bytes(b"retrained")
    second = cli(env, tmp, "upload", model_dir, "--name", "tiny", "--metadata", '{"top1": 0.8}')
    newer = version_of(second.stdout)
    assert newer != version
    assert second.stdout == "Uploaded 'tiny' version %s (2.6 KiB, 2.6 KiB new).\n" % newer

    rows = cli(env, tmp, "list").table()
    assert rows[0] == HEADER[:3] + ["PUBLISHER"] + HEADER[4:]  # named: who, not an attempt
    assert [row[:4] for row in rows[1:]] == [
        ["tiny@" + newer, newer[:8], "tiny", "user:tester"],
        ["tiny@" + version, version[:8], "tiny", "user:tester"],
    ]
    assert [row[7] for row in rows[1:]] == ["top1=0.8", "top1=0.7"]
    refs = cli(env, tmp, "list", "--json").json()
    assert [r["pathspec"] for r in refs] == [None, None]
    assert refs[1]["metadata"] == {"top1": 0.7}

    shown = cli(env, tmp, "show", "tiny")  # the newest version
    fields = shown.fields()
    assert (fields["reference"], fields["version"]) == ("tiny@" + newer[:8], newer)
    assert "pathspec" not in fields
    assert shown.stdout.count("part-") == 20
    assert shown.stdout.endswith("... and 5 more files (--all-files)\n")
    everything = cli(env, tmp, "show", "tiny@" + version[:6], "--all-files")
    assert everything.fields()["version"] == version
    assert everything.stdout.count("part-") == 25 and "more files" not in everything.stdout

    loaded = cli(env, tmp, "load", "tiny@" + version, tmp / "out")
    assert loaded.stdout == "Loaded tiny@%s (2.7 KiB, 25 files) into %s\n" % (
        version[:8],
        tmp / "out",
    )
    expected = {"part-%02d.bin" % i: bytes([i]) * (100 + i) for i in range(25)}
    assert tree(tmp / "out") == expected

    refused = cli(env, tmp, "delete", "tiny", expect=1)  # stdin is not a terminal
    assert_user_error(refused, "Refusing to delete tiny@%s" % newer[:8], "--yes")
    assert len(cli(env, tmp, "list", "--json").json()) == 2

    deleted = cli(env, tmp, "delete", "tiny", "--yes")
    assert deleted.stdout.startswith("Deleted tiny@%s (manifests/" % newer[:8])
    assert [r["key"] for r in cli(env, tmp, "list", "--json").json()] == [refs[1]["key"]]
    assert cli(env, tmp, "show", "tiny").fields()["version"] == version


def test_delete_asks_on_a_terminal(flow_env, model_dir):
    env, tmp = flow_env
    version = version_of(cli(env, tmp, "upload", model_dir, "--name", "asked").stdout)

    def answer(text: str) -> Cli:
        master, slave = pty.openpty()
        try:
            os.write(master, text.encode())
            return cli(env, tmp, "delete", "asked", stdin=slave, expect=None)
        finally:
            os.close(slave)
            os.close(master)

    kept = answer("n\n")
    assert kept.returncode == 1
    assert "Delete checkpoint asked@%s" % version[:8] in kept.stderr
    assert "Aborted!" in kept.stderr
    assert cli(env, tmp, "show", "asked").fields()["version"] == version

    gone = answer("y\n")
    assert gone.returncode == 0, gone.describe()
    assert gone.stdout.startswith("Deleted asked@%s" % version[:8])
    assert_user_error(cli(env, tmp, "show", "asked", expect=1), "No checkpoint named 'asked'")


def test_flow_cli_keeps_named_checkpoints_in_the_flows_datastore(flow_env, model_dir):
    env, tmp = flow_env
    elsewhere = tmp / "elsewhere"
    top = ("--datastore-root", str(elsewhere))
    uploaded = cli(env, tmp, "upload", model_dir, "--name", "flowmodel", flow=True, top=top)
    version = version_of(uploaded.stdout)
    store = elsewhere / "mf.checkpointing"
    assert list((store / "manifests").rglob("*flowmodel.json"))

    listed = cli(env, tmp, "list", "--named", "--json", flow=True, top=top).json()
    assert [r["name"] for r in listed] == ["flowmodel"]
    assert listed[0]["root"] == str(store)
    # The standalone command finds it with --root, not in the default store.
    assert cli(env, tmp, "list", "--json", "--root", store).json() == listed
    assert cli(env, tmp, "list", "--json").json() == []
    cli(env, tmp, "load", "flowmodel@" + version, tmp / "out", flow=True, top=top)
    assert len(tree(tmp / "out")) == 25


# ------------------------------------------------------------------------------ bad input


BAD_INPUT = [
    (["list", "NoSuchFlow"], "Unknown flow 'NoSuchFlow'"),
    (["list", FLOW + "/999999"], "Unknown run %s/999999" % FLOW),
    (["show", "NoSuchFlow/1/start/2"], "Unknown run NoSuchFlow/1"),
    (["list", "a/b/c/d/e"], "'a/b/c/d/e' is not a pathspec"),
    (["show", "not a/reference"], "'not a/reference' is not a checkpoint reference"),
    (["load", "manifests/nope.json", "out"], "'manifests/nope.json' is not a checkpoint"),
    (["show", "no-such-model"], "No checkpoint named 'no-such-model'"),
    (["delete", "no-such-model", "--yes"], "No checkpoint named 'no-such-model'"),
    (["upload", "missing.bin", "--name", "x"], "missing.bin: no such file or directory"),
    (["upload", "model.bin", "--name", "bad name"], "'bad name' is invalid"),
    (["upload", "model.bin", "--name", "x", "--metadata", "{bad"], "--metadata is not valid JSON"),
    (["upload", "model.bin", "--name", "x", "--metadata", "[1]"], "must be a JSON object"),
]


@pytest.mark.parametrize("args,message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_error_line_and_exit_1(world, args, message):
    (world.tmp / "model.bin").write_bytes(b"weights")
    assert_user_error(cli(world.env, world.tmp, *args, expect=1), message)


def test_bad_input_in_the_flow_cli_and_at_the_edges(world):
    env, tmp = world.env, world.tmp
    assert_user_error(cli(env, tmp, "list", "NoSuchFlow", flow=True, expect=1), "Unknown flow")
    assert_user_error(
        cli(env, tmp, "show", "%s/%s/train/1" % (FLOW, world.other_run), flow=True, expect=1),
        "is not in the current namespace",
    )
    (tmp / "a-file").write_text("x")
    assert_user_error(cli(env, tmp, "load", world.task, tmp / "a-file", expect=1), "is a file")
    # A well-formed manifest URL with nothing committed there.
    missing = world.refs[0]["url"].replace("-final.json", "-gone.json")
    assert_user_error(cli(env, tmp, "show", missing, expect=1), "No checkpoint with key")


@pytest.mark.parametrize(
    "args",
    [["list", "--bogus"], ["load", "only-one-arg"], ["upload", "x"], ["list", "--limit", "-1"]],
)
def test_usage_errors_exit_2(flow_env, args):
    env, tmp = flow_env
    result = cli(env, tmp, *args, expect=2)
    assert "Usage: metaflow checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


#: Every command (all take --root), with arguments it accepts: a blank --root must fail all.
ROOT_COMMANDS = [
    ["list"],
    ["show", "some-model"],
    ["load", "some-model", "out"],
    ["download", "some-model", "out"],
    ["upload", "model.bin", "--name", "blank-root"],
    ["delete", "some-model", "--yes"],
    ["pin", "some-model"],
    ["unpin", "some-model"],
    ["promote", "some-model", "--to", "user:other"],
    ["unpromote", "some-model", "--to", "user:other"],
    ["pause", FLOW],
    ["prune", FLOW, "--dry-run"],
    ["gc", "--dry-run"],
    ["du"],
    ["verify", "some-model"],
]


def test_the_blank_root_table_covers_every_command():
    from metaflow_extensions.checkpointing.plugins.checkpointing import cli as package
    from metaflow_extensions.checkpointing.plugins.checkpointing.cli.base import checkpoint

    assert package is not None  # registers the commands
    with_root = {
        n for n, c in checkpoint.commands.items() if any(p.name == "root" for p in c.params)
    }
    assert with_root == {args[0] for args in ROOT_COMMANDS}


@pytest.mark.parametrize(
    "args, blank",
    [(a, "") for a in ROOT_COMMANDS] + [(["upload", "model.bin", "--name", "x"], "  ")],
    ids=[a[0] for a in ROOT_COMMANDS] + ["upload-spaces"],
)
def test_a_blank_root_is_refused_not_ignored(flow_env, args, blank):
    """``--root ""`` (e.g. an unset shell variable) used to be ignored: the command read or
    wrote the default store instead of failing."""
    env, tmp = flow_env
    (tmp / "model.bin").write_bytes(b"weights")
    result = cli(env, tmp, *args, "--root", blank, expect=2)
    assert "Invalid value for '--root': empty: give a local path or a URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert not local_root(tmp).exists(), "nothing was written to the default store"


@pytest.mark.parametrize(
    "root, reason",
    [
        ("ftp://127.0.0.1:1/ckpt", "Connection refused"),
        ("nosuchproto://x/y", "no storage backend for nosuchproto:// URLs"),
        ("s3://", "expected s3://<bucket>[/<prefix>]"),
    ],
)
def test_a_root_that_cannot_be_opened_is_named_in_the_error(flow_env, root, reason):
    """A backend that connects when created (ftp) failed with only its own reason
    ("Error: [Errno 111] Connection refused"): the error names the root, with the reason."""
    env, tmp = flow_env
    assert_user_error(cli(env, tmp, "list", "--root", root, expect=1), root, reason)


# ------------------------------------------------------------------------------ S3


@pytest.fixture
def s3_cli_env(s3_server, flow_env):
    """(env, tmp, bucket): the CLI's environment pointed at a fresh bucket on the moto server."""
    env, tmp = flow_env
    bucket = s3_server["new_bucket"]()
    env = dict(env, METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket, **s3_server["env"])
    return env, tmp, bucket


@pytest.mark.s3
def test_named_checkpoints_on_s3(s3_cli_env, s3_server, model_dir):
    env, tmp, bucket = s3_cli_env
    root = "s3://%s/mf/mf.checkpointing" % bucket
    top = ("--datastore", "s3")
    first = cli(env, tmp, "upload", model_dir, "--name", "s3model", flow=True, top=top)
    version = version_of(first.stdout)
    assert first.stdout.endswith("(2.7 KiB, 2.7 KiB new).\n")
    again = cli(env, tmp, "upload", model_dir, "--name", "s3model", "--root", root)
    assert again.stdout == (
        "'s3model' is already stored as version %s (2.7 KiB): 0 bytes uploaded.\n" % version
    )
    listed = s3_server["client"].list_objects_v2(Bucket=bucket, Prefix="mf/mf.checkpointing/")
    assert any(o["Key"].endswith("-s3model.json") for o in listed["Contents"])

    refs = cli(env, tmp, "list", "--root", root, "--json").json()
    assert [(r["name"], r["root"]) for r in refs] == [("s3model", root)]
    assert refs[0]["url"] == root + "/" + refs[0]["key"]
    table = cli(env, tmp, "list", "--named", flow=True, top=top).table()
    assert table[1][0] == "s3model@" + version

    cli(env, tmp, "load", "s3model", tmp / "out", flow=True, top=top)
    assert tree(tmp / "out") == tree(model_dir)
    cli(env, tmp, "download", refs[0]["url"], tmp / "by-url")
    assert tree(tmp / "by-url") == tree(model_dir)
    cli(env, tmp, "delete", "s3model", "--yes", "--root", root)
    assert cli(env, tmp, "list", "--root", root, "--json").json() == []


# ------------------------------------------------------------------------------ progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_counts_bytes_from_many_threads(monkeypatch):
    """On a terminal the bar is fed by callbacks from worker threads and ends at 100%; off a
    terminal there is no callback at all (nothing is drawn)."""
    from metaflow._vendor import click
    from metaflow._vendor.click._termui_impl import ProgressBar

    from metaflow_extensions.checkpointing.plugins.checkpointing.cli import output

    terminal = _Terminal()
    monkeypatch.setattr(click, "get_text_stream", lambda name: terminal)
    monkeypatch.setattr(output, "PROGRESS_REDRAW_SECONDS", 0.0)
    # click draws nothing during the first 0.5 s of a bar: make this one "slow".
    monkeypatch.setattr(ProgressBar, "is_fast", lambda self: False)
    total = 8 * 500 * 7
    with output.progress_bar("Loading", total) as update:
        assert update is not None
        threads = [
            threading.Thread(target=lambda: [update(7) for _ in range(500)]) for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert "100%" in terminal.getvalue()
    assert "Loading" in terminal.getvalue()

    monkeypatch.setattr(click, "get_text_stream", lambda name: io.StringIO())
    with output.progress_bar("Loading", total) as update:
        assert update is None
