"""A listing call made in a task (``current.checkpoint.list``, ``Checkpoint().list``/``best``),
in a process the task started and from a notebook gives the same answer or the same error
(issue 14, fix L): one code path, no filter dropped, no namespace or existence check skipped,
every spelling of a task one task, and a task ``resume`` cloned lists its origin's checkpoints.
"""

from __future__ import annotations

import pytest

from .flowrun import FLOWS, PROBE_PRELUDE, run_flow, run_probe, single_task

pytestmark = pytest.mark.flow

FLOW = FLOWS / "list_parity_flow.py"

PROBE = (
    PROBE_PRELUDE
    + """
sys.path.insert(0, sys.argv[4])
import list_parity_table
print("PROBE" + json.dumps(list_parity_table.table(Checkpoint(), *sys.argv[1:4])))
"""
)

#: Every spelling of one task (slashes around it, whitespace outside) is that task: its latest
#: attempt as Metaflow recorded it, the same listing (hypothesis, in a notebook process).
SPELLINGS = (
    PROBE_PRELUDE
    + """
from hypothesis import given, settings, strategies as st
from metaflow_extensions.checkpointing.plugins.checkpointing.common.attempts import (
    metaflow_attempt,
)
canon = sys.argv[1]
c = Checkpoint()
names = lambda refs: [[r["attempt"], r["pathspec"]] for r in refs]
latest, every = names(c.list(task=canon)), names(c.list(task=canon, attempt="all"))
slashes, space = st.text(alphabet="/", max_size=3), st.sampled_from(["", " ", "\\t", "\\n"])

@settings(max_examples=25, deadline=None, database=None)
@given(space, slashes, slashes, space)
def same_task(a, b, c_, d):
    spelled = a + b + canon + c_ + d
    assert metaflow_attempt(spelled) == 1, spelled
    assert names(c.list(task=spelled)) == latest, spelled
    assert names(c.list(task=spelled, attempt="all")) == every, spelled

same_task()
print("PROBE" + json.dumps({"latest": latest, "every": every}))
"""
)


def _tables(run) -> dict:
    return single_task(run, "probe")["tables"].data


def test_a_call_in_a_task_a_subprocess_and_a_notebook_gives_one_answer(flow_env):
    env, tmp = flow_env
    other = run_flow(FLOW, dict(env, METAFLOW_USER="someoneelse", USER="someoneelse"), tmp).run
    other_start = single_task(other, "start").pathspec
    run = run_flow(FLOW, dict(env, PARITY_OTHER=other_start), tmp).run
    tables = _tables(run)
    start = tables["start"]
    assert start == single_task(run, "start").pathspec
    bogus = "ListParityFlow/%s/start/999999" % run.id
    notebook, _ = run_probe(PROBE, env, tmp, start, bogus, other_start, str(FLOWS))

    # Every way answers alike (current.checkpoint takes the rows it has parameters for).
    assert tables["client"] == tables["subprocess"] == notebook, (tables, notebook)
    assert tables["current"] == {k: notebook[k] for k in tables["current"]}

    saved = [[0, "e", start]]
    assert notebook["latest"] == [] and notebook["trailing_slash"] == []  # attempt 1 saved none
    assert notebook["leading_slash"] == []  # every spelling of the task: its latest attempt
    assert notebook["all"] == notebook["attempt0"] == notebook["full"] == saved
    assert notebook["named_all"] == notebook["positional"] == saved
    assert notebook["bogus"][0] == "CheckpointNotFound" and "999999" in notebook["bogus"][1]
    for label in ("other_namespace", "other_namespace_all"):
        assert notebook[label][0] == "CheckpointScopeError", notebook[label]
        assert "namespace" in notebook[label][1]
    for label, keyword in (
        ("step_alone", "step="),
        ("run_alone", "run="),
        ("foreach_alone", "foreach="),
    ):
        assert notebook[label][0] == "CheckpointConfigError", notebook[label]
        assert keyword in notebook[label][1] and "list('Flow'" in notebook[label][1]
    # best(task=) names the task, and says the latest attempt saved none.
    assert notebook["best"][0] == "CheckpointNotFound"
    assert "task %s" % start in notebook["best"][1] and "attempt='all'" in notebook["best"][1]
    assert notebook["best_all"] == [0, "e", 1.0]

    seen, _ = run_probe(SPELLINGS, env, tmp, start)
    assert seen == {"latest": [], "every": [[0, start]]}

    # A task `resume` cloned lists its origin's checkpoints (latest attempt, every attempt,
    # positional), in the resumed run's task and from a notebook alike.
    resumed = run_flow(
        FLOW,
        dict(env, PARITY_OTHER=other_start),
        tmp,
        resume=run.id,
        run_kwargs={"step_to_rerun": "probe"},
    ).run
    cloned = _tables(resumed)
    clone = cloned["start"]
    assert clone == single_task(resumed, "start").pathspec != start
    bogus = "ListParityFlow/%s/start/999999" % resumed.id
    again, _ = run_probe(PROBE, env, tmp, clone, bogus, other_start, str(FLOWS))
    assert cloned["client"] == cloned["subprocess"] == again
    for label in (
        "latest",
        "all",
        "attempt0",
        "full",
        "named_all",
        "positional",
        "best",
        "best_all",
    ):
        if label == "best":
            assert again[label][0] == "CheckpointNotFound"
            continue
        assert again[label] == notebook[label], label


GANG_PROBE = (
    PROBE_PRELUDE
    + """
from metaflow import Task
c = Checkpoint()
nodes = lambda refs: sorted(r["metadata"]["node"] for r in refs)
for p in sys.argv[1:]:
    attempt(p, lambda: [nodes(c.list(task=p)), nodes(c.list(task=Task(p))), nodes(c.list(p))])
print("PROBE" + json.dumps(out))
"""
)


def test_a_parallel_worker_task_lists_its_own_saves_and_the_control_task_the_gangs(flow_env):
    """A gang saves under its control task (one lineage the gang retries from): a worker's
    task lists the checkpoints its node saved (by pathspec, Task, positional; in the task and
    from a notebook), the control task every node's."""
    env, tmp = flow_env
    run = run_flow(FLOWS / "list_gang_flow.py", env, tmp).run
    control = next(t for t in run["train"] if "_node_" not in t.id)
    worker = next(t for t in run["train"] if t is not control)
    seen, _ = run_probe(GANG_PROBE, env, tmp, worker.pathspec, control.pathspec)
    assert seen[worker.pathspec] == [[1], [1], [1]]
    assert seen[control.pathspec] == [[0, 1], [0, 1], [0, 1]]
    assert worker["own_task"].data == [1]
