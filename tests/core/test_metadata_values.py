"""Metrics as users log them: torch/NumPy values in ``metadata`` are stored as plain JSON.

Training code passes ``metadata={"loss": loss, "acc": np.float32(...)}`` straight from its
metrics; one-value tensors, arrays and NumPy scalars are stored as their ``.item()`` anywhere in
the dict, NaN/inf become ``null`` with one warning per save naming their keys, and a value that
cannot be stored raises ``CheckpointMetadataError`` naming its key path, before anything is
written.  Real torch tensors and NumPy values; one real save through ``CheckpointStore.save``.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import (
    validate_metadata,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    CheckpointMetadataError,
    CheckpointMetadataWarning,
)

from .helpers import make_scope, tiny


def validated(metadata):
    """``validate_metadata(metadata)`` and the CheckpointMetadataWarnings it issued."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = validate_metadata(metadata)
    return out, [w for w in caught if issubclass(w.category, CheckpointMetadataWarning)]


def test_torch_and_numpy_scalars_are_stored_as_their_values_anywhere_in_the_dict():
    metadata = {
        "loss": torch.tensor(0.25),
        "acc": np.float32(0.5),
        "step": np.int64(1200),
        "done": np.bool_(False),
        "lr": np.float64(1e-3),
        "opt": {"lr": torch.tensor(3e-4, dtype=torch.float64), "betas": (np.float32(0.5), 0.9)},
        "hist": [torch.tensor(1), np.array(2.0), torch.tensor([4.0]), {"ok": torch.tensor(True)}],
        "plain": {"s": "x", "n": None, "i": 3},
    }
    out, caught = validated(metadata)
    assert out == {
        "loss": 0.25,
        "acc": 0.5,
        "step": 1200,
        "done": False,
        "lr": 1e-3,
        "opt": {"lr": 3e-4, "betas": [0.5, 0.9]},
        "hist": [1, 2.0, 4.0, {"ok": True}],
        "plain": {"s": "x", "n": None, "i": 3},
    }
    # Plain Python types, not NumPy's subclasses: what json and every reader handle.
    assert type(out["lr"]) is float and type(out["step"]) is int and type(out["done"]) is bool
    assert caught == []


def test_nan_and_inf_are_stored_as_null_with_one_warning_naming_their_keys():
    metadata = {
        "loss": float("nan"),
        "val": {"loss": torch.tensor(float("inf")), "acc": np.float32("nan")},
        "hist": [1.0, np.float64("-inf")],
        "fine": 0.5,
    }
    out, caught = validated(metadata)
    assert out == {
        "loss": None,
        "val": {"loss": None, "acc": None},
        "hist": [1.0, None],
        "fine": 0.5,
    }
    assert len(caught) == 1
    message = str(caught[0].message)
    for key in ("metadata['loss']", "metadata['val']['loss']", "metadata['val']['acc']"):
        assert key in message
    assert "metadata['hist'][1]" in message and "null" in message
    assert "fine" not in message


def test_a_tensor_of_several_values_is_refused_naming_its_key_and_shape():
    with pytest.raises(CheckpointMetadataError) as err:
        validate_metadata({"opt": {"lr": torch.tensor([1.0, 2.0, 3.0])}})
    message = str(err.value)
    assert "metadata['opt']['lr']" in message and "(3,)" in message
    assert ".tolist()" in message and ".item()" in message
    # Existing `except CheckpointConfigError` clauses keep catching it.
    assert isinstance(err.value, CheckpointConfigError)
    with pytest.raises(CheckpointMetadataError, match=r"metadata\['w'\]\[0\].*\(2, 2\)"):
        validate_metadata({"w": [np.zeros((2, 2))]})


@pytest.mark.parametrize(
    "value, key, reason",
    [
        ({"a": {"b": {1, 2}}}, "metadata['a']['b']", "(a set) is not JSON-serialisable"),
        ({"a": [object()]}, "metadata['a'][0]", "(a object) is not JSON-serialisable"),
        ({"t": np.datetime64("2024-01-01")}, "metadata['t']", "its .item() is a date"),
        ({"c": 1 + 2j}, "metadata['c']", "(a complex) is not JSON-serialisable"),
        ({"e": np.array([])}, "metadata['e']", "(0,)"),
        ({"k": {(1, 2): 3}}, "metadata['k']", "has the key (1, 2)"),
        ({"k": {float("nan"): 3}}, "metadata['k']", "has the key nan"),
    ],
)
def test_a_rejected_value_names_its_key_path_and_the_reason(value, key, reason):
    with pytest.raises(CheckpointMetadataError) as err:
        validate_metadata(value)
    assert key in str(err.value) and reason in str(err.value)


def test_keys_json_can_write_are_stored_as_json_writes_them():
    """As before: a number, bool or None key is stored as the string JSON writes for it."""
    out, _ = validated({"by_epoch": {1: 0.5, None: "x", 2.5: torch.tensor(2)}})
    assert out == {"by_epoch": {"1": 0.5, "null": "x", "2.5": 2}}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_json_native_metadata_is_stored_unchanged(metadata):
    out, caught = validated(metadata)
    assert out == metadata
    assert json.dumps(out, sort_keys=True) == json.dumps(metadata, sort_keys=True)
    assert caught == []


def test_a_save_stores_the_converted_values_and_a_refused_one_writes_nothing(
    store, memory, tmp_path
):
    src = tiny(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        saved = store.save(
            str(src),
            make_scope(),
            metadata={"epoch": np.int64(3), "loss": torch.tensor(0.5), "val": float("nan")},
        )
    assert store.read(saved.key).metadata == {"epoch": 3, "loss": 0.5, "val": None}
    warned = [w for w in caught if issubclass(w.category, CheckpointMetadataWarning)]
    assert len(warned) == 1 and "metadata['val']" in str(warned[0].message)

    stored = memory.list()
    with pytest.raises(CheckpointMetadataError, match=r"metadata\['w'\]"):
        store.save(str(src), make_scope(), metadata={"w": torch.ones(3)})
    assert memory.list() == stored  # refused before any byte was written
