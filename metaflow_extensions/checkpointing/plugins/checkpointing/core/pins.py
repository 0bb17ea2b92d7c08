"""Pins: checkpoints that retention never prunes and ``delete`` refuses.

A pin is an empty marker object beside its manifest (:func:`.layout.pin_key`): manifests stay
immutable, pinning and unpinning are single puts and deletes, and the pins of a step are one
prefix listing.
"""

from __future__ import annotations

from ..storage.base import Storage
from .layout import pin_key, pinned_manifest


def pin(storage: Storage, manifest_key: str) -> None:
    storage.put_bytes(pin_key(manifest_key), b"")


def unpin(storage: Storage, manifest_key: str) -> None:
    storage.delete(pin_key(manifest_key))


def is_pinned(storage: Storage, manifest_key: str) -> bool:
    return storage.exists(pin_key(manifest_key))


def pinned_under(storage: Storage, manifest_prefix: str) -> frozenset:
    """Manifest keys pinned under a manifest key prefix (e.g. a step prefix)."""
    return frozenset(pinned_manifest(o.key) for o in storage.list(pin_key(manifest_prefix)))
