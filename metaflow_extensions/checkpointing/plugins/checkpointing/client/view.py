"""What a client outside any task may see when it resolves a reference (a
:class:`..common.resolver.View`): the stores runs recorded and the runs of the current Metaflow
namespace, found with Metaflow's client (:mod:`.locate`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ..common import local_tier
from ..common.refspec import Target
from ..core.manifest import Manifest, ManifestHeader
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
        """A task's (or target's) checkpoints, with those only this machine's local tiers hold
        (a task's latest and ``TASK@<id>`` choose among what ``list()`` shows here)."""
        return self._client._headers(target.pathspec, tiers=True)

    def read(
        self, store: CheckpointStore, key: str, status: Optional[str] = None
    ) -> tuple[CheckpointStore, Manifest]:
        """``key``'s store and manifest: ``store``'s, else this machine's local tier's (a
        checkpoint of ``upload="end"`` not uploaded); elsewhere the error says where it is
        (``status``: what the reference said)."""
        return local_tier.read(store, key, status)

    def parts(self, target: Target) -> list[tuple[CheckpointStore, list[ManifestHeader]]]:
        """Each readable store's checkpoints under ``target``, newest first: exactly the
        stores ``Checkpoint().list(target)`` merges, and this machine's local tiers (each a
        part of its own), so an alias on a flow, run or step picks among what ``list()``
        shows here; an unreadable store raises (the pick could be wrong)."""
        parts, _ = self._client._parts(
            target.pathspec, None, None, None, None, None, None, False, strict=True, tiers="apart"
        )
        return [(store, headers) for store, headers, _ in parts]
