"""Retention: which checkpoints of a group to keep (last N, best K by a metric, one every N
steps or T minutes, pinned) and which to delete.

Rules compose: a checkpoint kept by any rule stays.  Planning is pure (no storage access), so a
dry run and a real run decide the same way; deleting is the caller's job (manifests only;
their blobs go with garbage collection).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import CheckpointConfigError


@dataclass(frozen=True)
class KeepBest:
    """Keep the ``count`` best checkpoints by the numeric metadata field ``metric``."""

    metric: str
    mode: str = "min"
    count: int = 1

    def __str__(self) -> str:
        return "%s:%s:%d" % (self.metric, self.mode, self.count)


@dataclass(frozen=True)
class Retention:
    """A retention policy.  Every field is optional; an empty policy keeps everything."""

    keep_last: Optional[int] = None
    keep_best: tuple[KeepBest, ...] = ()
    keep_every_steps: Optional[int] = None
    step_field: str = "step"
    keep_every_minutes: Optional[float] = None

    @property
    def empty(self) -> bool:
        return (
            self.keep_last is None
            and not self.keep_best
            and self.keep_every_steps is None
            and self.keep_every_minutes is None
        )

    def describe(self) -> str:
        parts = []
        if self.keep_last is not None:
            parts.append("keep last %d" % self.keep_last)
        parts += ["keep best %s" % b for b in self.keep_best]
        if self.keep_every_steps is not None:
            parts.append("keep one every %d %s" % (self.keep_every_steps, self.step_field))
        if self.keep_every_minutes is not None:
            parts.append("keep one every %g minutes" % self.keep_every_minutes)
        return ", ".join(parts) or "keep everything"


def parse_keep_best(spec: Any) -> KeepBest:
    """``"val_loss"``, ``"val_loss:min"``, ``"accuracy:max:3"`` (metric:mode:count)."""
    if isinstance(spec, KeepBest):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise CheckpointConfigError(
            "keep_best=%r: use 'metric', 'metric:min|max' or 'metric:min|max:count', e.g. "
            "'val_loss:min:2'." % (spec,)
        )
    parts = spec.strip().split(":")
    if len(parts) > 3 or not parts[0]:
        raise CheckpointConfigError(
            "keep_best=%r: use 'metric:min|max:count', e.g. 'val_loss:min:2'." % spec
        )
    mode = parts[1] if len(parts) > 1 else "min"
    if mode not in ("min", "max"):
        raise CheckpointConfigError(
            "keep_best=%r: the mode must be 'min' (lower is better) or 'max', not %r."
            % (spec, mode)
        )
    try:
        count = int(parts[2]) if len(parts) > 2 else 1
    except ValueError:
        raise CheckpointConfigError(
            "keep_best=%r: the count %r is not an integer." % (spec, parts[2])
        ) from None
    if count < 1:
        raise CheckpointConfigError("keep_best=%r: the count must be at least 1." % spec)
    return KeepBest(parts[0], mode, count)


def build(
    keep_last: Any = None,
    keep_best: Any = None,
    keep_every_steps: Any = None,
    keep_every_minutes: Any = None,
    step_field: str = "step",
) -> Retention:
    """Validate retention options into a :class:`Retention`.

    Raises
    ------
    CheckpointConfigError
        A negative or non-integer count, a malformed ``keep_best``, or contradictory rules
        (the same metric kept both by ``min`` and by ``max``).
    """
    if keep_last is not None and (
        isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0
    ):
        raise CheckpointConfigError(
            "keep_last=%r must be a whole number of checkpoints (0 or more)." % (keep_last,)
        )
    if keep_best is None:
        best: tuple[KeepBest, ...] = ()
    elif isinstance(keep_best, (str, KeepBest)):
        best = (parse_keep_best(keep_best),)
    else:
        best = tuple(parse_keep_best(b) for b in keep_best)
    modes: dict[str, str] = {}
    for b in best:
        if modes.setdefault(b.metric, b.mode) != b.mode:
            raise CheckpointConfigError(
                "keep_best keeps %r both by 'min' and by 'max': contradictory; choose one."
                % b.metric
            )
    if keep_every_steps is not None and (
        isinstance(keep_every_steps, bool)
        or not isinstance(keep_every_steps, int)
        or keep_every_steps < 1
    ):
        raise CheckpointConfigError(
            "keep_every_steps=%r must be a positive whole number." % (keep_every_steps,)
        )
    if keep_every_minutes is not None and (
        isinstance(keep_every_minutes, bool)
        or not isinstance(keep_every_minutes, (int, float))
        or not keep_every_minutes > 0
        or math.isinf(keep_every_minutes)
    ):
        raise CheckpointConfigError(
            "keep_every_minutes=%r must be a positive number." % (keep_every_minutes,)
        )
    return Retention(
        keep_last=keep_last,
        keep_best=best,
        keep_every_steps=keep_every_steps,
        step_field=step_field,
        keep_every_minutes=float(keep_every_minutes) if keep_every_minutes else None,
    )


@dataclass(frozen=True)
class Item:
    """What retention needs to know about one checkpoint."""

    key: str
    order: tuple  # oldest first when sorted
    created_ms: int
    metadata: dict
    latest: bool = True


@dataclass
class Plan:
    """The decision for one group: what to keep (with why) and what to delete."""

    keep: dict[str, list[str]] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def numeric(value: Any) -> Optional[float]:
    """``value`` as a float if it is a finite real number (not a bool, NaN or infinite, and
    not an integer too large for a float), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond 1e308 (metadata read from a crafted manifest)
        return None
    return number if math.isfinite(number) else None


def plan(
    items: Sequence[Item],
    policy: Retention,
    pinned: frozenset = frozenset(),
    group: str = "",
    protect_newest: bool = True,
    protect: Collection[str] = frozenset(),
) -> Plan:
    """Decide which of ``items`` (one group) to keep.

    ``protect_newest`` keeps the newest ``latest=True`` checkpoint (the greatest ``order``)
    whatever the rules say: it is what ``@retry`` and ``resume`` would load when ``order`` is
    the one they use (:func:`.policies.sort_key`).  ``protect`` names checkpoints kept whatever
    the rules say, e.g. the one a ``save()`` has just returned.  A rule that cannot be applied
    (no checkpoint has its metric) is reported as a warning and nothing of the group is
    deleted.  Every item is either kept (with its reasons) or deleted.
    """
    out = Plan()
    if policy.empty:
        return Plan(keep={i.key: ["no retention rule"] for i in items})
    if not items:
        return out
    newest_first = sorted(items, key=lambda i: i.order, reverse=True)
    reasons: dict[str, list[str]] = {i.key: [] for i in items}

    def keep(item: Item, why: str) -> None:
        reasons[item.key].append(why)

    def keep_all(warning: str) -> Plan:
        return Plan(
            keep={i.key: reasons[i.key] + ["rule not applicable"] for i in newest_first},
            warnings=out.warnings + [warning],
        )

    for item in newest_first:
        if item.key in pinned:
            keep(item, "pinned")
        if item.key in protect:
            keep(item, "protected")
    if protect_newest:
        marked = [i for i in newest_first if i.latest]
        if marked:
            keep(marked[0], "newest")
    if policy.keep_last:
        for item in newest_first[: policy.keep_last]:
            keep(item, "last %d" % policy.keep_last)
    for rule in policy.keep_best:
        scored = [(i, numeric(i.metadata.get(rule.metric))) for i in newest_first]
        scored = [(i, v) for i, v in scored if v is not None]
        if not scored:
            return keep_all(
                "No checkpoint of %s has a numeric %r: keep-best %s cannot be applied, nothing "
                "deleted there." % (group or "this group", rule.metric, rule)
            )
        scored.sort(key=lambda p: p[1], reverse=rule.mode == "max")  # stable: newest first
        for item, _ in scored[: rule.count]:
            keep(item, "best %s" % rule)
    oldest_first = newest_first[::-1]
    if policy.keep_every_steps:
        stepped = [(i, numeric(i.metadata.get(policy.step_field))) for i in oldest_first]
        stepped = [(i, v) for i, v in stepped if v is not None]
        if not stepped:
            return keep_all(
                "No checkpoint of %s has a numeric %r: keep-every-%d-steps cannot be applied, "
                "nothing deleted there."
                % (group or "this group", policy.step_field, policy.keep_every_steps)
            )
        seen_buckets: set = set()
        for item, value in stepped:
            bucket = math.floor(value / policy.keep_every_steps)
            if bucket not in seen_buckets:
                seen_buckets.add(bucket)
                keep(item, "every %d %s" % (policy.keep_every_steps, policy.step_field))
    if policy.keep_every_minutes:
        # Dates are whole milliseconds: a narrower bucket means one per millisecond (and a
        # width of a few subnormal floats would overflow the bucket number).
        width = max(policy.keep_every_minutes * 60_000, 1.0)
        first = oldest_first[0].created_ms
        seen_buckets = set()
        for item in oldest_first:
            bucket = math.floor((item.created_ms - first) / width)
            if bucket not in seen_buckets:
                seen_buckets.add(bucket)
                keep(item, "every %g min" % policy.keep_every_minutes)
    for item in newest_first:
        if reasons[item.key]:
            out.keep[item.key] = reasons[item.key]
        else:
            out.delete.append(item.key)
    return out
