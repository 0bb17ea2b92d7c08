"""Listings of many checkpoints build few objects and pause the cyclic GC meanwhile
(``core.bulk.paused_gc``, ``core.scope.shared_scope``), and leave the program's GC setting as
they found it, also when they fail."""

from __future__ import annotations

import gc

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.client.checkpoint import Checkpoint
from metaflow_extensions.checkpointing.plugins.checkpointing.core.bulk import paused_gc
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import (
    manifest_key,
    parse_key,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import library_scope
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError

from .helpers import make_scope, tiny


@pytest.fixture
def gc_restored():
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


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
