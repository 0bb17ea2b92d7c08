"""Listings of many checkpoints build few objects and pause the cyclic GC meanwhile
(``core.bulk.paused_gc``, ``core.scope.shared_scope``); saves make its passes rarer without
stopping it (``core.bulk.relaxed_gc``); both leave the program's GC setting as they found it,
also when they fail."""

from __future__ import annotations

import gc
import threading

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.client.checkpoint import Checkpoint
from metaflow_extensions.checkpointing.plugins.checkpointing.core.bulk import (
    RELAXED_THRESHOLD,
    paused_gc,
    relaxed_gc,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import (
    manifest_key,
    parse_key,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import library_scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import make_scope, tiny


@pytest.fixture
def gc_restored():
    was, threshold = gc.isenabled(), gc.get_threshold()
    yield
    (gc.enable if was else gc.disable)()
    gc.set_threshold(*threshold)


def test_paused_gc_restores_what_it_found(gc_restored):
    gc.enable()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():  # nested: the outer block turns it back on
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(KeyError), paused_gc():
        raise KeyError("a listing failing half way")
    assert gc.isenabled()
    gc.disable()  # a program that runs without it keeps running without it
    with paused_gc():
        pass
    assert not gc.isenabled()


@pytest.mark.parametrize("enabled", [True, False])
def test_list_and_best_leave_the_gc_setting_alone(tmp_path, gc_restored, enabled):
    root = tmp_path / "store"
    client = Checkpoint(root=str(root))
    for loss in (0.5, 0.25, 0.75):
        client.save(str(tiny(tmp_path, b"%f" % loss)), name="model", metadata={"loss": loss})
    (gc.enable if enabled else gc.disable)()
    assert len(client.list()) == 3
    assert client.best(metric="loss").metadata["loss"] == 0.25
    assert gc.isenabled() is enabled
    with pytest.raises(CheckpointConfigError, match="no-such-metric"):
        client.best(metric="no-such-metric")
    assert gc.isenabled() is enabled


def test_keys_of_one_task_attempt_share_one_equal_scope():
    scope = make_scope(run="1", task="7", attempt=2)
    keys = [
        manifest_key(scope, 1_700_000_000_000 + i, i, True, "%016x" % i, "mfchckpt")
        for i in range(3)
    ]
    parsed = [parse_key(k) for k in keys]
    assert all(h.scope == scope for h in parsed)
    assert all(h.scope is parsed[0].scope for h in parsed)  # built once
    other = parse_key(
        manifest_key(make_scope(run="1", task="7", attempt=3), 1, 0, True, "0" * 16, "m")
    )
    assert other.scope.attempt == 3 and other.scope is not parsed[0].scope
    named = parse_key(manifest_key(library_scope("model"), 1, 0, True, "0" * 16, "model"))
    assert named.scope == library_scope("model")


def test_relaxed_gc_raises_the_threshold_and_puts_back_what_it_found(gc_restored):
    gc.set_threshold(700, 10, 10)
    with relaxed_gc():
        assert gc.get_threshold() == (RELAXED_THRESHOLD, 10, 10)
        with relaxed_gc():
            assert gc.get_threshold() == (RELAXED_THRESHOLD, 10, 10)
        assert gc.get_threshold() == (RELAXED_THRESHOLD, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)
    with pytest.raises(KeyError), relaxed_gc():
        raise KeyError("a save failing half way")
    assert gc.get_threshold() == (700, 10, 10)
    for program in ((0, 10, 10), (RELAXED_THRESHOLD * 2, 5, 5)):  # off, or already rarer
        gc.set_threshold(*program)
        with relaxed_gc():
            assert gc.get_threshold() == program
        assert gc.get_threshold() == program
    gc.set_threshold(700, 10, 10)
    with relaxed_gc():
        gc.set_threshold(5000, 10, 10)  # the program changes it meanwhile: its setting stands
    assert gc.get_threshold() == (5000, 10, 10)


def test_overlapping_relaxed_blocks_in_threads_restore_once_the_last_leaves(gc_restored):
    gc.set_threshold(700, 10, 10)
    entered, leave = threading.Event(), threading.Event()

    def other():
        with relaxed_gc():
            entered.set()
            leave.wait(10)

    t = threading.Thread(target=other)
    with relaxed_gc():
        t.start()
        assert entered.wait(10)
    assert gc.get_threshold() == (RELAXED_THRESHOLD, 10, 10)  # the other block still runs
    leave.set()
    t.join(10)
    assert gc.get_threshold() == (700, 10, 10)


def _collections(fn) -> int:
    """Passes of the youngest generation the collector made while ``fn()`` ran."""
    passes = []

    def count(phase, info):
        if phase == "start" and info["generation"] == 0:
            passes.append(1)

    gc.callbacks.append(count)
    try:
        fn()
    finally:
        gc.callbacks.remove(count)
    return len(passes)


def test_cyclic_garbage_is_still_collected_in_a_relaxed_block(gc_restored):
    """A background save may run for minutes beside the user's code: the collector keeps
    running, in larger batches."""
    gc.enable()
    gc.set_threshold(700, 10, 10)

    def cycles():
        for _ in range(3 * RELAXED_THRESHOLD):
            a: list = []
            a.append(a)

    def relaxed():
        with relaxed_gc():
            cycles()

    assert _collections(relaxed) >= 2
    assert _collections(cycles) > 100


def test_a_save_of_many_files_makes_few_gc_passes_and_restores_the_threshold(tmp_path, gc_restored):
    """16% of a save of 10,000 small files went to the collector's passes."""
    gc.enable()
    gc.set_threshold(700, 10, 10)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3000):
        (src / ("f%04d" % i)).write_bytes(b"%d" % i)
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")))
    passes = _collections(lambda: store.save(str(src), make_scope()))
    assert passes < 20, passes
    assert gc.get_threshold() == (700, 10, 10)
