"""Listings find every checkpoint of a flow (issue 15, items 2 and 5), over real runs.

One flow runs once on the local datastore and once on S3 (moto), with a step that has its own
``@checkpoint(root=...)`` store: ``Checkpoint().list("Flow")`` merges the three stores; the
three spellings of one step's listing agree; a store that cannot be read gives one warning and
the rest is listed (client, ``best`` and the CLI); typos of a field or a step are errors naming
what exists.  The client runs in a separate process, as a notebook would.
"""

from __future__ import annotations

import json
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from .flowrun import FLOWS, PROBE_PRELUDE, run_flow, run_probe, run_subprocess

pytestmark = [pytest.mark.flow, pytest.mark.s3]

METAFLOW = Path(sys.executable).parent / "metaflow"

PROBE = PROBE_PRELUDE + textwrap.dedent(
    """
    import warnings
    from metaflow import Run
    c = Checkpoint()
    namespace(None)
    runs = sys.argv[1:]
    F = "MultiStoreFlow"

    def rows(refs):
        return [[r.run, r.step, r.metadata.get("epoch"), r.root] for r in refs]

    def keys(refs):
        return [r.key for r in refs]

    def warned(fn):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fn()
        return {"result": result, "warnings": [
            [w.category.__name__, str(w.message), os.path.basename(w.filename)]
            for w in caught]}

    attempt("flow", lambda: warned(lambda: rows(c.list(F))))
    attempt("best", lambda: warned(lambda: rows([c.best(F, metric="loss")])))
    # Aliases pick among what list() shows: every store, not only the newest's.
    for alias in ("best:loss:max", "loss=0.5", "best:loss"):
        attempt("alias " + alias, lambda: rows([c.get("%s@%s" % (F, alias))]))
    attempt("run alias", lambda: rows([c.get("%s/%s@best:loss:max" % (F, runs[0]))]))
    if os.environ.get("PROBE_PRUNE"):
        # Each store prunes its own checkpoints; du counts one store and names the others.
        attempt("du", lambda: warned(lambda: c.du(F)["total"]["checkpoints"]))
        attempt("verify", lambda: warned(lambda: [c.verify(F).root, c.verify(F).manifests]))
        attempt("prune", lambda: sorted(
            [g["group"], len(g["deleted"])] for g in c.prune(F, keep_last=1)))
        attempt("after", lambda: rows(c.list(F)))
        print("PROBE" + json.dumps(out))
        sys.exit(0)
    if os.environ.get("PROBE_DOWN"):
        # The run's only store of that step cannot be read: an error, never an empty list.
        attempt("only_store", lambda: c.list("%s/%s/start" % (F, runs[1])))
        attempt("verify_flow", lambda: c.verify(F).ok)
        print("PROBE" + json.dumps(out))
        sys.exit(0)
    table = {}
    for run in runs:
        for s in ("start", "side", "end"):
            table["%s/%s" % (run, s)] = [
                keys(c.list(Run("%s/%s" % (F, run)), step=s)),
                keys(c.list("%s/%s" % (F, run), step=s)),
                keys(c.list("%s/%s/%s" % (F, run, s))),
                keys(c.list(F, run=run, step=s)),
                keys(c.list(Run("%s/%s" % (F, run))[s])),
            ]
    out["table"] = table
    out["step_rows"] = {k: len(v[0]) for k, v in table.items()}
    r = runs[0]
    attempt("order_by_typo", lambda: c.list(F, order_by="-los"))
    attempt("where_typo", lambda: c.list(F, where={"los": 0.5}))
    attempt("best_typo", lambda: c.best(F, metric="los"))
    attempt("empty_order", lambda: c.list("%s/%s/end" % (F, r), order_by="los"))
    attempt("empty_where", lambda: c.list("%s/%s/end" % (F, r), where={"los": 1}))
    attempt("step_typo", lambda: c.list("%s/%s/sied" % (F, r)))
    attempt("step_kw_typo", lambda: c.list("%s/%s" % (F, r), step="sied"))
    attempt("flow_step_typo", lambda: c.list(F, step="sied"))
    attempt("task_typo", lambda: c.list("%s/%s/side/987654" % (F, r)))
    attempt("run_typo", lambda: c.list(F, run="987654", step="side"))
    print("PROBE" + json.dumps(out))
    """
)


def _probe(env, tmp, *args):
    return run_probe(PROBE, env, tmp, *args)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connections are refused


@pytest.fixture
def two_datastores(s3_env, flow_env, monkeypatch):
    """(env, tmp, bucket): local metadata, a local datastore and an S3 one (moto)."""
    from metaflow import metaflow_config
    from metaflow.plugins.datatools.s3 import s3util

    monkeypatch.setattr(s3util, "DATATOOLS_CLIENT_PARAMS", metaflow_config.DATATOOLS_CLIENT_PARAMS)
    env, tmp = flow_env
    bucket = s3_env["new_bucket"]()
    env = dict(
        env,
        METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket,
        MULTI_STORE_SIDE_ROOT=str(tmp / "side"),
        **s3_env["env"],
    )
    return env, tmp, bucket


def test_a_flow_s_listing_merges_every_store_and_says_which_it_could_not_read(two_datastores):
    env, tmp, bucket = two_datastores
    flow = FLOWS / "multi_store_flow.py"
    local = run_flow(flow, env, tmp)
    on_s3 = run_flow(flow, env, tmp, datastore="s3")
    local_root = str(tmp / ".metaflow" / "mf.checkpointing")
    s3_root = "s3://%s/mf/mf.checkpointing" % bucket
    side_root = str(tmp / "side")

    out, _ = _probe(env, tmp, local.id, on_s3.id)
    out_all = out["flow"]["result"]
    # Every store of both runs, merged newest first; no warning when all can be read.
    assert out["flow"]["warnings"] == []
    assert out["flow"]["result"] == [
        [run.id, step, epoch, root]
        for run, start_root in ((on_s3, s3_root), (local, local_root))
        for step, root in (("side", side_root), ("start", start_root))
        for epoch in (1, 0)
    ]
    # best() looks in every store: the lowest loss is in the side store (ties: newest run).
    assert out["best"]["result"] == [[on_s3.id, "side", 1, side_root]]
    # An alias on a flow or run sees every store, as list() and best() do (the side store
    # holds the newest checkpoint; these are in the run's datastore).
    assert out["alias best:loss:max"] == [[on_s3.id, "start", 0, s3_root]]
    assert out["alias loss=0.5"] == [[on_s3.id, "start", 1, s3_root]]
    assert out["alias best:loss"] == out["best"]["result"]
    assert out["run alias"] == [[local.id, "start", 0, local_root]]
    # The spellings of one step's listing agree, row for row, including the side store's.
    for cell, spellings in out["table"].items():
        assert all(s == spellings[0] for s in spellings), (cell, spellings)
    assert out["step_rows"] == {
        "%s/%s" % (r, s): (0 if s == "end" else 2)
        for r in (local.id, on_s3.id)
        for s in ("start", "side", "end")
    }
    # Typos are errors naming what exists; an empty listing has nothing to be a typo of.
    for label, fragments in {
        "order_by": ["'los'", "epoch, loss", "created_on"],
        "where": ["'los'", "epoch, loss"],
        "best": ["'los'", "epoch, loss"],
    }.items():
        got = out[label + "_typo"]
        assert got["error"] == "CheckpointConfigError", (label, got)
        assert all(f in got["message"] for f in fragments), (label, got)
    assert out["empty_order"] == [] and out["empty_where"] == []
    for label in ("step_typo", "step_kw_typo"):
        assert out[label]["error"] == "CheckpointNotFound", out[label]
        assert out[label]["message"] == (
            "Step 'sied' does not exist in run MultiStoreFlow/%s; its steps: start, side, end."
            % local.id
        )
    assert out["flow_step_typo"]["error"] == "CheckpointNotFound"
    assert (
        "does not exist in any run of MultiStoreFlow; its steps: start, side, end"
        in (out["flow_step_typo"]["message"])
    )
    assert out["task_typo"]["error"] == "CheckpointNotFound"
    assert (
        "Task '987654' does not exist in step MultiStoreFlow/%s/side" % local.id
        in (out["task_typo"]["message"])
    )
    assert out["run_typo"]["error"] == "CheckpointNotFound"

    # The S3 server goes away: one warning naming that store, the other stores are listed.
    down = dict(
        env,
        METAFLOW_S3_ENDPOINT_URL="http://127.0.0.1:%d" % _dead_port(),
        METAFLOW_CHECKPOINT_RETRY_ATTEMPTS="1",
    )
    out, _ = _probe(dict(down, PROBE_DOWN="1"), tmp, local.id, on_s3.id)
    assert out["only_store"]["error"] == "StorageError", out["only_store"]
    readable = [
        [run.id, step, epoch, root]
        for run, steps in ((on_s3, ("side",)), (local, ("side", "start")))
        for step in steps
        for epoch in (1, 0)
        for root in [side_root if step == "side" else local_root]
    ]
    assert out["flow"]["result"] == readable
    [(category, message, filename)] = out["flow"]["warnings"]
    assert filename == "probe.py"  # points at the caller's line
    assert category == "CheckpointListWarning"
    assert message.startswith(
        "Could not list the checkpoints of MultiStoreFlow in %s (StorageError: " % s3_root
    ), message
    assert message.endswith("; the other stores are listed."), message
    # What picks one checkpoint or certifies fails closed (was: an answer from the readable
    # stores, with a warning): best, every alias, verify of the flow.
    for label in ("best", "alias best:loss", "alias loss=0.5", "verify_flow"):
        assert out[label]["error"] == "StorageError", (label, out[label])
        assert s3_root in out[label]["message"], out[label]
        assert "could be wrong" in out[label]["message"], out[label]
    assert out["run alias"] == [[local.id, "start", 0, local_root]]  # its stores are readable
    for args in (["show", "MultiStoreFlow@last"], ["verify", "MultiStoreFlow"]):
        proc = run_subprocess([METAFLOW, "checkpoint", *args, "--all-namespaces"], down, tmp)
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "could be wrong" in proc.stderr and s3_root in proc.stderr, proc.stderr

    # The CLI lists the same rows and says once, on stderr, which store it could not read.
    proc = run_subprocess(
        [METAFLOW, "checkpoint", "list", "MultiStoreFlow", "--all-namespaces", "--json"],
        down,
        tmp,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    listed = json.loads(proc.stdout[proc.stdout.index("[") :])
    assert [[r["run"], r["step"], r["metadata"]["epoch"], r["root"]] for r in listed] == readable
    warned = [line for line in proc.stderr.splitlines() if s3_root in line]
    assert warned == [
        "Warning: Could not list the checkpoints of MultiStoreFlow in %s (StorageError: %s"
        % (s3_root, warned[0].split("(StorageError: ", 1)[-1])
    ], proc.stderr

    # A local store that cannot be read (an I/O error: a symlink loop where its manifests are;
    # root ignores file modes, so this stands in for permission denied): the same.
    manifests = tmp / "side" / "manifests"
    manifests.rename(tmp / "side" / "manifests.moved")
    manifests.symlink_to("manifests")
    out, _ = _probe(dict(env, PROBE_DOWN="1"), tmp, local.id, on_s3.id)
    manifests.unlink()
    (tmp / "side" / "manifests.moved").rename(manifests)
    assert out["flow"]["result"] == [row for row in out_all if row[3] != side_root]
    [(category, message, _)] = out["flow"]["warnings"]
    assert category == "CheckpointListWarning"
    assert message.startswith(
        "Could not list the checkpoints of MultiStoreFlow in %s (StorageError: OSError: "
        % side_root
    ), message
    assert "Too many levels of symbolic links" in message

    # A local root a run recorded that is not there any more (moved, share not mounted) is
    # said, not listed as a store without checkpoints; a file in its place, the same.
    (tmp / "side").rename(tmp / "side.moved")
    out, _ = _probe(dict(env, PROBE_DOWN="1"), tmp, local.id, on_s3.id)
    (tmp / "side").write_text("")
    out_file, _ = _probe(dict(env, PROBE_DOWN="1"), tmp, local.id, on_s3.id)
    (tmp / "side").unlink()
    (tmp / "side.moved").rename(tmp / "side")
    for got, what in ((out, "does not exist here"), (out_file, "is not a directory")):
        assert got["flow"]["result"] == [row for row in out_all if row[3] != side_root]
        [(category, message, _)] = got["flow"]["warnings"]
        assert category == "CheckpointListWarning"
        assert message == (
            "Could not list the checkpoints of MultiStoreFlow in %s (%s %s (moved, or not "
            "mounted?)); the other stores are listed." % (side_root, side_root, what)
        ), message

    # With every store up again: prune keeps each store's newest per group, du says what it
    # counted.
    out, _ = _probe(dict(env, PROBE_PRUNE="1"), tmp, local.id, on_s3.id)
    [(category, message, _)] = out["du"]["warnings"]
    assert category == "CheckpointListWarning"
    assert message == (
        "du counts one store at a time: %s; not counted: %s, %s (Checkpoint(root=...).du for "
        "each)." % (side_root, local_root, s3_root)
    )
    assert out["du"]["result"] == 4  # the side store's: two of each run
    # verify (one store per call, like du) says which stores it left out.
    assert out["verify"]["result"] == [side_root, 4]
    assert [c for c, _, _ in out["verify"]["warnings"]] == ["CheckpointListWarning"] * 2
    assert out["verify"]["warnings"][0][1] == (
        "The checkpoints of MultiStoreFlow are in several stores; only %s (which has the "
        "newest) is used here, not %s, %s." % (side_root, s3_root, local_root)
    )
    assert out["prune"] == [
        ["MultiStoreFlow/side[_]:mfchckpt in %s" % side_root, 3],
        ["MultiStoreFlow/start[_]:mfchckpt in %s" % local_root, 1],
        ["MultiStoreFlow/start[_]:mfchckpt in %s" % s3_root, 1],
    ]
    assert out["after"] == [
        [on_s3.id, "side", 1, side_root],
        [on_s3.id, "start", 1, s3_root],
        [local.id, "start", 1, local_root],
    ]
