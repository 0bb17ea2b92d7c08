"""The label of a model saved without one (``current.model.save(path)``): ``<Flow>_<step>``
when that is a valid checkpoint name, else a valid name derived from it, the same for one
step and different for two (adv41 #4: a unicode or long flow name made ``save`` fail)."""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import (
    MAX_NAME_LENGTH,
    validate_name,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.task.model_runtime import (
    default_label,
)

#: Python identifiers, as Metaflow flow classes and steps are named (unicode, any length).
identifiers = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=140).filter(
    str.isidentifier
)


def _valid(name: str) -> bool:
    try:
        validate_name(name)
        return True
    except CheckpointConfigError:
        return False


@settings(max_examples=400, deadline=None)
@given(identifiers, identifiers, identifiers, identifiers)
def test_the_default_label_is_valid_stable_and_distinct(flow, step, flow2, step2):
    label = default_label(flow, step)
    assert validate_name(label) == label and len(label) <= MAX_NAME_LENGTH
    assert default_label(flow, step) == label  # the same for every save of the step
    raw = "%s_%s" % (flow, step)
    if _valid(raw):
        assert label == raw  # what the reference extension uses, when it is a name
    # Labels are compared in NFC (the same text typed either way is one label; Python itself
    # normalises identifiers, so a flow's real names never differ only in normal form).
    if unicodedata.normalize("NFC", "%s_%s" % (flow2, step2)) != unicodedata.normalize("NFC", raw):
        assert default_label(flow2, step2) != label


def test_examples():
    assert default_label("TrainFlow", "start") == "TrainFlow_start"
    assert default_label("EntréesFlow", "start").startswith("Entr_esFlow_start-")
    long = default_label("A" * 120, "train")
    assert len(long) == MAX_NAME_LENGTH and long.startswith("A" * 80)
