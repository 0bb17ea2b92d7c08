"""A task's metrics log: one small object per save, kept when retention prunes the checkpoint.

Retention (``keep_last=3``) deletes manifests, so a listing of a long training task shows the
few checkpoints kept, not the curve that led to them.  Each save of a task's rank 0 therefore
also writes one entry, ``metrics/<task path>/<manifest file>`` (:func:`.layout.metrics_key`:
the manifest key with ``metrics`` for ``manifests``), holding the save's numeric metadata:

* one ``put`` of a few hundred bytes per save, written in place on a local store
  (:meth:`.Storage.put_new`, ADR 009), no read and no rewrite (a per-attempt object
  rewritten at each save would cost O(saves) bytes per save and a lost update between two
  processes of one task); every writer names its own keys, so concurrent writers never meet;
* outside ``manifests/``: listings, load policies, retention and deletes never see it; GC
  keeps a task's entries while the task has a checkpoint, and removes them (past its grace
  period) once every checkpoint of the task is deleted (:mod:`.gc`);
* best effort: :func:`record` never raises (a failure is returned as a message the task logs
  as a warning); :func:`read` skips an entry that does not parse;
* reading a log is one listing and one ``get`` per save, in parallel.

Standard library only (no Metaflow): the task writes entries, the card reads them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..errors import CheckpointException
from ..storage.base import Storage
from .layout import metrics_key, metrics_manifest
from .manifest import Manifest, parse_key

FORMAT = "metaflow-checkpointing-metrics/1"
#: Numeric fields kept per entry (the first ones, in the metadata's order).
MAX_FIELDS = 64

Number = Union[int, float]


@dataclass(frozen=True)
class MetricsEntry:
    """One save as the metrics log recorded it.

    ``metrics`` holds the save's top-level numeric metadata (``None`` for a value stored as
    ``null``: NaN or infinite); ``best`` the task's ``keep_best`` rules as ``(metric, mode)``
    when the save was made.
    """

    key: str
    id: str
    name: str
    attempt: int
    created_ms: int
    seq: int
    latest: bool
    metrics: dict = field(default_factory=dict)
    best: tuple = ()


def numeric_fields(metadata: Mapping[str, Any]) -> dict[str, Optional[Number]]:
    """The top-level fields of ``metadata`` a plot can use: finite ints and floats (not bools),
    and ``None`` (a NaN or infinity stored as ``null``), at most :data:`MAX_FIELDS`."""
    out: dict[str, Optional[Number]] = {}
    for key, value in metadata.items():
        if len(out) >= MAX_FIELDS:
            break
        if value is None:
            out[str(key)] = None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[str(key)] = value if math.isfinite(value) else None
    return out


def entry_of(manifest: Manifest, best: Iterable[tuple[str, str]] = ()) -> dict:
    """The JSON body of ``manifest``'s entry (``best``: the task's ``keep_best`` rules)."""
    return {
        "format": FORMAT,
        "metrics": numeric_fields(manifest.metadata or {}),
        "best": [[str(m), str(mode)] for m, mode in best],
    }


def record(
    storage: Storage, manifest: Manifest, best: Iterable[tuple[str, str]] = ()
) -> Optional[str]:
    """Append the committed ``manifest`` to its task's metrics log.

    Never raises for a storage failure: the save is committed whatever happens here.

    Returns
    -------
    str or None
        None when written (or when the checkpoint belongs to no task: a named checkpoint),
        else why it was not written.
    """
    if manifest.scope.is_library:
        return None
    try:
        body = json.dumps(entry_of(manifest, best)).encode("utf-8")
        # In place on a local store (half the cost of an atomic put): a crash mid-write
        # leaves an entry that does not parse, which read() skips, as a lost one.
        storage.put_new(metrics_key(manifest.key), body)
    except (CheckpointException, OSError, ValueError, TypeError) as exc:
        detail = exc.message if isinstance(exc, CheckpointException) else str(exc)
        return "could not add checkpoint %s to the task's metrics log: %s" % (manifest.key, detail)
    return None


def read(storage: Storage, task_prefix: str, workers: int = 16) -> list[MetricsEntry]:
    """Every entry of the task at ``task_prefix`` (``manifests/.../<task>/``), oldest first
    as a retry orders a task's saves (attempt, then the task's clock, then save sequence).

    An entry whose key or body does not parse, or that vanished meanwhile, is left out.

    Raises
    ------
    StorageError
        The log could not be listed.
    """
    keys = [o.key for o in storage.list(metrics_key(task_prefix))]
    if not keys:
        return []
    with ThreadPoolExecutor(max(1, min(workers, len(keys)))) as pool:
        found = list(pool.map(lambda k: _read_entry(storage, k), keys))
    entries = [e for e in found if e is not None]
    entries.sort(key=lambda e: (e.attempt, e.created_ms, e.seq, e.id))
    return entries


def _read_entry(storage: Storage, key: str) -> Optional[MetricsEntry]:
    try:
        header = parse_key(metrics_manifest(key))
        body = json.loads(storage.get_bytes(key))
    except (CheckpointException, ValueError, RecursionError):
        return None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        return None
    raw = body.get("metrics")
    metrics = numeric_fields(raw) if isinstance(raw, dict) else {}
    return MetricsEntry(
        key=header.key,
        id=header.id,
        name=header.name,
        attempt=header.scope.attempt,
        created_ms=header.created_ms,
        seq=header.seq,
        latest=header.latest,
        metrics=metrics,
        best=_best(body.get("best")),
    )


def _best(value: Any) -> tuple:
    if not isinstance(value, Sequence) or isinstance(value, str):
        return ()
    return tuple(
        (b[0], b[1])
        for b in value
        if isinstance(b, Sequence)
        and len(b) == 2
        and isinstance(b[0], str)
        and b[1] in ("min", "max")
    )
