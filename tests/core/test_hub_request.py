"""SnapshotRequest (frameworks/hub_remote.py): the identity of a Hub snapshot in the store.

The entry name must always be a valid checkpoint name, equal for requests of the same
snapshot set (pattern order does not matter) and different for another repo, repo type or
pattern set; bad arguments fail before any request, naming what was wrong.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import validate_name
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.frameworks.hub import parse_load
from metaflow_extensions.checkpointing.plugins.checkpointing.frameworks.hub_remote import (
    SnapshotRequest,
)

_part = st.text(st.sampled_from("abcXYZ019-_."), min_size=1, max_size=40)
repo_ids = st.builds(lambda a, b: "%s/%s" % (a, b), _part, _part) | st.text(min_size=1).map(
    lambda t: t.strip() or "x"
)
patterns = st.none() | st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4)


@given(repo_ids, st.sampled_from(["model", "dataset", "space"]), patterns, patterns)
def test_the_entry_name_is_always_a_valid_checkpoint_name(repo_id, repo_type, allow, ignore):
    req = SnapshotRequest.of(
        repo_id, repo_type=repo_type, allow_patterns=allow, ignore_patterns=ignore
    )
    assert validate_name(req.entry_name) == req.entry_name


@given(repo_ids, st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4, unique=True))
def test_pattern_order_and_revision_do_not_change_the_entry(repo_id, allow):
    a = SnapshotRequest.of(repo_id, allow_patterns=allow, revision="main")
    b = SnapshotRequest.of(repo_id, allow_patterns=list(reversed(allow)), revision="v1")
    assert a.entry_name == b.entry_name  # the revision is told apart by the resolved commit


@given(repo_ids, repo_ids, patterns, patterns)
def test_another_repo_or_pattern_set_is_another_entry(repo_a, repo_b, allow_a, allow_b):
    a = SnapshotRequest.of(repo_a, allow_patterns=allow_a)
    b = SnapshotRequest.of(repo_b, allow_patterns=allow_b)
    same = repo_a == repo_b and a.allow_patterns == b.allow_patterns
    assert (a.entry_name == b.entry_name) == same
    assert (
        SnapshotRequest.of(repo_a).entry_name
        != SnapshotRequest.of(repo_a, repo_type="dataset").entry_name
    )


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({}, "needs repo_id"),
        ({"repo_id": " padded "}, "needs repo_id"),
        ({"repo_id": "a/b", "local_dir": "/x"}, "local_dir=...) is not accepted"),
        ({"repo_id": "a/b", "cache_dir": "/x"}, "the checkpoint store is the cache"),
        ({"repo_id": "a/b", "repo_type": "modle"}, "repo_type='modle' is not one of"),
        ({"repo_id": "a/b", "allow_patterns": [1]}, "allow_patterns=[1] must be"),
        ({"repo_id": "a/b", "revision": 3}, "revision=3 must be"),
    ],
)
def test_bad_arguments_are_named(kwargs, says):
    with pytest.raises(CheckpointConfigError) as caught:
        SnapshotRequest.of(**kwargs)
    assert says in caught.value.message


def test_every_load_form_parses_and_others_are_refused_naming_the_forms():
    parsed = parse_load(
        [
            "a/b",
            ("c/d", "/tmp/x"),
            {"repo_id": "e/f", "revision": "v1"},
            ({"repo_id": "g/h", "allow_patterns": ["*.json"]}, None),
        ],
        "train",
    )
    assert [(s["repo_id"], p) for s, p in parsed] == [
        ("a/b", None),
        ("c/d", "/tmp/x"),
        ("e/f", None),
        ("g/h", None),
    ]
    assert parse_load("a/b", "train") == [({"repo_id": "a/b"}, None)]
    for bad in [[42], [("a/b",)], [{"revision": "v1"}], 3, ["a/b", "a/b"]]:
        with pytest.raises(CheckpointConfigError) as caught:
            parse_load(bad, "train")
        assert "Step 'train'" in caught.value.message
