"""Fixtures for the core unit tests: memory/local stores with small chunks, scopes, trees."""

from __future__ import annotations

# Import Metaflow before the package: metaflow's own import loads our decorator module, which
# imports core/ and errors.py; importing errors.py first would re-enter it half-initialised.
import metaflow  # noqa: F401, I001
import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage

from .helpers import options


@pytest.fixture
def memory():
    """A fresh in-memory storage backend."""
    return MemoryStorage()


@pytest.fixture
def store(memory):
    """A CheckpointStore on memory storage with 64 KiB chunks."""
    return CheckpointStore(memory, options())


@pytest.fixture(params=["memory", "local"])
def any_store(request, tmp_path):
    """A CheckpointStore on memory storage, then on local storage under tmp_path."""
    if request.param == "memory":
        storage = MemoryStorage()
    else:
        storage = LocalStorage(str(tmp_path / "store"))
    return CheckpointStore(storage, options())
