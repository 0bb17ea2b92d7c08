"""``@model(load=[name])``: a named checkpoint is loaded only when the flow has no artifact of
that name at all (adv41 #1); a model saved without a label in a flow whose ``<Flow>_<step>`` is
no valid name gets a valid, stable label (adv41 #4).

In tests/flows/model_entries_flow.py every entry's name is also the label of a named model: an
artifact holding None, an int, or (in a join, before ``merge_artifacts``) one held by the
inputs must never fall back to that model.  With ``best_effort_load`` each is one warning
with the true reason; without, the task fails before the step runs, naming the artifact and
what it holds.  A method's name and an absent name load the named model.
"""

from __future__ import annotations

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.task.model_runtime import (
    default_label,
)

from .flowrun import FLOWS, run_flow, single_task

pytestmark = pytest.mark.flow

FLOW = FLOWS / "model_entries_flow.py"

#: entry -> the reason its warning / error gives
REASONS = {
    "branch_model": "this join step's inputs hold different values of self.branch_model",
    "none_art": "the artifact self.none_art is None",
    "int_art": "the artifact self.int_art holds a int (3)",
}


def test_an_artifact_shadows_its_name_and_only_an_absent_name_loads_the_named_model(flow_env):
    env, tmp = flow_env
    result = run_flow(FLOW, env, tmp)
    join = single_task(result.run, "join").data
    assert join.got == {
        "branch_model": None,
        "none_art": None,
        "int_art": None,
        "helper": "named helper",  # a method is no artifact: the named model
        "absent_one": "named absent_one",  # no artifact at all: the named model
    }
    warnings = [line for line in result.stdout.splitlines() if "[@model] Warning" in line]
    assert len(warnings) == len(REASONS), warnings  # one per entry, none for the others
    for name, reason in REASONS.items():
        (line,) = [w for w in warnings if "load=[%r]" % name in w]
        assert reason in line and "loaded[%r] is None" % name in line
        assert "named checkpoint" not in line.split(reason)[0]

    # Saved without a label in EntréesFlow.start: a valid label, the same for every save.
    start = single_task(result.run, "start").data
    label = default_label("EntréesFlow", "start")
    assert start.default_ref["label"] == start.again["label"] == label != "EntréesFlow_start"
    assert label.startswith("Entr_esFlow_start-")
    assert single_task(result.run, "check").data.default_loaded == "default"


@pytest.mark.parametrize("entry", sorted(REASONS))
def test_without_best_effort_the_task_fails_before_the_step_naming_the_artifact(flow_env, entry):
    env, tmp = flow_env
    env = dict(env, ENTRIES=entry, STRICT="1")
    result = run_flow(FLOW, env, tmp, expect="failed")
    text = result.stdout + result.stderr
    assert "Invalid checkpoint configuration" in text and REASONS[entry] in text
    assert "Step 'join': @model(load=[%r])" % entry in text
    assert "[@model] Loaded" not in text  # nothing loaded, the named model least of all
