"""What a :class:`.reference.CheckpointReference` reads: its manifest, files, one stream, a load.

A reference is a plain value that names its store (``root``) and manifest (``key``): reading it
opens that store from the settings (:func:`.settings.store_for_url`), reads the manifest and
hands it to the core routines.  It never builds a client, so it behaves the same in a task, in a
process the task started, and outside any task.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any, Optional

from ..core import loading
from ..core.manifest import Manifest
from ..core.store import CheckpointStore
from ..core.transfer import Progress
from ..errors import CheckpointConfigError


def store_of(reference: Mapping[str, Any]) -> CheckpointStore:
    """The store a reference lives in (its ``root``).

    Raises
    ------
    CheckpointConfigError
        The reference has no ``root``.
    """
    root = reference.get("root")
    if not isinstance(root, str) or not root:
        raise CheckpointConfigError(
            "Reference %s has no 'root' (the store it lives in): use a reference returned by "
            "save(), list() or get(), or pass it to Checkpoint(root=...).get()."
            % (reference.get("key"),)
        )
    from .settings import store_for_url

    return store_for_url(root)


def manifest_of(reference: Mapping[str, Any]) -> tuple[CheckpointStore, Manifest]:
    """The store and the full manifest of a reference.

    A checkpoint of ``@checkpoint(upload="end")`` not uploaded (``status`` ``"local"``,
    ``"uploading"``, ``"failed"``) is read from this machine's local tier when it holds it
    (:func:`.local_tier.read`: the store returned is then that tier).

    Raises
    ------
    CheckpointNotFound
        It was deleted (or never committed in that store); for one not uploaded and not on
        this machine, the message says so, where it is and what to do.
    ManifestError
        Its manifest does not parse (a damaged checkpoint).
    """
    from .local_tier import read

    return read(store_of(reference), str(reference.get("key")), reference.get("status"))


def files(reference: Mapping[str, Any]) -> list[dict]:
    """``[{"path": ..., "size": ...}, ...]`` of a reference's checkpoint."""
    _, manifest = manifest_of(reference)
    return [{"path": f.path, "size": f.size} for f in manifest.files]


def load(
    reference: Mapping[str, Any],
    path: str,
    *,
    force: bool = False,
    progress: Optional[Progress] = None,
) -> str:
    """Download a reference's checkpoint into ``path`` (see :func:`..core.loading.load`: a new
    directory appears once complete; an existing one must be empty unless ``force``)."""
    existing = loading.MERGE if force else loading.REFUSE
    loading.check_target(path, existing)
    store, manifest = manifest_of(reference)
    return loading.load(store, manifest, path, existing=existing, progress=progress)


def open_file(reference: Mapping[str, Any], file: str) -> IO[bytes]:
    """A verified binary stream over one file of a reference's checkpoint."""
    store, manifest = manifest_of(reference)
    return store.open(manifest, file)
