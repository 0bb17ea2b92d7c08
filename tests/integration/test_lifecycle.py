"""Retention in a running step, and pruning / GC / accounting / aliases from the client."""

from __future__ import annotations

import json
import textwrap

import pytest

from .flowrun import FLOWS, PROBE_PRELUDE, run_flow, run_subprocess

pytestmark = pytest.mark.flow


def test_keep_rules_prune_after_each_save_and_aliases_load(flow_env):
    env, tmp = flow_env
    result = run_flow(FLOWS / "retention_flow.py", env, tmp)
    start = result.run["start"].task
    # keep_last=2 keeps epochs 4 and 5, keep-best keeps epoch 1 (loss 0.2); the other series
    # is pruned on its own and keeps its only checkpoint.
    assert start.data.kept == [("export", None), ("mfchckpt", 1), ("mfchckpt", 4), ("mfchckpt", 5)]
    assert start.data.best_epoch == 1
    assert start.data.last_epoch == 5


@pytest.mark.parametrize(
    "spec, message",
    [
        ("keep_best=loss:median", "': keep_best='loss:median': the mode"),
        ("keep_last=-2", "keep_last=-2 must be a whole number"),
    ],
)
def test_bad_keep_rules_fail_the_run_before_any_task(flow_env, spec, message):
    env, tmp = flow_env
    proc = run_subprocess(
        [FLOWS / "eager_flow.py", "--no-pylint", "run", "--with", "checkpoint:" + spec], env, tmp
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in out, out[-2000:]
    assert "Task is starting" not in out


PROBE = PROBE_PRELUDE + textwrap.dedent(
    """
    c = Checkpoint()
    first, second = sys.argv[1], sys.argv[2]
    attempt("best_alias", lambda: c.get("BrowseFlow/%s@best:val_loss" % first).metadata)
    attempt("last_alias", lambda: c.get("BrowseFlow@last").run)
    attempt("bad_alias", lambda: c.get("BrowseFlow@best:val_loss:median"))
    attempt("no_rule", lambda: c.prune("BrowseFlow"))
    attempt("contradictory", lambda: c.prune("BrowseFlow", keep_best=["a:min", "a:max"]))
    attempt("unknown_metric", lambda: c.prune("BrowseFlow", keep_best="f1:max"))
    attempt("count_after_unknown", lambda: len(c.list("BrowseFlow")))
    pinned = c.list("BrowseFlow/" + first, step="train", foreach="0", name="mfchckpt")[-1]
    c.pin(pinned)
    attempt("delete_pinned", lambda: c.delete(pinned))
    dry = c.prune("BrowseFlow", step="train", keep_last=1, dry_run=True)
    out["dry_deleted"] = sorted(len(g["deleted"]) for g in dry)
    out["count_after_dry"] = len(c.list("BrowseFlow"))
    out["du_before"] = c.du("BrowseFlow", by="run")
    plans = c.prune("BrowseFlow", step="train", keep_last=1)
    out["groups"] = sorted(g["group"] for g in plans)
    out["kept_pinned"] = any(pinned.key in g["kept"] and "pinned" in g["kept"][pinned.key]
                             for g in plans)
    out["left"] = sorted((r.run, r.foreach, r.name) for r in c.list("BrowseFlow", step="train"))
    attempt("gc_young", lambda: c.gc()["blobs_deleted"])
    out["gc_dry"] = c.gc(grace_hours=0, dry_run=True)
    out["gc"] = c.gc(grace_hours=0)
    out["gc_again"] = c.gc(grace_hours=0)["blobs_deleted"]
    out["du_after"] = c.du()
    loaded = []
    for r in c.list("BrowseFlow"):
        with r.open("weights.bin" if r.step == "train" else "report.txt") as f:
            loaded.append(len(f.read()))
    out["loaded"] = loaded
    print("PROBE" + json.dumps(out))
    """
)


def test_prune_gc_du_pins_and_aliases_from_the_client(flow_env):
    env, tmp = flow_env
    first = run_flow(FLOWS / "browse_flow.py", env, tmp)
    second = run_flow(FLOWS / "browse_flow.py", env, tmp)
    script = tmp / "probe.py"
    script.write_text(PROBE)
    proc = run_subprocess([script, first.id, second.id], env, tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("PROBE"))[5:])

    assert out["best_alias"]["val_loss"] == 0.3
    assert out["last_alias"] == second.id
    assert out["bad_alias"]["error"] == "CheckpointConfigError"
    assert out["no_rule"]["error"] == "CheckpointConfigError"
    assert "every checkpoint would be deleted" in out["no_rule"]["message"]
    assert "contradictory" in out["contradictory"]["message"]
    assert out["unknown_metric"] and out["count_after_unknown"] == 18  # 2 runs x 9: untouched
    assert out["delete_pinned"]["error"] == "CheckpointConfigError"
    assert "pinned" in out["delete_pinned"]["message"]

    # Groups are (step, foreach split, name) across both runs; keep_last=1 keeps each group's
    # newest; the newest latest=True checkpoint and the pinned one stay as well.
    assert out["groups"] == sorted(
        "BrowseFlow/train[%s]:%s" % (f, n) for f in "01" for n in ("final", "mfchckpt")
    )
    assert out["dry_deleted"] == [1, 1, 4, 5]
    assert out["count_after_dry"] == 18
    assert out["kept_pinned"] is True
    left = [tuple(x) for x in out["left"]]
    assert len(set(left)) == len(left) == 5  # 1 per group + the pinned one
    assert (first.id, "0", "mfchckpt") in left  # pinned, from the first run
    assert {(second.id, f, n) for f in "01" for n in ("final", "mfchckpt")} <= set(left)

    assert out["gc_young"] == 0  # default grace period: nothing old enough yet
    assert out["gc_dry"]["dry_run"] is True
    assert out["gc_dry"]["blobs_deleted"] == out["gc"]["blobs_deleted"] > 0
    assert out["gc"]["bytes_reclaimed"] > 0 and out["gc_again"] == 0
    assert out["du_before"]["total"]["logical_bytes"] > out["du_before"]["total"]["physical_bytes"]
    assert {r["group"] for r in out["du_before"]["rows"]} == {
        "BrowseFlow/" + first.id,
        "BrowseFlow/" + second.id,
    }
    after = out["du_after"]
    assert after["total"]["checkpoints"] == 7  # 5 train + 2 evaluate
    assert after["stored_bytes"] == after["total"]["physical_bytes"]  # nothing unreferenced
    assert len(out["loaded"]) == 7 and all(n > 0 for n in out["loaded"])
