"""``@model(load=...)``: every accepted form parses to ``[(name, path or None)]``; anything else
is a CheckpointConfigError naming the step and the accepted forms."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.task.model_decorator import (
    parse_load,
)

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}(@[0-9a-f]{4,8})?", fullmatch=True)
paths = st.one_of(st.none(), st.from_regex(r"/[a-z0-9/]{1,20}", fullmatch=True))


@given(st.lists(st.tuples(names, paths, st.booleans()), unique_by=lambda e: e[0], max_size=6))
def test_accepted_forms_parse_to_name_path_pairs(entries):
    spelled = [name if path is None and bare else (name, path) for name, path, bare in entries]
    assert parse_load(spelled, "train") == [(name, path) for name, path, _ in entries]


@given(names)
def test_one_string_or_one_pair_is_a_list_of_one(name):
    assert parse_load(name, "train") == [(name, None)]
    assert parse_load((name, "/m"), "train") == [(name, "/m")]
    assert parse_load([[name, "/m"]], "train") == [(name, "/m")]  # a pair given as JSON


@given(
    st.one_of(
        st.integers(),
        st.dictionaries(names, names, min_size=1),
        st.lists(st.one_of(st.integers(), st.just(""), st.tuples(names)), min_size=1),
        st.lists(st.tuples(names, st.integers()), min_size=1),
    )
)
def test_anything_else_names_the_step_and_the_accepted_forms(value):
    with pytest.raises(
        CheckpointConfigError, match=r"Step 'train': @model\(load=.*'artifact_name'"
    ):
        parse_load(value, "train")


def test_nothing_to_load_and_a_name_twice():
    assert parse_load(None, "train") == [] and parse_load([], "train") == []
    with pytest.raises(CheckpointConfigError, match="names 'm' twice"):
        parse_load(["m", ("m", "/p")], "train")
