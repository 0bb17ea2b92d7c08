"""The client API from a script or notebook: ``from metaflow import Checkpoint``.

Flows run for real; the client runs in a separate Python process, as a user's notebook would,
with only the Metaflow configuration of the flows' environment.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from .flowrun import FLOWS, PROBE_PRELUDE, local_root, run_flow, run_probe, run_subprocess

pytestmark = pytest.mark.flow

PROBE = PROBE_PRELUDE + textwrap.dedent(
    """
    c = Checkpoint()
    run, other = sys.argv[1], sys.argv[2]
    def brief(refs):
        return [[r.step, r.foreach, r.name, r.metadata.get("epoch"), r.metadata.get("val_loss")]
                for r in refs]
    attempt("flow", lambda: brief(c.list("BrowseFlow")))
    attempt("run", lambda: brief(c.list("BrowseFlow/" + run)))
    attempt("step", lambda: brief(c.list("BrowseFlow/%s/train" % run)))
    attempt("step_kw", lambda: brief(c.list("BrowseFlow", step="evaluate")))
    attempt("foreach", lambda: brief(c.list("BrowseFlow/" + run, foreach="1", name="mfchckpt")))
    attempt("ordered", lambda: brief(c.list("BrowseFlow/" + run, order_by="val_loss")))
    attempt("desc", lambda: brief(c.list("BrowseFlow/" + run, order_by="-val_loss", limit=2)))
    attempt("where", lambda: brief(c.list("BrowseFlow/" + run, where={"epoch": 2})))
    attempt("best", lambda: brief([c.best("BrowseFlow/" + run, metric="val_loss")]))
    attempt("best_max", lambda: brief([c.best("BrowseFlow/" + run, metric="accuracy", mode="max")]))
    attempt("best_none", lambda: c.best("BrowseFlow/" + run, metric="f1"))
    task = c.list("BrowseFlow/%s/train" % run, foreach="0")[0]
    attempt("task", lambda: brief(c.list(task.pathspec)))
    attempt("latest_of_task", lambda: brief([c.get(task.pathspec)]))
    best = c.best("BrowseFlow/" + run, metric="val_loss")
    attempt("fields", lambda: {
        "size": best.size, "files_count": best.files_count, "files": best.files,
        "stats_keys": sorted(best.stats), "pathspec": best.pathspec, "url": best.url,
    })
    attempt("open", lambda: best.open("epoch.txt").read().decode())
    dest = os.path.join(sys.argv[3], "loaded")
    attempt("load", lambda: sorted(os.listdir(c.load(best, dest))))
    attempt("load_again", lambda: c.load(best, dest))
    attempt("load_forced", lambda: sorted(os.listdir(c.load(best.key, dest, force=True))))
    attempt("by_url", lambda: c.get(best.url).key == best.key)
    attempt("other_ns_run", lambda: c.list("BrowseFlow/" + other))
    attempt("unknown_flow", lambda: c.list("NoSuchFlow"))
    attempt("unknown_run", lambda: c.list("BrowseFlow/999999"))
    attempt("malformed", lambda: c.get("not a/reference"))
    attempt("bad_target", lambda: c.list("a/b/c/d/e"))
    namespace("user:nobody")
    attempt("invisible_flow", lambda: c.list("BrowseFlow"))
    namespace(None)
    attempt("all_ns", lambda: sorted({r.run for r in c.list("BrowseFlow")}))
    attempt("other_visible", lambda: len(c.list("BrowseFlow/" + other)))
    # Checkpoints written before the task clock by a retry whose machine's clock was behind:
    # one task's listing orders them as its retry does (attempt first), like get() does.
    from dataclasses import replace
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import parse_key
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.factory import (
        storage_for_url,
    )
    raw = CheckpointStore(storage_for_url(task.root))
    scope = parse_key(task.key).scope
    src = os.path.join(sys.argv[3], "skew")
    os.makedirs(src)
    open(os.path.join(src, "f"), "w").write("x")
    first = parse_key(c.list(task.pathspec)[0].key).created_ms
    raw.save(src, replace(scope, attempt=5), name="skew", created_ms=first + 10_000, seq=0)
    raw.save(src, replace(scope, attempt=6), name="skew", created_ms=first + 1_000, seq=0)
    attempt("skewed", lambda: [r.attempt for r in c.list(task.pathspec, name="skew")])
    attempt("skewed_latest", lambda: c.get(task.pathspec).attempt)
    print("PROBE" + json.dumps(out))
    """
)


def _probe(env, tmp, *args):
    return run_probe(PROBE, env, tmp, *args)[0]


def test_browsing_runs_steps_tasks_and_metrics(flow_env):
    env, tmp = flow_env
    mine = run_flow(FLOWS / "browse_flow.py", env, tmp)
    theirs = run_flow(FLOWS / "browse_flow.py", dict(env, USER="other", METAFLOW_USER="other"), tmp)
    out = _probe(env, tmp, mine.id, theirs.id, tmp)

    train = [
        ["train", f, n, e, v]
        for f, losses in (("0", [1.0, 0.4, 0.6]), ("1", [0.9, 0.7, 0.3]))
        for n, e, v in [("mfchckpt", i, x) for i, x in enumerate(losses)] + [("final", None, None)]
    ]
    evaluate = [["evaluate", "_", "eval", None, None]]
    # Newest first; this namespace only (the other user's run is not listed).
    assert out["run"][0] == evaluate[0]
    assert sorted(map(str, out["run"])) == sorted(map(str, train + evaluate))
    assert out["flow"] == out["run"]
    assert sorted(map(str, out["step"])) == sorted(map(str, train))
    assert out["step_kw"] == evaluate
    assert out["foreach"] == [
        ["train", "1", "mfchckpt", e, v] for e, v in [(2, 0.3), (1, 0.7), (0, 0.9)]
    ]
    assert [x[4] for x in out["ordered"][:6]] == [0.3, 0.4, 0.6, 0.7, 0.9, 1.0]
    assert [x[4] for x in out["ordered"][6:]] == [None, None, None]  # no metric: last
    assert [x[4] for x in out["desc"]] == [1.0, 0.9]
    assert sorted(x[4] for x in out["where"]) == [0.3, 0.6]
    assert out["best"] == [["train", "1", "mfchckpt", 2, 0.3]]
    assert out["best_max"] == evaluate
    # A metric no checkpoint has is a typo: an error listing the fields there are (issue 15).
    assert out["best_none"]["error"] == "CheckpointConfigError"
    assert "'f1'" in out["best_none"]["message"] and "val_loss" in out["best_none"]["message"]
    assert len(out["task"]) == 4
    # A task's "latest" checkpoint skips saves made with latest=False ("final").
    assert out["task"][0][2] == "final"
    assert out["latest_of_task"] == [["train", "0", "mfchckpt", 2, 0.6]]
    assert out["skewed"] == [6, 5] and out["skewed_latest"] == 6

    fields = out["fields"]
    assert fields["size"] == 4096 + 1
    assert fields["files_count"] == 2
    assert sorted(f["path"] for f in fields["files"]) == ["epoch.txt", "weights.bin"]
    assert {"bytes_uploaded", "bytes_deduplicated", "bytes_read"} <= set(fields["stats_keys"])
    assert fields["pathspec"].startswith("BrowseFlow/%s/train/" % mine.id)
    assert fields["url"].startswith(str(local_root(tmp)))
    assert out["open"] == "2"
    assert out["load"] == ["epoch.txt", "weights.bin"]
    assert out["load_again"]["error"] == "CheckpointConfigError"
    assert "not empty" in out["load_again"]["message"]
    assert out["load_forced"] == ["epoch.txt", "weights.bin"]
    assert out["by_url"] is True

    assert out["other_ns_run"]["error"] == "CheckpointScopeError"
    assert "namespace(None)" in out["other_ns_run"]["message"]
    assert out["unknown_flow"]["error"] == "CheckpointNotFound"
    assert "NoSuchFlow" in out["unknown_flow"]["message"]
    assert out["unknown_run"]["error"] == "CheckpointNotFound"
    assert out["malformed"]["error"] == "CheckpointConfigError"
    assert out["bad_target"]["error"] == "CheckpointConfigError"
    assert out["invisible_flow"]["error"] == "CheckpointScopeError"
    assert "no run in the current namespace 'user:nobody'" in out["invisible_flow"]["message"]
    assert out["all_ns"] == sorted([mine.id, theirs.id])
    assert out["other_visible"] == 9


NAMED = textwrap.dedent(
    """
    import json, os, sys
    from metaflow import Checkpoint
    from metaflow.exception import MetaflowException

    root = sys.argv[1] if len(sys.argv) > 1 else None
    c = Checkpoint(root=root)
    src = os.path.join(os.getcwd(), "model_src")
    os.makedirs(src, exist_ok=True)
    with open(os.path.join(src, "model.pt"), "wb") as f:
        f.write(b"weights" * 1000)
    out = {}
    first = c.save(os.path.join(src, "model.pt"), name="resnet50", metadata={"top1": 0.7})
    again = c.save(os.path.join(src, "model.pt"), name="resnet50", metadata={"top1": 0.7})
    out["first"] = [first.stats["bytes_uploaded"], first.stats.get("reused", False)]
    same = again.key == first.key
    out["again"] = [again.stats["bytes_uploaded"], again.stats.get("reused"), same]
    with open(os.path.join(src, "model.pt"), "ab") as f:
        f.write(b"more")
    second = c.save(os.path.join(src, "model.pt"), name="resnet50", metadata={"top1": 0.8})
    out["versions"] = [r.key.split("-")[4] for r in c.list(name="resnet50")]
    out["ids"] = [r.key.split("-")[4] for r in (second, again, first)]
    out["pathspec"] = second.pathspec
    out["latest_read"] = c.open("resnet50", "model.pt").read()[-4:].decode()
    out["old_read"] = len(c.open("resnet50@" + first.key.split("-")[4][:8], "model.pt").read())
    dest = c.load("resnet50", os.path.join(os.getcwd(), "out"))
    out["loaded"] = sorted(os.listdir(dest))
    try:
        c.save(os.path.join(src, "missing.pt"), name="x")
    except MetaflowException as exc:
        out["missing"] = exc.message
    out["deleted"] = c.delete("resnet50@" + second.key.split("-")[4]).key == second.key
    out["after_delete"] = c.get("resnet50").key == again.key
    print("PROBE" + json.dumps(out))
    """
)


def _named(env, tmp, *args):
    script = tmp / "named.py"
    script.write_text(NAMED)
    proc = run_subprocess([script, *args], env, tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PROBE"))
    return json.loads(line[len("PROBE") :])


def _check_named(out):
    assert out["first"] == [7000, False]
    # Identical content: no data uploaded, but its own version (issue 14 F5).
    assert out["again"] == [0, None, False]
    assert out["versions"] == out["ids"]  # newest first
    assert out["pathspec"] is None
    assert out["latest_read"] == "more"
    assert out["old_read"] == 7000
    assert out["loaded"] == ["model.pt"]
    assert "missing.pt: no such file" in out["missing"]
    assert out["deleted"] is True and out["after_delete"] is True


def test_named_checkpoints_outside_any_flow(flow_env):
    env, tmp = flow_env
    (tmp / ".metaflow").mkdir()
    _check_named(_named(env, tmp))
    assert (local_root(tmp) / "manifests" / "_library").is_dir()


@pytest.mark.s3
def test_named_checkpoints_on_s3(flow_env, s3_server):
    env, tmp = flow_env
    bucket = s3_server["new_bucket"]()
    env = dict(env, **s3_server["env"])
    _check_named(_named(env, tmp, "s3://%s/ckpt" % bucket))
    keys = s3_server["client"].list_objects_v2(Bucket=bucket, Prefix="ckpt/manifests/_library/")
    assert keys["KeyCount"] == 2  # two versions left after the delete


def test_a_step_gets_models_by_name(flow_env, monkeypatch):
    env, tmp = flow_env
    (tmp / ".metaflow").mkdir()
    import metaflow.metaflow_config
    from metaflow import Checkpoint

    model = tmp / "tiny.pt"
    model.write_bytes(b"tiny weights")
    # Published by the flow's user: a bare name resolves among its own namespace's versions.
    monkeypatch.setattr(metaflow.metaflow_config, "USER", env["USER"])
    monkeypatch.delenv("METAFLOW_PRODUCTION_TOKEN", raising=False)
    ref = Checkpoint(root=str(local_root(tmp))).save(str(model), name="tiny")
    assert ref.publisher == {"user": "tester", "namespace": "user:tester", "origin": "client"}
    vocab = tmp / "vocab_dir"
    vocab.mkdir()
    (vocab / "words.txt").write_text("a b c")

    first = run_flow(FLOWS / "models_flow.py", env, tmp)
    start = first.run["start"].task
    assert start.data.tiny == b"tiny weights"
    assert start.data.paths["tiny"].endswith("/tiny/tiny.pt")
    assert start.data.vocab_files == ["words.txt"]
    assert start.data.child_saw == "b'tiny weights'"
    assert start.data.env_models == start.data.paths
    assert start.data.loaded_dir == ["tiny.pt"]
    assert "Uploaded model 'vocab'" in first.stdout

    # The same local directory again: the run's own version, no byte uploaded, and it says so.
    second = run_flow(FLOWS / "models_flow.py", env, tmp)
    assert "Uploaded model 'vocab'" in second.stdout and ", 0 B new)" in second.stdout
    assert second.run["start"].task.data.vocab_files == ["words.txt"]


def test_a_missing_model_fails_the_run_before_any_task(flow_env):
    env, tmp = flow_env
    proc = run_subprocess([FLOWS / "models_missing_flow.py", "--no-pylint", "run"], env, tmp)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Step 'train' needs model 'absent-model'" in out
    assert "Traceback" not in out
    assert "Task is starting" not in out  # not even `start` ran
