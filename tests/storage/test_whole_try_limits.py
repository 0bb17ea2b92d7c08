"""What the Azure/GCS whole-try bound does not promise (docs/configuration.md,
``METAFLOW_CHECKPOINT_TIMEOUT_SECONDS``): on a link slower than MIN_RATE (64 KiB/s) in all, a
transfer of known size is cut by the bound on every try; a whole-object read of unknown size
(as manifests and small blobs are read) is bounded per socket read only, so it completes."""

from __future__ import annotations

import random
import time

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.errors import StorageError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.base import RetryPolicy
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.fsspec_limits import MIN_RATE

from .test_azure_gcs import _proxied

SIZE = 4 << 10
TIMEOUT = 0.3
RATE = 4 << 10  # far below MIN_RATE, yet a socket read never waits TIMEOUT


@pytest.mark.parametrize("kind", ["azure", "gs"])
def test_below_min_rate_a_range_is_cut_but_a_whole_read_of_unknown_size_is_not(kind, request):
    retry = RetryPolicy(attempts=2, max_seconds=30, backoff=0.01, max_backoff=0.05)
    direct, store, proxy = _proxied(kind, request, "rate", retry=retry, timeout=TIMEOUT, rate=RATE)
    try:
        data = random.Random(0).randbytes(SIZE)
        direct.put_bytes("k", data)
        with pytest.raises(StorageError, match="cut by the whole-try bound"):
            store.get_bytes("k", 0, SIZE)  # known size: each try cut, all tries made
        started = time.monotonic()
        assert store.get_bytes("k") == data  # unknown size: not cut
        # It took longer than the whole-try bound allows a read of its size.
        assert time.monotonic() - started > TIMEOUT + SIZE / MIN_RATE
    finally:
        proxy.close()
