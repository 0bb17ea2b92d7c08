"""Pins: checkpoints that retention never prunes and ``delete`` refuses.

A pin is an empty marker object ``pins/<manifest key without "manifests/">``: manifests stay
immutable, pinning and unpinning are single puts and deletes, and the pins of a step are one
prefix listing.
"""

from __future__ import annotations

from ..storage.base import Storage
from .scope import MANIFESTS

PINS = "pins"


def pin_key(manifest_key: str) -> str:
    return PINS + manifest_key[len(MANIFESTS) :]


def manifest_of(pin: str) -> str:
    return MANIFESTS + pin[len(PINS) :]


def pin(storage: Storage, manifest_key: str) -> None:
    storage.put_bytes(pin_key(manifest_key), b"")


def unpin(storage: Storage, manifest_key: str) -> None:
    storage.delete(pin_key(manifest_key))


def is_pinned(storage: Storage, manifest_key: str) -> bool:
    return storage.exists(pin_key(manifest_key))


def pinned_under(storage: Storage, manifest_prefix: str) -> frozenset:
    """Manifest keys pinned under a manifest key prefix (e.g. a step prefix)."""
    return frozenset(manifest_of(o.key) for o in storage.list(pin_key(manifest_prefix)))
