"""Versions of a named checkpoint sort in the order they were published, whatever the clocks of
the publishing machines say (behind or ahead), and so does the promotion log.

Each publication is made by a fresh ``CheckpointStore`` (what a new process has: nothing in
memory) whose wall clock is shifted: the package's time source (``now_ms``, in every module that
holds it) is replaced by a clock the test sets.  Stores are real local directories.  Every
writer of a named version (``Checkpoint().save``, ``metaflow checkpoint upload``,
``current.model.save``, ``@checkpoint(models=["x=./path"])``, Hub snapshots) goes through
``CheckpointStore.save`` with a library scope, in one of the three forms drawn here; the same
property with real processes and flows is in ``tests/integration/test_named_clock.py``.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core import (
    commit,
    gang,
    manifest,
    promotions,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.promotions import (
    publisher_record,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import library_scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import write_tree

HOUR = 3600 * 1000
DAY = 24 * HOUR
T0 = 1_750_000_000_000  # a fixed wall-clock reading (2025-06-15)
ALICE = publisher_record("alice", "user:alice", "cli")
_dirs = itertools.count()

#: How the writers of named versions call the store: ``metaflow checkpoint upload`` checks for
#: identical content (``reuse_identical``; the only writer that reuses a version by content);
#: a Hub snapshot passes its own reuse check; ``Checkpoint().save``, ``current.model.save``
#: and ``models=["x=./path"]`` save plainly (every save its own version).
WRITERS = ("reuse_identical", "reuse_callback", "plain")


class ShiftedClock:
    """The package's time source: real time ``t`` as read on a machine ``skew`` ms off."""

    def __init__(self, mp: pytest.MonkeyPatch):
        self.ms = T0
        for module in (manifest, commit, gang):  # every module that holds ``now_ms``
            mp.setattr(module, "now_ms", lambda: self.ms)

    def at(self, t: int, skew: int) -> None:
        self.ms = t + skew


def publish(root, tmp, clock, t, skew, writer, content, name="resnet50"):
    """One process (a fresh store) publishes ``content`` at real time ``t`` on a clock ``skew``
    ms off; returns the committed (or reused) manifest."""
    clock.at(t, skew)
    store = CheckpointStore(LocalStorage(str(root)))
    src = write_tree(tmp / ("src-%d" % next(_dirs)), {"m.pt": content})
    kwargs = {"reuse_identical": True} if writer == "reuse_identical" else {}
    if writer == "reuse_callback":
        kwargs["reuse"] = lambda candidate: None  # as the Hub's "stored meanwhile?" check
    try:
        return store.save(
            str(src),
            library_scope(name),
            name=name,
            metadata={"content": content.decode()},
            publisher=ALICE,
            **kwargs,
        )
    finally:
        store.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    skews=st.lists(st.integers(-DAY, DAY), min_size=2, max_size=5),
    writers=st.lists(st.sampled_from(WRITERS), min_size=5, max_size=5),
)
def test_versions_sort_in_publication_order_whatever_the_publishers_clocks(
    tmp_path_factory, skews, writers
):
    tmp = tmp_path_factory.mktemp("named-clock")
    root = tmp / "store"
    with pytest.MonkeyPatch.context() as mp:
        clock = ShiftedClock(mp)
        published = [
            publish(root, tmp, clock, T0 + 1000 * i, skew, writer, b"v%d" % i)
            for i, (skew, writer) in enumerate(zip(skews, writers))
        ]
        dates = [m.created_ms for m in published]
        assert dates == sorted(dates) and len(set(dates)) == len(dates)
        store = CheckpointStore(LocalStorage(str(root)))
        listed = store.headers(library_scope("resnet50").step_prefix(), name="resnet50")
        assert [h.id for h in listed] == [m.id for m in reversed(published)]
        last = published[-1]
        for reader in (None, "user:alice"):
            for text in ("resnet50", "resnet50@latest"):
                assert store.named(text, reader).id == last.id
        # The newest version's content again, from a clock a day behind: it is reused.
        again = publish(
            root, tmp, clock, T0 + 10_000, -DAY, "reuse_identical", b"v%d" % (len(published) - 1)
        )
        assert again.id == last.id and again.stats["reused"]


@pytest.mark.parametrize(
    "first_skew, second_skew",
    [(0, -HOUR), (HOUR, 0), (0, HOUR), (-DAY, DAY), (DAY, -DAY)],
    ids=["second-behind", "first-ahead", "second-ahead", "first-far-behind", "first-far-ahead"],
)
def test_the_adversary_case_the_later_version_loads_by_name(tmp_path, first_skew, second_skew):
    """v1 then v2 from two processes whose clocks disagree: v2 is listed first and a bare
    name resolves to it (the finding: a clock an hour behind made v1 the newest)."""
    tmp = tmp_path
    with pytest.MonkeyPatch.context() as mp:
        clock = ShiftedClock(mp)
        v1 = publish(tmp / "store", tmp, clock, T0, first_skew, "reuse_identical", b"v1")
        v2 = publish(tmp / "store", tmp, clock, T0 + 1000, second_skew, "reuse_identical", b"v2")
        store = CheckpointStore(LocalStorage(str(tmp / "store")))
        listed = store.headers(library_scope("resnet50").step_prefix(), name="resnet50")
        assert [h.id for h in listed] == [v2.id, v1.id]
        assert store.named("resnet50", "user:alice").metadata == {"content": "v2"}
        assert v2.created_ms == max(T0 + 1000 + second_skew, v1.created_ms + 1)


@pytest.mark.parametrize("skews", [(HOUR, -HOUR), (0, -DAY), (-HOUR, HOUR)])
def test_the_promotion_log_keeps_the_order_of_events_whatever_the_clocks(tmp_path, skews):
    """Promoted from a machine whose clock is ahead, unpromoted from one whose clock is
    behind: the log (``checkpoint show``) tells promote, then unpromote."""
    with pytest.MonkeyPatch.context() as mp:
        clock = ShiftedClock(mp)
        v = publish(tmp_path / "store", tmp_path, clock, T0, 0, "reuse_identical", b"v")
        storage = LocalStorage(str(tmp_path / "store"))
        by = {"user": "alice", "namespace": "user:alice"}
        clock.at(T0 + 1000, skews[0])
        promotions.promote(storage, v, "user:bob", by)
        clock.at(T0 + 2000, skews[1])
        promotions.unpromote(storage, v, "user:bob", by)
        log = promotions.history(storage, "resnet50")
        assert [e["action"] for e in log] == ["promote", "unpromote"]
        assert log[0]["at_ms"] < log[1]["at_ms"]
        assert promotions.promoted_versions(storage, "resnet50", "user:bob") == frozenset()
