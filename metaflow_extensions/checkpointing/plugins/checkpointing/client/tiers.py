"""What a listing on the machine that ran a task adds from its local tier.

A task of ``@checkpoint(upload="end")`` commits its saves into a local tier
(:mod:`..core.tier`: a store on that machine's disk, same keys as the flow's store) and uploads
some of them when it ends.  The flow's store is the truth everywhere; on the machine that ran
the task a listing also shows what only its tier holds, with the status the tier recorded
(:func:`..core.upload_status.effective`: ``local``, ``uploading`` or ``failed``).  A key in both
is listed once, from the flow's store, ``uploaded``.

Which tiers: the one the task registered in its metadata (``checkpoint-tier``: ``{"host",
"path"}``; only when ``host`` is this machine and the path exists), and the tier of the store
under this machine's default base (``METAFLOW_CHECKPOINT_LOCAL_TIER``, else the system temp
directory: what a task without ``temp_dir_root=`` uses), so a flow, run or step listing sees
the tiers of its tasks without reading each task's metadata.  Elsewhere no tier exists and
every listed checkpoint is ``uploaded``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Callable, Optional

from ..common.local_tier import TierStore
from ..common.reference import CheckpointReference
from ..core.layout import task_prefix_of
from ..core.manifest import ManifestHeader
from ..core.store import CheckpointStore
from ..core.summary import endings
from ..core.upload_status import UploadRecords, effective
from ..errors import CheckpointException

__all__ = ["tier_parts", "with_tiers"]


def tier_parts(
    store: CheckpointStore,
    headers: list[ManifestHeader],
    tiers: Sequence[str],
    matching: Callable[[CheckpointStore], list[ManifestHeader]],
    order: Callable[[ManifestHeader], tuple],
) -> list[tuple[TierStore, list[ManifestHeader]]]:
    """Each of ``tiers`` with the checkpoints ``matching`` selects there that neither
    ``store`` (its ``headers``) nor an earlier tier holds, newest first by ``order`` (keys
    only: what an alias or a short id picks among besides the flow's store).  A tier that
    cannot be read adds nothing."""
    return [(t, extra) for t, extra, _ in _extras(store, headers, tiers, matching, order)]


def with_tiers(
    store: CheckpointStore,
    headers: list[ManifestHeader],
    refs: list[CheckpointReference],
    tiers: Sequence[str],
    matching: Callable[[CheckpointStore], list[ManifestHeader]],
    order: Callable[[ManifestHeader], tuple],
) -> tuple[list[ManifestHeader], list[CheckpointReference]]:
    """``headers``/``refs`` of ``store`` plus the checkpoints only ``tiers`` hold (those
    ``matching`` selects in each), each with its tier status, all ordered by ``order``
    (newest first).  A tier that cannot be read adds nothing (it is only this machine's
    cache: the flow's store is the truth)."""

    def read(tier: TierStore, extra: list[ManifestHeader]) -> tuple[dict, dict, dict]:
        records = UploadRecords(tier.storage)
        recorded = {}
        for prefix in {task_prefix_of(h.key) for h in extra}:
            recorded.update(records.of_prefix(prefix))
        summaries = tier.summaries(extra)
        ended = {**endings(tier.storage, extra), **_known(endings(store.storage, extra))}
        return recorded, summaries, ended

    pairs = list(zip(headers, refs))
    for _, extra, (recorded, summaries, ended) in _extras(
        store, headers, tiers, matching, order, read
    ):
        for h in extra:
            ref = CheckpointReference.from_summary(
                h,
                summaries[h.key],
                store.url,  # the key it will have in the flow's store once uploaded
                store.storage.full_url(h.key),
                effective(recorded.get(h.key)),
                ended.get(h.key),
            )
            pairs.append((h, ref))
    if len(pairs) > len(headers):
        pairs.sort(key=lambda p: order(p[0]), reverse=True)
    return [h for h, _ in pairs], [r for _, r in pairs]


def _extras(
    store: CheckpointStore,
    headers: list[ManifestHeader],
    tiers: Sequence[str],
    matching: Callable[[CheckpointStore], list[ManifestHeader]],
    order: Callable[[ManifestHeader], tuple],
    read: Optional[Callable[[TierStore, list[ManifestHeader]], Any]] = None,
) -> Iterator[tuple[TierStore, list[ManifestHeader], Any]]:
    """Each tier with what ``matching`` selects there that neither ``store`` nor an earlier
    tier holds (newest first), and what ``read`` makes of it; a tier that cannot be listed or
    ``read`` adds nothing (and its keys stay open to a later tier)."""
    seen = {h.key for h in headers}
    for path in dict.fromkeys(tiers):
        tier = TierStore(path, store)
        try:
            extra = [h for h in matching(tier) if h.key not in seen]
            if not extra:
                continue
            extra.sort(key=order, reverse=True)
            found = read(tier, extra) if read is not None else None
        except CheckpointException:
            continue
        seen.update(h.key for h in extra)
        yield tier, extra, found


def _known(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None}
