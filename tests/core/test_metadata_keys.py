"""Metadata keys: what the refusal message says is accepted is exactly what is accepted.

A dict key JSON can write (str, int, finite float, bool, None) is stored as the string
``json.dumps`` writes for it; any other key, and any value that is not JSON, is refused with a
message listing those accepted forms (adv41 #10: it said "dicts with string keys" while ``{1:
...}`` was stored as ``"1"``).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import (
    validate_metadata,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.metadata_values import ACCEPTED
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointMetadataError

json_keys = (
    st.text(max_size=6)
    | st.integers(-(10**6), 10**6)
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False, allow_infinity=False)
)
scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=6)
scalars |= st.floats(allow_nan=False, allow_infinity=False)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.tuples(children, children)
        | st.dictionaries(json_keys, children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), values, max_size=4))
def test_every_key_and_value_the_message_names_is_stored_as_json_writes_it(metadata):
    """Keys: str, int, float, bool, None; values: scalars, lists, tuples, dicts of those."""
    assert validate_metadata(metadata) == json.loads(json.dumps(metadata))


@pytest.mark.parametrize(
    "metadata, where",
    [
        ({"k": {(1, 2): 3}}, "has the key (1, 2)"),
        ({"k": {float("nan"): 3}}, "has the key nan"),
        ({"k": {b"x": 3}}, "has the key b'x'"),
        ({"b": b"x"}, "(a bytes) is not JSON-serialisable"),
        ({"s": {1, 2}}, "(a set) is not JSON-serialisable"),
    ],
)
def test_a_refusal_says_what_is_accepted_and_it_is(metadata, where):
    with pytest.raises(CheckpointMetadataError) as err:
        validate_metadata(metadata)
    message = str(err.value)
    assert where in message
    if "key" in where:
        assert "a dict key must be a str, int, finite float, bool or None" in message
    else:
        assert ACCEPTED in message
    # What the message says is accepted, is: each key kind it names is stored as JSON writes it.
    for key in ("s", 1, 2.5, True, None):
        assert validate_metadata({"d": {key: 0}}) == {"d": {json.dumps(key).strip('"'): 0}}
