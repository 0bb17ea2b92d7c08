"""What a client outside any task may see when it resolves a reference (a
:class:`..common.resolver.View`): the stores runs recorded and the runs of the current Metaflow
namespace, found with Metaflow's client (:mod:`.locate`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ..common.refspec import Target
from ..core.manifest import ManifestHeader
from ..core.position import Position
from ..core.scope import Scope
from ..core.store import CheckpointStore

if TYPE_CHECKING:
    from .base import ClientBase


class ClientView:
    """A ``Checkpoint`` client's view: any store (a reference's ``root``, else the client's
    root or the default one), names resolved in the current Metaflow namespace, targets listed
    as ``Checkpoint().list(target)`` lists them, and no task of its own."""

    task_scope: Optional[Scope] = None
    position: Optional[Position] = None  # no writer: '@last' is the newest of any writer

    def __init__(self, client: ClientBase):
        self._client = client

    def store(self, root: Optional[str], key: str) -> CheckpointStore:
        return self._client._store(root)

    def reader(self) -> Optional[str]:
        from ..task.models import reader_namespace

        return reader_namespace()

    def listing(self, target: Target) -> tuple[CheckpointStore, list[ManifestHeader]]:
        return self._client._headers(target.pathspec)

    def parts(self, target: Target) -> list[tuple[CheckpointStore, list[ManifestHeader]]]:
        """Each readable store's checkpoints under ``target``, newest first: exactly the
        stores ``Checkpoint().list(target)`` merges, so an alias on a flow, run or step picks
        among what ``list()`` shows; an unreadable store raises (the pick could be wrong)."""
        parts, _ = self._client._parts(
            target.pathspec, None, None, None, None, None, None, False, strict=True
        )
        return [(store, headers) for store, headers, _ in parts]
