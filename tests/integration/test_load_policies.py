"""Load policies across runs, foreach splits and namespaces (design.md section 2)."""

from __future__ import annotations

import json

import pytest

from .flowrun import FLOWS, local_root, local_store, run_flow, single_task, stored_headers

pytestmark = pytest.mark.flow

FIRST_ATTEMPT = (
    "[@checkpoint] No checkpoint loaded: first attempt of a new run (load_policy='fresh')."
)


def test_eager_loads_an_earlier_runs_checkpoint_and_fresh_does_not(flow_env):
    env, tmp = flow_env
    flow = FLOWS / "eager_flow.py"
    first = run_flow(flow, env, tmp)
    second = run_flow(flow, env, tmp)

    eager1 = single_task(first.run, "eager_step")
    assert eager1.data.eager_loaded is None
    assert single_task(first.run, "fresh_step").data.fresh_loaded is None
    (line,) = first.checkpoint_log("eager_step")
    assert line.startswith("[@checkpoint] No checkpoint loaded: no earlier checkpoint"), line

    # Run 2: eager starts from run 1's latest=True checkpoint (not the newer latest=False one).
    eager2 = single_task(second.run, "eager_step")
    assert eager2.data.eager_loaded == first.id
    assert eager2.data.eager_loaded_from == eager1.pathspec
    (line,) = second.checkpoint_log("eager_step")
    assert line.startswith(
        "[@checkpoint] Loaded checkpoint 'mfchckpt' (%s, attempt 0" % (eager1.pathspec)
    ), line
    assert "from an earlier run (eager)) into " in line

    # Run 2: the default policy starts empty in a new run.
    fresh2 = single_task(second.run, "fresh_step")
    assert fresh2.data.fresh_loaded is None
    assert fresh2.data.fresh_loaded_from is None
    assert second.checkpoint_log("fresh_step") == [FIRST_ATTEMPT]


def test_none_policy_loads_nothing_and_user_code_lists_and_loads(flow_env):
    env, tmp = flow_env
    flow = FLOWS / "none_flow.py"
    first = run_flow(flow, dict(env, CKPT_TEST_FAIL="1"), tmp)
    second = run_flow(flow, env, tmp)
    none_line = (
        "[@checkpoint] No checkpoint loaded: load_policy='none': nothing is loaded automatically."
    )

    # Run 1: attempt 0 saved and failed; the retry still starts empty.
    t1 = single_task(first.run, "pick")
    assert t1.current_attempt == 1
    assert first.checkpoint_log("pick") == [none_line, none_line]
    assert t1.data.auto_loaded is False
    assert t1.data.dir_was_empty is True
    # ...but list() shows attempt 0's checkpoints of this task, newest first.
    assert [(c["run"], c["attempt"], c["name"]) for c in t1.data.own] == [
        (first.id, 0, "other"),
        (first.id, 0, "mfchckpt"),
    ]
    assert t1.data.explicit_value is None

    # Run 2: nothing of its own yet; list(within_task=False) shows run 1's, and load() works.
    t2 = single_task(second.run, "pick")
    assert t2.current_attempt == 0
    assert second.checkpoint_log("pick") == [none_line]
    assert t2.data.auto_loaded is False
    assert t2.data.dir_was_empty is True
    assert t2.data.own == []
    run1 = [(c["run"], c["attempt"], c["name"]) for c in t2.data.step_wide]
    assert run1 == [
        (first.id, 1, "other"),
        (first.id, 1, "mfchckpt"),
        (first.id, 0, "other"),
        (first.id, 0, "mfchckpt"),
    ]
    assert t2.data.full_namespace == t2.data.step_wide
    assert [(c["run"], c["attempt"]) for c in t2.data.attempt0] == [(first.id, 0)] * 2
    assert {c["name"] for c in t2.data.named_other} == {"other"}
    assert len(t2.data.named_other) == 2
    # list(task=...) is that task's latest attempt (issue 14; attempt='all' lists every one).
    assert t2.data.by_task == t2.data.step_wide[:2]
    assert t2.data.explicit_value == "%s:1" % first.id
    assert t2.data.explicit_from == t1.pathspec
    assert t2.data.load_returned_directory is True
    expected = "%s:1" % first.id
    assert t2.data.load_by == {
        "key": expected,
        "url": expected,
        "pathspec": expected,
        "task": expected,
    }


def test_foreach_splits_have_separate_lineages(flow_env):
    env, tmp = flow_env
    flow = FLOWS / "foreach_flow.py"
    items = ["a", "a", "b"]  # two splits with equal values still have separate lineages
    failing = dict(env, CKPT_TEST_FAIL="1")
    first = run_flow(flow, failing, tmp)
    second = run_flow(flow, failing, tmp)

    def saved(run, index, attempt, prev):
        return {"run": run, "index": index, "input": items[index], "attempt": attempt, "prev": prev}

    # Run 1: each split failed once and its retry loaded only its own attempt-0 checkpoint.
    results = single_task(first.run, "join").data.results
    assert [r["index"] for r in results] == [0, 1, 2]
    assert len({r["pathspec"] for r in results}) == 3
    for r in results:
        i, task_id = r["index"], r["pathspec"].rsplit("/", 1)[1]
        assert r["loaded"] == saved(first.id, i, 0, None)
        assert r["loaded_from"] == r["pathspec"]
        attempt0, attempt1 = first.checkpoint_log("work", task=task_id)
        assert attempt0.startswith("[@checkpoint] No checkpoint loaded: no earlier"), attempt0
        assert attempt1.startswith(
            "[@checkpoint] Loaded checkpoint 'mfchckpt' (%s, attempt 0" % r["pathspec"]
        ), attempt1
    assert all(t.current_attempt == 1 for t in first.run["work"])

    # Run 2 (eager): attempt 0 of each split started from its own split's latest checkpoint
    # in run 1 (attempt 1); the retry then preferred the task's own attempt 0 over run 1.
    results2 = single_task(second.run, "join").data.results
    for r1, r2 in zip(results, results2):
        i, task_id = r2["index"], r2["pathspec"].rsplit("/", 1)[1]
        run1_latest = saved(first.id, i, 1, saved(first.id, i, 0, None))
        assert r2["loaded"] == saved(second.id, i, 0, run1_latest)
        assert r2["loaded_from"] == r2["pathspec"]
        attempt0, attempt1 = second.checkpoint_log("work", task=task_id)
        assert attempt0.startswith(
            "[@checkpoint] Loaded checkpoint 'mfchckpt' (%s, attempt 1" % r1["pathspec"]
        ), attempt0
        assert "(eager)" in attempt0
        assert attempt1.startswith(
            "[@checkpoint] Loaded checkpoint 'mfchckpt' (%s, attempt 0" % r2["pathspec"]
        ), attempt1

    # The store keeps one lineage per foreach index.
    store = local_store(local_root(tmp))
    headers = stored_headers(store, "user:tester", "ForeachCkptFlow", "work")
    assert sorted({h.scope.foreach for h in headers}) == ["0", "1", "2"]
    assert len(headers) == 3 * 4  # per split: attempts 0 and 1 of both runs


def test_resume_reexecutes_only_the_failed_split_from_its_own_checkpoint(flow_env):
    env, tmp = flow_env
    flow = FLOWS / "foreach_flow.py"
    origin = run_flow(flow, dict(env, CKPT_TEST_FAIL_SPLIT="2"), tmp, expect="failed")
    # Splits 0 and 1 succeeded and saved in the origin run too; they must not leak into split 2.
    resumed = run_flow(flow, env, tmp, resume=origin.id)
    results = single_task(resumed.run, "join").data.results
    run0 = {"run": origin.id, "index": 2, "input": "b", "attempt": 0, "prev": None}
    assert results[2]["loaded"] == {
        "run": origin.id,
        "index": 2,
        "input": "b",
        "attempt": 1,
        "prev": run0,
    }
    # Splits 0 and 1 normally finished in the origin run and are cloned (they had loaded
    # nothing); if the failing run stopped them early, their re-execution may only load their
    # own split's checkpoint.
    for i in (0, 1):
        loaded = results[i]["loaded"]
        assert loaded is None or (loaded["run"], loaded["index"]) == (origin.id, i), loaded
    split2_task = results[2]["pathspec"].rsplit("/", 1)[1]
    (line,) = resumed.checkpoint_log("work", task=split2_task)
    assert "origin run %s (resume)" % origin.id in line, line
    store = local_store(local_root(tmp))
    split2 = {
        h.scope.pathspec
        for h in stored_headers(store, "user:tester", "ForeachCkptFlow", "work")
        if h.scope.foreach == "2" and h.scope.run == origin.id
    }
    assert split2 == {results[2]["loaded_from"]}
    assert line.startswith(
        "[@checkpoint] Loaded checkpoint 'mfchckpt' (%s, attempt 1" % results[2]["loaded_from"]
    ), line


def test_namespaces_are_separate_unless_asked(flow_env):
    env, tmp = flow_env
    alice = dict(env, USER="alice", METAFLOW_USER="alice")
    bob = dict(env, USER="bob", METAFLOW_USER="bob")
    flow = FLOWS / "namespace_flow.py"

    a1 = single_task(run_flow(flow, alice, tmp).run, "work")
    assert a1.data.task_namespace == "user:alice"
    assert a1.data.loaded is None
    alice_ref = a1.data.ref
    assert alice_ref.namespace == "user:alice"

    # Bob's eager step sees nothing of alice's; loading her reference is refused by default.
    b_result = run_flow(flow, dict(bob, FOREIGN_REF=json.dumps(alice_ref)), tmp)
    b = single_task(b_result.run, "work")
    assert b.data.task_namespace == "user:bob"
    assert b.data.loaded is None
    assert b.data.loaded_from is None
    assert b.data.visible_runs == []  # listed before its own save
    assert b_result.checkpoint_log("work") == [
        "[@checkpoint] No checkpoint loaded: no earlier checkpoint of this step in namespace "
        "user:bob."
    ]
    error_type, message = b.data.foreign_error
    assert error_type == "CheckpointScopeError"
    assert "'user:alice'" in message and "'user:bob'" in message
    assert "namespace_check=False" in message
    assert b.data.foreign_value == "user:alice:%s" % alice_ref.run

    # Alice's next run continues from her own checkpoint, not bob's newer one.
    a3 = single_task(run_flow(flow, alice, tmp).run, "work")
    assert a3.data.loaded == "user:alice:%s" % alice_ref.run
    assert a3.data.loaded_from == a1.pathspec
    assert a3.data.visible_runs == [alice_ref.run]
