"""@retry and ``resume`` continue from the last checkpoint (design.md section 2, "fresh")."""

from __future__ import annotations

import pytest

from .flowrun import (
    EXAMPLES,
    FLOWS,
    local_root,
    local_store,
    run_flow,
    single_task,
    stored_headers,
)

pytestmark = pytest.mark.flow


def test_doc_counter_example_retry_continues_from_previous_attempt(flow_env):
    env, tmp = flow_env
    result = run_flow(EXAMPLES / "checkpoint_basic.py", env, tmp)
    run = result.run
    task = single_task(run, "count_values")
    flow, pathspec = "CheckpointSimpleFlow", task.pathspec

    # Attempt 0 counted 0..9 and failed; attempt 1 continued from 9 up to 18.
    assert run.data.counter == 18
    assert task.current_attempt == 1
    first, loaded_line = result.checkpoint_log("count_values")
    assert first == (
        "[@checkpoint] No checkpoint loaded: first attempt of a new run (load_policy='fresh')."
    )
    assert loaded_line.startswith(
        "[@checkpoint] Loaded checkpoint 'mfchckpt' (%s, attempt 0, saved " % pathspec
    ), loaded_line
    user_lines = [line.msg for line in result.lines("count_values")]
    assert "Loaded a checkpoint from pathspec %s, attempt 0" % pathspec in user_lines
    assert "reading the counter value from the file 9" in user_lines
    assert "Current value of counter 18" in user_lines

    # The artifact is a reference usable both as a dict and with attributes.
    ref = task["final_checkpoint"].data
    assert isinstance(ref, dict)
    root = str(local_root(tmp))
    for field in ("key", "url", "root", "name", "pathspec", "attempt", "metadata", "latest"):
        assert ref[field] == getattr(ref, field)
    assert ref.pathspec == pathspec
    assert ref["attempt"] == 1
    assert ref.name == "mfchckpt"
    assert ref["metadata"] == {}
    assert ref.latest is True
    assert ref.root == root
    assert ref.url.startswith(root) and ref.url.endswith(ref.key)
    assert ref.flow == flow and ref.step == "count_values" and ref.run == run.id

    # The store holds 10 checkpoints per attempt; the artifact is the newest one.
    store = local_store(root)
    headers = stored_headers(store, "user:tester", flow, "count_values")
    assert [h.scope.attempt for h in headers] == [1] * 10 + [0] * 10
    assert headers[0].key == ref.key
    store.load(store.read(ref.key), str(tmp / "final"))
    assert (tmp / "final" / "counter.txt").read_text() == "18"


def test_resume_reexecuted_step_loads_origin_runs_checkpoint(flow_env):
    env, tmp = flow_env
    flow = FLOWS / "resume_flow.py"
    origin = run_flow(flow, dict(env, CKPT_TEST_FAIL="1"), tmp, expect="failed")
    origin_task = single_task(origin.run, "work")
    assert origin.checkpoint_log("work") == [
        "[@checkpoint] No checkpoint loaded: first attempt of a new run (load_policy='fresh')."
    ]

    resumed = run_flow(flow, env, tmp, resume=origin.id)
    assert resumed.id != origin.id
    task = single_task(resumed.run, "work")
    assert task.data.origin_run_id == origin.id
    assert task.data.was_loaded is True
    assert task.data.loaded_value == "saved-by-%s" % origin.id
    assert task.data.loaded_from_pathspec == origin_task.pathspec
    assert task.data.loaded_attempt == 0
    (line,) = resumed.checkpoint_log("work")
    assert line.startswith(
        "[@checkpoint] Loaded checkpoint 'mfchckpt' (%s, attempt 0" % (origin_task.pathspec)
    ), line
    assert "origin run %s (resume)" % origin.id in line
    # The resumed task's own save is in the new run's scope.
    assert task.data.ref.run == resumed.id
    assert task.data.ref.metadata == {"run": resumed.id}


def test_resume_of_a_resume_follows_the_origin_chain(flow_env):
    """A resumed run whose step failed before saving still leads the next resume back to the
    checkpoint of the run before it."""
    env, tmp = flow_env
    flow = FLOWS / "resume_flow.py"
    run1 = run_flow(flow, dict(env, CKPT_TEST_FAIL="1"), tmp, expect="failed")
    run2 = run_flow(
        flow, dict(env, CKPT_TEST_FAIL="before_save"), tmp, resume=run1.id, expect="failed"
    )
    (line,) = run2.checkpoint_log("work")
    assert "origin run %s (resume)" % run1.id in line, line
    store = local_store(local_root(tmp))
    headers = stored_headers(store, "user:tester", "ResumeCkptFlow", "work")
    assert [h.scope.run for h in headers] == [run1.id]  # run 2 saved nothing

    run3 = run_flow(flow, env, tmp, resume=run2.id)
    task = single_task(run3.run, "work")
    assert task.data.origin_run_id == run2.id
    assert task.data.loaded_value == "saved-by-%s" % run1.id
    assert task.data.loaded_from_pathspec == single_task(run1.run, "work").pathspec
    (line,) = run3.checkpoint_log("work")
    assert "origin run %s (resume)" % run1.id in line, line


def test_checkpoint_dir_env_var_lets_subprocesses_read_loaded_files(flow_env):
    env, tmp = flow_env
    result = run_flow(FLOWS / "env_dir_flow.py", env, tmp)
    task = single_task(result.run, "work")
    assert task.current_attempt == 1
    assert task.data.was_loaded is True
    assert task.data.loaded_attempt == 0
    assert task.data.env_dir == task.data.directory
    assert task.data.subprocess_read == "written by attempt 0 of %s" % task.pathspec
