"""The local tier and the flow's store read as one store: what a task with an upload policy
(``task/upload_policy.py``) reads through for ``list``, ``load`` and the retry's load policy, a
checkpoint in both read once (docs/upload.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from ..core.manifest import Manifest, ManifestHeader
from ..core.policies import Resolution, sort_key
from ..core.position import Position
from ..core.scope import Scope
from ..core.store import CheckpointStore
from ..errors import (
    CheckpointException,
    CheckpointIncomplete,
    CheckpointIntegrityError,
    CheckpointNotFound,
    ManifestError,
)

if TYPE_CHECKING:
    from .upload_policy import UploadPolicy

__all__ = ["DAMAGED", "TieredStore", "with_tier"]


#: A tier copy that fails verification: a blob not matching its hash, data missing, or an
#: unreadable manifest (a bad disk, a truncation, a /tmp cleaner).
DAMAGED = (CheckpointIntegrityError, CheckpointIncomplete, ManifestError)


class TieredStore:
    """The tier and the flow's store read as one store (the task's ``list``/``load``).

    Headers are merged (a key in both listed once, as the flow's); a manifest and its files
    are read from the tier when it has them (local disk), else from the flow's store.  A tier
    copy that fails verification (:data:`DAMAGED`) is read from the flow's store instead when
    it has the key (one warning naming the tier's copy); else the error says the tier's copy is
    the bad one, and where.  Every other attribute is the flow's store's (``url``,
    ``storage``, names, pause requests).
    """

    def __init__(self, policy: UploadPolicy):
        self._policy = policy
        self._remote = policy.remote
        self._warned: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._remote, name)

    @property
    def url(self) -> str:
        return self._remote.url

    def _tier(self) -> Optional[CheckpointStore]:
        return self._policy.existing_tier()

    def headers(self, prefix: str, **filters: Any) -> list[ManifestHeader]:
        remote = self._remote.headers(prefix, **filters)
        ours = {h.key for h in remote}
        self._policy.in_remote.update(ours)
        tier = self._tier()
        local = tier.headers(prefix, **filters) if tier is not None else []
        return remote + [h for h in local if h.key not in ours]

    def statuses(self, headers: Sequence[ManifestHeader]) -> dict[str, str]:
        """Each checkpoint's status, by key (no I/O for those in the flow's store)."""
        return {h.key: self._policy.status_of(h.key) for h in headers}

    def summaries(self, headers: Sequence[ManifestHeader]) -> dict[str, dict]:
        tier = self._tier()
        local = [h for h in headers if h.key not in self._policy.in_remote]
        out = self._remote.summaries([h for h in headers if h.key in self._policy.in_remote])
        if local:
            out.update((tier or self._remote).summaries(local))
        return out

    def _holder(self, key: str) -> CheckpointStore:
        tier = self._tier()
        if tier is not None and tier.storage.exists(key):
            return tier
        return self._remote

    def _damaged(self, tier: CheckpointStore, key: str, exc: CheckpointException) -> None:
        """The tier's copy of ``key`` failed verification: return when the flow's store has
        the key (warned once per key: it is read from there), else raise naming the tier's
        copy as the bad one."""
        where = tier.storage.local_path(key) or self._policy.root
        try:
            there = self._remote.storage.exists(key)
        except CheckpointException:
            there = False
        if there:
            if key not in self._warned:
                self._warned.add(key)
                self._policy.log(
                    "[@checkpoint] Warning: the local tier's copy of checkpoint %s (%s, tier %s) "
                    "is damaged (%s); reading the flow's store's copy instead."
                    % (key, where, self._policy.root, exc.message)
                )
            return
        raise type(exc)(
            "The local tier's copy of checkpoint %s is damaged (%s) and the flow's store %s has "
            "no copy. The bad copy is %s in the local tier %s: delete it (or the tier) so this "
            "machine stops reading it." % (key, exc.message, self._remote.url, where, tier.url),
            key=key,
            path=where,
            url=tier.url,
        ) from exc

    def read(self, key: str) -> Manifest:
        tier = self._tier()
        if tier is not None:
            try:
                return tier.read(key)
            except CheckpointNotFound:
                pass
            except DAMAGED as exc:
                self._damaged(tier, key, exc)
        return self._remote.read(key)

    def read_many(self, keys: Sequence[str]) -> list[Manifest]:
        return [self.read(k) for k in keys]

    def load(self, manifest: Manifest, dest: str, progress: Any = None, fresh: bool = False) -> int:
        holder = self._holder(manifest.key)
        if holder is not self._remote:
            try:
                return holder.load(manifest, dest, progress, fresh)
            except DAMAGED as exc:
                self._damaged(holder, manifest.key, exc)
        return self._remote.load(manifest, dest, progress, fresh)

    def open(self, manifest: Manifest, path: str):
        holder = self._holder(manifest.key)
        if holder is not self._remote:
            try:
                return holder.open(manifest, path)
            except DAMAGED as exc:
                self._damaged(holder, manifest.key, exc)
        return self._remote.open(manifest, path)


def with_tier(
    resolution: Resolution,
    policy: UploadPolicy,
    load_policy: str,
    scope: Scope,
    position: Position,
) -> Resolution:
    """The load policy's pick among the flow's store (``resolution``) and this machine's tier:
    on a retry, this task's newest checkpoint of either (a checkpoint in both is one)."""
    tier = policy.existing_tier()
    if tier is None or scope.attempt == 0 or load_policy == "none":
        return resolution
    local = tier.resolve(load_policy, scope, position=position)
    ours = scope.task_prefix()
    found = [
        h
        for h in (resolution.header, local.header)
        if h is not None and h.scope.task_prefix() == ours
    ]
    seen = list(resolution.seen or []) + list(local.seen or [])
    if not found:
        return Resolution(resolution.header, resolution.reason, seen or resolution.seen)
    best = max(found, key=sort_key(True))
    if resolution.header is not None and best.key == resolution.header.key:
        return Resolution(resolution.header, resolution.reason, seen)
    return Resolution(best, "%s, from the local tier %s" % (local.reason, policy.root), seen)
