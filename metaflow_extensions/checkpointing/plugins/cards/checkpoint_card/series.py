"""What the card shows: every save of a task (its metrics log merged with the checkpoints still
listed), which metrics to plot, and which point of each is the best.

Imported on every ``import metaflow`` through the card package, while Metaflow's plugins are
still initialising: the standard library only at module level, our core modules inside
functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from ...checkpointing.core.metrics_log import MetricsEntry

#: Metrics plotted when the card's options name none (one small plot each).
MAX_DEFAULT_METRICS = 6
MODES = ("min", "max")


@dataclass
class Save:
    """One save of the task: ``ref`` is its listing entry while the checkpoint exists (None
    once retention or a delete removed it; the metrics log still has it)."""

    order: int  # 1 = oldest
    key: str
    name: str
    attempt: Optional[int]
    created_on: Any
    latest: bool
    values: dict  # numeric fields (None: stored as null)
    ref: Optional[Mapping[str, Any]] = None

    @property
    def kept(self) -> bool:
        return self.ref is not None


def saves_of(
    refs: Sequence[Mapping[str, Any]], log: Optional[Sequence[MetricsEntry]] = None
) -> list[Save]:
    """Every save, oldest first: the log's entries (in their order) plus listed checkpoints
    the log lacks (a task older than the log, another writer, a failed log write).

    Parameters
    ----------
    refs : sequence of CheckpointReference (or dict)
        The task's checkpoints, newest first, as ``Checkpoint().list()`` returns them.
    log : sequence of MetricsEntry, optional
        The task's metrics log, oldest first (``core/metrics_log.read``).
    """
    from ...checkpointing.core.manifest_format import iso_time

    by_key = {str(r.get("key")): r for r in refs}
    items: list[tuple[tuple, Save]] = []
    for e in log or ():
        ref = by_key.pop(e.key, None)
        save = Save(0, e.key, e.name, e.attempt, iso_time(e.created_ms), e.latest, e.metrics, ref)
        items.append(((e.attempt, e.created_ms, e.seq, e.id), save))
    position = {id(r): i for i, r in enumerate(reversed(refs))}
    for ref in (r for r in reversed(refs) if str(r.get("key")) in by_key):
        sort = _sort_key(ref) if log else None
        items.append((sort or (float("inf"), position[id(ref)]), _from_ref(ref)))
    items.sort(key=lambda item: item[0])
    saves = [save for _, save in items]
    for i, save in enumerate(saves, start=1):
        save.order = i
    return saves


def of_rank_0(refs: Sequence[Mapping[str, Any]]) -> tuple[list, int]:
    """``(refs, left_out)``: the checkpoints written by rank 0 (``writer`` ``{"node": 0,
    "local": 0}``, absent, or None for a sharded checkpoint, which every rank wrote) and how
    many other writers' checkpoints were left out.  Only rank 0 logs its saves, so only its
    checkpoints make one series; another rank's would be plotted between them."""
    kept = [r for r in refs if _is_rank_0(r.get("writer"))]
    return kept, len(refs) - len(kept)


def _is_rank_0(writer: Any) -> bool:
    if not isinstance(writer, Mapping):
        return True  # None: sharded (all ranks wrote it); absent: saved before writers
    return not writer.get("node") and not writer.get("local")


def _from_ref(ref: Mapping[str, Any]) -> Save:
    from ...checkpointing.core.metrics_log import numeric_fields

    attempt = ref.get("attempt")
    return Save(
        0,
        str(ref.get("key", "")),
        str(ref.get("name", "")),
        attempt if isinstance(attempt, int) else None,
        ref.get("created_on"),
        bool(ref.get("latest")),
        numeric_fields(metadata_of(ref)),
        ref,
    )


def _sort_key(ref: Mapping[str, Any]) -> Optional[tuple]:
    from ...checkpointing.core.manifest import parse_key
    from ...checkpointing.errors import CheckpointException

    try:
        h = parse_key(str(ref.get("key")))
    except (CheckpointException, ValueError):
        return None
    return (h.scope.attempt, h.created_ms, h.seq, h.id)


def metadata_of(ref: Mapping[str, Any]) -> Mapping[str, Any]:
    md = ref.get("metadata")
    return md if isinstance(md, Mapping) else {}


def finite(value: Any) -> Optional[float]:
    """``value`` as a finite float, or None (bools, strings, null, NaN are not plotted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if value - value == 0 else None  # NaN and infinities fail this


def pick_metrics(
    saves: Sequence[Save], exclude: Optional[str] = None, limit: Optional[int] = MAX_DEFAULT_METRICS
) -> list[str]:
    """The fields plotted when the options name none: those with a finite value in more than
    half of the saves, in the order they first appear, except ``exclude`` (the x axis) and
    counters (ints that never decrease within an attempt, like ``step`` or ``epoch``)
    unless only counters are left; at most ``limit`` (None: all)."""
    counts: dict[str, int] = {}
    for save in saves:
        for key, value in save.values.items():
            if key != exclude and finite(value) is not None:
                counts[key] = counts.get(key, 0) + 1
    mostly = [k for k, n in counts.items() if n * 2 > len(saves)]
    metrics = [k for k in mostly if not is_counter(saves, k)] or mostly
    return metrics if limit is None else metrics[:limit]


def is_counter(saves: Sequence[Save], field: str) -> bool:
    """Whether ``field`` is an ``int`` (not a float) in every save that has it and never
    decreases within an attempt (a retry may start again lower)."""
    last: dict[Any, float] = {}
    for save in saves:
        value = save.values.get(field)
        if value is None:
            continue
        if type(value) is not int:  # 3.0 is a measurement that happens to be whole
            return False
        if value < last.get(save.attempt, value):
            return False
        last[save.attempt] = value
    return bool(last)


def best_modes(
    metrics: Sequence[str], log: Optional[Sequence[MetricsEntry]], option: Any
) -> dict[str, tuple[str, str]]:
    """``{metric: (mode, why)}`` for the metrics whose best point is marked.

    The task's ``keep_best`` rules (recorded in its metrics log) decide first, then the card's
    ``best`` option (``"val_loss:min"`` or a list of them), then a name holding ``loss``
    (``min``).  Any other metric has no best point: higher is not always better.
    """
    modes: dict[str, tuple[str, str]] = {}
    rules = next((e.best for e in reversed(log or ()) if e.best), ())
    for metric, mode in rules:
        modes.setdefault(metric, (mode, "keep_best"))
    for metric, mode in parse_best_option(option):
        modes.setdefault(metric, (mode, "card option"))
    for metric in metrics:
        if "loss" in metric.lower():
            modes.setdefault(metric, ("min", "a loss"))
    return {m: modes[m] for m in metrics if m in modes}


def parse_best_option(option: Any) -> list[tuple[str, str]]:
    """``"metric:min|max"`` or a list of them; raises TypeError (Metaflow then renders its
    "incorrect card arguments" card) for anything else."""
    if option is None:
        return []
    specs = [option] if isinstance(option, str) else option
    out = []
    for spec in specs if isinstance(specs, (list, tuple)) else [specs]:
        metric, _, mode = str(spec).partition(":") if isinstance(spec, str) else ("", "", "")
        if not metric or mode not in MODES:
            raise TypeError(
                "@card(type='checkpoint') option best=%r: use 'metric:min' or 'metric:max' "
                "(or a list of them), e.g. 'val_loss:min'." % (option,)
            )
        out.append((metric, mode))
    return out


def best_save(points: Sequence[tuple[float, float, Save]], mode: str) -> Optional[Save]:
    """The save with the lowest (``min``) or highest (``max``) value; the newest among equals
    (as ``keep_best`` keeps them)."""
    best = None
    for _, y, save in points:
        if best is None or (y <= best[0] if mode == "min" else y >= best[0]):
            best = (y, save)
    return None if best is None else best[1]
