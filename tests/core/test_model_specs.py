"""``@checkpoint(models=[...])`` specs, checked at ``step_init`` (before any task): what is
accepted, and every malformed or ambiguous declaration refused with the step and the spec."""

from __future__ import annotations

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.task.models import (
    ModelSpec,
    parse_specs,
)

ACCEPTED = [
    ("resnet50", [ModelSpec("resnet50")]),
    (["resnet50", "bert@1a2b"], [ModelSpec("resnet50"), ModelSpec("bert", "1a2b")]),
    (["tiny=./tiny.pt"], [ModelSpec("tiny", "", "./tiny.pt")]),
    (["resnet50@latest"], [ModelSpec("resnet50")]),
    (["res-net", "resnet"], [ModelSpec("res-net"), ModelSpec("resnet")]),  # RES_NET != RESNET
    ([], []),
    (None, []),
]


@pytest.mark.parametrize("value, specs", ACCEPTED, ids=[repr(v) for v, _ in ACCEPTED])
def test_accepted_specs(value, specs):
    assert parse_specs(value, "train") == specs


#: Pairs of names that differ only in case, '-', '_' or '.', and the one variable they share.
SHARING_A_VARIABLE = [
    ("Res-Net", "Res_Net", "METAFLOW_CHECKPOINT_MODEL_RES_NET"),
    ("res.net", "res_net", "METAFLOW_CHECKPOINT_MODEL_RES_NET"),
    ("resnet50", "ResNet50", "METAFLOW_CHECKPOINT_MODEL_RESNET50"),
    ("bert-base", "BERT.base", "METAFLOW_CHECKPOINT_MODEL_BERT_BASE"),
    ("a_b", "A-B=./local/dir", "METAFLOW_CHECKPOINT_MODEL_A_B"),
    ("tiny@1a2b", "TINY", "METAFLOW_CHECKPOINT_MODEL_TINY"),
]


@pytest.mark.parametrize("first, second, variable", SHARING_A_VARIABLE)
def test_names_sharing_an_environment_variable_are_refused(first, second, variable):
    """Both models' paths would be exported as one variable: one would silently win."""
    with pytest.raises(CheckpointConfigError) as info:
        parse_specs([first, second], "train")
    message = info.value.message
    assert message.startswith("Step 'train': models ")
    assert repr(first.split("=")[0].split("@")[0]) in message
    assert repr(second.split("=")[0].split("@")[0]) in message
    assert variable in message and "rename one" in message


REFUSED = [
    (5, "must be a list of names"),
    ([""], "must be a string"),
    (["tiny="], "empty local path"),
    (["tiny@1a2b=./x"], "both a version and a local path"),
    (["tiny", "tiny"], "declared twice"),
    (["resnet@best:acc"], "aliases such as '@best:<metric>'"),
]


@pytest.mark.parametrize("value, says", REFUSED, ids=[repr(v) for v, _ in REFUSED])
def test_malformed_specs_are_refused(value, says):
    with pytest.raises(CheckpointConfigError, match="Step 'train'") as info:
        parse_specs(value, "train")
    assert says in info.value.message
