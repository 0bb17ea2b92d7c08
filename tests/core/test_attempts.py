"""``attempt=`` and which attempts ``list(task=...)`` keeps (``common/attempts.py``): each
task's latest attempt, told by the running task or Metaflow when they can tell, else the
highest attempt among the task's checkpoints; a latest attempt that saved nothing keeps
nothing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.common.attempts import (
    ALL,
    latest_attempts,
    parse_attempt,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import (
    manifest_key,
    parse_key,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError

from .helpers import make_scope

#: (task id, attempt) of each listed checkpoint, in listing order.
saves = st.lists(st.tuples(st.sampled_from("123"), st.integers(0, 3)), max_size=12)
#: What Metaflow says is each task's latest attempt (None: it cannot tell).
told = st.dictionaries(st.sampled_from("123"), st.one_of(st.none(), st.integers(0, 4)))


def _headers(listed):
    return [
        parse_key(manifest_key(make_scope(task=t, attempt=a), 1000 + i, i, True, "%016x" % i, "c"))
        for i, (t, a) in enumerate(listed)
    ]


@given(saves, told)
def test_each_task_keeps_its_latest_attempt_in_listing_order(listed, known):
    headers = _headers(listed)
    pathspec = {t: make_scope(task=t).pathspec for t in "123"}
    by_pathspec = {pathspec[t]: a for t, a in known.items()}
    kept = latest_attempts(headers, lambda p: by_pathspec.get(p))

    def latest(t):
        said = known.get(t)
        return max(a for u, a in listed if u == t) if said is None else said

    assert [(h.scope.task, h.scope.attempt) for h in kept] == [
        (t, a) for t, a in listed if a == latest(t)
    ]
    # A task whose latest attempt (as told) saved nothing keeps nothing.
    for t, said in known.items():
        if said is not None and (t, said) not in listed:
            assert all(h.scope.task != t for h in kept)


@given(st.integers(min_value=0, max_value=10**6))
def test_an_attempt_number_parses_as_an_int_or_its_digits(n):
    assert parse_attempt(n) == parse_attempt(str(n)) == parse_attempt(" %d " % n) == n


@given(
    st.one_of(
        st.integers(max_value=-1),
        st.booleans(),
        st.floats(),
        st.text().filter(lambda t: t != ALL and not t.strip().isdigit()),
    )
)
def test_anything_else_than_a_number_all_or_none_is_refused_naming_the_values(value):
    with pytest.raises(CheckpointConfigError) as err:
        parse_attempt(value)
    assert "'all'" in err.value.message and "attempt number" in err.value.message


def test_all_and_none_pass_through():
    assert parse_attempt(ALL) == ALL and parse_attempt(None) is None
