"""Status everywhere: each checkpoint's ``status`` and ``task_status`` through the client and
``metaflow checkpoint list/show`` (table and ``--json``), on a local and an S3 (moto) datastore.

StatusFlow's task saves on attempt 0 and fails, then saves on attempt 1 and pauses
(``current.checkpoint.pause()``): the first checkpoint's attempt ended "failed", the second's
"paused" (never shown as failed); both are in the flow's store ("uploaded").  ``status=``
filters (one value or a list) and a value that is not a status is refused, naming the
statuses, before anything is read.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .flowrun import FLOWS, PROBE_PRELUDE, run_flow, run_probe, single_task, subprocess_env

pytestmark = pytest.mark.flow

METAFLOW = Path(sys.executable).parent / "metaflow"

PROBE = PROBE_PRELUDE + textwrap.dedent(
    """
    namespace(None)
    task = sys.argv[1]
    flow, run = task.split("/")[:2]
    c = Checkpoint()
    refs = c.list(task=task, attempt="all")
    out["listed"] = [[r["attempt"], r["status"], r["task_status"]] for r in refs]
    out["get"] = [c.get(r).task_status for r in refs]
    out["run"] = [[r.attempt, r.status, r.task_status] for r in c.list("%s/%s" % (flow, run))]
    out["uploaded"] = len(c.list(task=task, attempt="all", status="uploaded"))
    out["several"] = len(c.list(task=task, attempt="all", status=["local", "uploaded"]))
    out["local"] = c.list(task=task, attempt="all", status="local")
    out["failed"] = c.list("%s/%s" % (flow, run), status=("failed",))
    # Refused before any read: a flow that does not exist is not what the error is about.
    attempt("bad", lambda: c.list("NoSuchFlow", status="stored"))
    attempt("bad_type", lambda: c.list(task=task, status=3))
    attempt("bad_in_list", lambda: c.list(task=task, status=["uploaded", "gone"]))
    attempt("best", lambda: c.best(task=task, attempt="all", metric="attempt_saved", mode="max",
                                   status="uploaded")["task_status"])
    print("PROBE" + json.dumps(out))
    """
)


@pytest.fixture(params=["local", "s3"])
def store_env(request, flow_env):
    """(env, tmp, top-level Runner options) for a local, then an S3 (moto) datastore."""
    env, tmp = flow_env
    if request.param == "local":
        return env, tmp, {}
    s3 = request.getfixturevalue("s3_env")
    from metaflow import metaflow_config
    from metaflow.plugins.datatools.s3 import s3util

    # s3util binds the client params at import: point it at the moto server for this test.
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setattr(s3util, "DATATOOLS_CLIENT_PARAMS", metaflow_config.DATATOOLS_CLIENT_PARAMS)
    bucket = s3["new_bucket"]()
    env = dict(env, METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket, **s3["env"])
    return env, tmp, {"datastore": "s3"}


def _cli(env: dict, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(METAFLOW), "checkpoint", *args],
        env=subprocess_env(env),
        cwd=str(tmp),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_paused_task_is_shown_paused_and_a_failed_attempt_failed(store_env):
    env, tmp, options = store_env
    result = run_flow(FLOWS / "status_flow.py", env, tmp, expect=None, **options)
    assert result.status == "failed", result.describe()  # a paused run stops, to be resumed
    task = single_task(result.run, "start")
    run = "StatusFlow/%s" % result.run.id

    probed, _ = run_probe(PROBE, env, tmp, task.pathspec)
    assert probed["listed"] == [[1, "uploaded", "paused"], [0, "uploaded", "failed"]]
    assert probed["get"] == ["paused", "failed"]
    assert probed["run"] == [[1, "uploaded", "paused"], [0, "uploaded", "failed"]]
    assert (probed["uploaded"], probed["several"], probed["local"]) == (2, 2, [])
    assert probed["failed"] == []
    for label in ("bad", "bad_type", "bad_in_list"):
        assert probed[label]["error"] == "CheckpointConfigError", probed[label]
        message = probed[label]["message"]
        assert all(repr(s) in message for s in ("local", "uploading", "uploaded", "failed"))
    assert "'stored'" in probed["bad"]["message"] and "'gone'" in probed["bad_in_list"]["message"]
    assert probed["best"] == "paused"

    table = _cli(env, tmp, "list", run)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "CHECKPOINT", "ID", "NAME", "ATTEMPT", "STATUS", "CREATED", "(UTC)", "SIZE", "METADATA"
    ]  # fmt: skip
    rows = [line.split("  ") for line in lines[1:]]
    cells = [[c.strip() for c in row if c.strip()] for row in rows]
    assert [c[3:5] for c in cells] == [["1 paused", "uploaded"], ["0 failed", "uploaded"]]
    assert "failed" not in lines[1]  # the paused attempt is never shown as failed

    listed = _cli(env, tmp, "list", run, "--json")
    assert listed.returncode == 0, listed.stderr
    refs = json.loads(listed.stdout)
    assert [(r["attempt"], r["status"], r["task_status"]) for r in refs] == [
        (1, "uploaded", "paused"),
        (0, "uploaded", "failed"),
    ]
    only = _cli(env, tmp, "list", run, "--status", "local", "--json")
    assert only.returncode == 0 and json.loads(only.stdout) == [], only.stderr
    both = _cli(env, tmp, "list", run, "--status", "local", "--status", "uploaded", "--json")
    assert len(json.loads(both.stdout)) == 2, both.stderr
    bad = _cli(env, tmp, "list", run, "--status", "stored")
    assert bad.returncode != 0
    assert "Invalid value for '--status'" in bad.stderr and "stored" in bad.stderr
    assert "local, uploading, uploaded, failed" in bad.stderr

    shown = _cli(env, tmp, "show", refs[0]["ref"])
    assert shown.returncode == 0, shown.stderr
    fields = dict(
        line.split(":", 1) for line in shown.stdout.split("\n\n")[0].splitlines() if ":" in line
    )
    assert fields["status"].strip() == "uploaded"
    assert fields["task_status"].strip() == "paused"
    shown_json = json.loads(_cli(env, tmp, "show", refs[1]["ref"], "--json").stdout)
    assert (shown_json["status"], shown_json["task_status"]) == ("uploaded", "failed")

    # A deleted checkpoint of upload="each" is not mistaken for one not uploaded.
    gone, _ = run_probe(DELETED_LOAD, env, tmp, task.pathspec, str(tmp / "gone"))
    assert gone["load"]["error"] == "CheckpointNotFound"
    assert "deleted" in gone["load"]["message"] and "upload" not in gone["load"]["message"]


DELETED_LOAD = PROBE_PRELUDE + textwrap.dedent(
    """
    namespace(None)
    c = Checkpoint()
    ref = c.list(task=sys.argv[1], attempt="all")[-1]
    c.delete(ref)
    attempt("load", lambda: c.load(ref, sys.argv[2]))
    print("PROBE" + json.dumps(out))
    """
)


TIER_PROBE = PROBE_PRELUDE + textwrap.dedent(
    """
    namespace(None)
    task = sys.argv[1]
    run = "/".join(task.split("/")[:2])
    c = Checkpoint()
    out["task"] = [[r.metadata["i"], r.status, r.task_status] for r in c.list(task=task)]
    out["run"] = [[r.metadata["i"], r.status] for r in c.list(run)]
    for status in ("local", "uploaded", "failed"):
        out[status] = [r.metadata["i"] for r in c.list(task=task, status=status)]
    print("PROBE" + json.dumps(out))
    """
)


DELETE_NEWEST = PROBE_PRELUDE + textwrap.dedent(
    """
    namespace(None)
    c = Checkpoint()
    ref = c.list(task=sys.argv[1], status="uploaded")[0]
    out["deleted"] = c.delete(ref).metadata["i"]
    print("PROBE" + json.dumps(out))
    """
)


def _without(env: dict, name: str) -> dict:
    return {k: v for k, v in env.items() if k != name}


def test_on_the_machine_that_ran_it_the_local_tier_is_listed_with_its_status(store_env):
    """upload="end", attempt 0 saves 20 times then pauses: the 20th is uploaded, the other 19
    are only in this machine's tier, "local".  The task's registered tier (its metadata) is
    found for a task listing, the default-base tier for any listing; without the tier (another
    machine) only the uploaded one is listed."""
    env, tmp, options = store_env
    tier = tmp / "tierbase"
    env = dict(env, METAFLOW_CHECKPOINT_LOCAL_TIER=str(tier), UPLOAD_HOW="pause")
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp, expect="failed", **options)
    task = single_task(result.run, "start").pathspec

    probed, _ = run_probe(TIER_PROBE, env, tmp, task)
    assert probed["task"][0] == [20, "uploaded", "paused"]
    assert [row[1:] for row in probed["task"][1:]] == [["local", "paused"]] * 19
    assert [row[0] for row in probed["task"]] == list(range(20, 0, -1))  # newest first, once
    assert probed["run"] == [row[:2] for row in probed["task"]]
    assert (probed["uploaded"], probed["local"], probed["failed"]) == (
        [20],
        list(range(19, 0, -1)),
        [],
    )

    # Without the setting, the task's metadata still names its tier (a task listing); a run
    # listing looks under the default base only.
    probed, _ = run_probe(TIER_PROBE, _without(env, "METAFLOW_CHECKPOINT_LOCAL_TIER"), tmp, task)
    assert len(probed["task"]) == 20 and probed["run"] == [[20, "uploaded"]]

    table = _cli(env, tmp, "list", task, "--status", "local", "--limit", "2")
    assert table.returncode == 0, table.stderr
    cells = [
        [c.strip() for c in line.split("  ") if c.strip()] for line in table.stdout.splitlines()
    ]
    assert [c[3:5] for c in cells[1:]] == [["0 paused", "local"]] * 2

    # Deleted from the flow's store, the uploaded one is only in the tier again: "local",
    # whatever its upload record says (a listing never claims it safe without seeing it).
    deleted, _ = run_probe(DELETE_NEWEST, env, tmp, task)
    assert deleted == {"deleted": 20}
    probed, _ = run_probe(TIER_PROBE, env, tmp, task)
    assert probed["task"][0] == [20, "local", "paused"] and probed["uploaded"] == []
    assert len(probed["local"]) == 20

    # Another machine: no tier there.
    next(tier.glob("mfckpt-tier*")).rename(tmp / "elsewhere")
    probed, _ = run_probe(TIER_PROBE, env, tmp, task)
    assert probed["task"] == [] and probed["local"] == []


def test_a_failed_upload_is_listed_failed_on_the_machine_that_ran_it(flow_env):
    """upload_errors="warn" with a flow store refusing writes: the step succeeds, the end's
    upload of the newest checkpoint gives up and is listed "failed"; the others "local"."""
    env, tmp = flow_env
    env = dict(
        env,
        METAFLOW_CHECKPOINT_LOCAL_TIER=str(tmp / "tierbase"),
        UPLOAD_HOW="succeed",
        UPLOAD_ERRORS="warn",
        FAIL_STORE="1",
    )
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp)
    task = single_task(result.run, "start").pathspec
    probed, _ = run_probe(TIER_PROBE, env, tmp, task)
    assert probed["failed"] == [20]
    assert probed["local"] == list(range(19, 0, -1))
    assert probed["uploaded"] == []
    listed = json.loads(_cli(env, tmp, "list", task, "--status", "failed", "--json").stdout)
    assert [(r["metadata"]["i"], r["status"]) for r in listed] == [(20, "failed")]


def test_a_registered_tier_counts_only_on_its_own_machine_and_when_present(tmp_path):
    import socket

    from metaflow_extensions.checkpointing.plugins.checkpointing.common.local_tier import (
        TIER_METADATA,
        registered_tier,
    )

    def md(value):
        return {TIER_METADATA: value if isinstance(value, str) else json.dumps(value)}

    here = socket.gethostname()
    assert registered_tier(md({"host": here, "path": str(tmp_path)})) == str(tmp_path)
    assert registered_tier(md({"host": here + "-other", "path": str(tmp_path)})) is None
    assert registered_tier(md({"host": here, "path": str(tmp_path / "gone")})) is None
    for broken in ("{not json", "[1, 2]", {"host": here}, {"host": here, "path": 3}):
        assert registered_tier(md(broken)) is None
    assert registered_tier(None) is None and registered_tier({}) is None


PICK_PROBE = PROBE_PRELUDE + textwrap.dedent(
    """
    import pickle, socket
    namespace(None)
    task, dest = sys.argv[1], sys.argv[2]
    run = "/".join(task.split("/")[:2])
    c = Checkpoint()

    def seen(ref):
        return [ref.metadata["i"], ref.status]

    best = c.best(task=task, metric="loss")
    out["best"] = seen(best)
    out["best_run"] = seen(c.best(run, metric="loss"))
    out["alias"] = seen(c.get(task + "@best:loss"))
    out["alias_run"] = seen(c.get(run + "@best:loss"))
    out["first"] = seen(c.list(task=task)[0])
    out["task"] = seen(c.get(task))
    out["latest"] = seen(c.get(task + "@last"))
    out["short"] = seen(c.get("%s@%s" % (task, best.short_id)))
    out["short_id"] = best.short_id
    out["best_uploaded"] = seen(c.best(task=task, metric="loss", status="uploaded"))
    if os.path.exists(dest + ".pickle"):  # elsewhere: the reference pickled on the machine
        with open(dest + ".pickle", "rb") as f:
            local = pickle.load(f)
        out["load_local"] = {"status": local.status}
        attempt("load_local", lambda: c.load(local, dest + "-c"))
        attempt("ref_load_local", lambda: local.load(dest + "-d"))
        attempt("short_local", lambda: c.get("%s@%s" % (task, local.short_id)))
        out["host"] = socket.gethostname()
    else:
        c.load(best, dest + "-a")
        best.load(dest + "-b")
        out["loaded"] = [
            open(os.path.join(dest + s, "state.txt")).read() for s in ("-a", "-b")
        ] + [c.open(best, "state.txt").read().decode()]
        out["files"] = [f["path"] for f in best.files]
        with open(dest + ".pickle", "wb") as f:
            pickle.dump(best, f)
    print("PROBE" + json.dumps(out))
    """
)


def test_picks_choose_among_what_loads_from_here_and_a_local_one_elsewhere_says_where(store_env):
    """upload="end", 20 saves (lowest loss at save 7), then pause: only save 20 is uploaded.
    On the machine that ran it, best(), list()[0], the aliases (task and run), the task's
    latest, short ids and ``metaflow checkpoint show TASK@<id>`` agree, and the local save 7
    loads (client, reference and open) from the tier.  Elsewhere (tier gone), the picks choose
    among the uploaded ones only, and loading the reference pickled on the machine says it was
    not uploaded, on which host and where it is, and what to do (never "deleted")."""
    env, tmp, options = store_env
    tier = tmp / "tierbase"
    env = dict(env, METAFLOW_CHECKPOINT_LOCAL_TIER=str(tier), UPLOAD_HOW="pause")
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp, expect="failed", **options)
    task = single_task(result.run, "start").pathspec
    dest = str(tmp / "dl")

    here, _ = run_probe(PICK_PROBE, env, tmp, task, dest)
    for pick in ("best", "best_run", "alias", "alias_run", "short"):
        assert here[pick] == [7, "local"], (pick, here)
    for pick in ("first", "task", "latest"):
        assert here[pick] == [20, "uploaded"], (pick, here)
    assert here["loaded"] == ["save 7"] * 3 and here["files"] == ["state.txt"]
    assert here["best_uploaded"] == [20, "uploaded"]
    shown = json.loads(_cli(env, tmp, "show", "%s@%s" % (task, here["short_id"]), "--json").stdout)
    assert (shown["metadata"]["i"], shown["status"]) == (7, "local")

    next(tier.glob("mfckpt-tier*")).rename(tmp / "elsewhere")  # another machine: no tier there
    there, _ = run_probe(PICK_PROBE, env, tmp, task, dest)
    for pick in ("best", "best_run", "alias", "alias_run", "first", "task", "latest", "short"):
        assert there[pick] == [20, "uploaded"], (pick, there)
    assert there["load_local"]["error"] == "CheckpointNotFound"
    for attempt in ("load_local", "ref_load_local"):
        message = there[attempt]["message"]
        assert there[attempt]["error"] == "CheckpointNotFound"
        assert "upload='end'" in message and "not uploaded (status 'local')" in message
        assert "host %s at %s" % (there["host"], tier / "mfckpt-tier") in message, message
        assert "Load it on that machine" in message and "deleted" not in message
    assert there["short_local"]["error"] == "CheckpointNotFound"
    assert not Path(dest + "-c").exists() and not Path(dest + "-d").exists()  # nothing written


def test_a_superseded_local_reference_loaded_on_its_own_machine_says_it_was_removed(flow_env):
    """upload="end": save() references (status "local" when made) kept as an artifact and
    loaded in the next step on the same machine.  The task's success uploaded the newest and
    removed the others from the tier: their load says so (not "only in the local tier of host
    ..."); the newest loads, its reference still saying "local" (a snapshot from save time)."""
    env, tmp = flow_env
    env = dict(env, METAFLOW_CHECKPOINT_LOCAL_TIER=str(tmp / "tierbase"))
    result = run_flow(FLOWS / "pickled_ref_flow.py", env, tmp)
    outcomes = result.run["end"].task.data.outcomes
    assert [o[:3] for o in outcomes] == [
        [0, "local", "CheckpointNotFound"],
        [1, "local", "CheckpointNotFound"],
        [2, "local", "ok"],
    ], outcomes
    assert outcomes[2][3] == "2"
    for _, _, _, message in outcomes[:2]:
        assert "was removed from the local tier when its task ended" in message, message
        assert "uploads only the newest" in message, message
        assert "only in the local tier" not in message, message
