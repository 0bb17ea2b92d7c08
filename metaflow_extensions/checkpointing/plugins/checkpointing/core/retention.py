"""Retention: which checkpoints of a group to keep, and why.

Each rule is an object whose :meth:`Rule.keeps` looks at the whole group and returns the keys it
keeps with a reason for each: keep-last (:class:`KeepLast`), keep-best by a metric
(:class:`KeepBest`), one every N steps (:class:`KeepEverySteps`) or T minutes
(:class:`KeepEveryMinutes`), pinned (:class:`Pinned`), protected (:class:`Protected`) and the
newest ``latest=True`` checkpoint, what a retry loads (:class:`NewestLatest`).  A rule sees only
the group, never what other rules keep, so the plan is simply their union: a checkpoint kept by
several rules lists every reason, in rule order, and the rest is deleted.  A rule that cannot be
applied (no checkpoint has its metric) keeps the whole group and says so in a warning.

Expiry (``expire_after_days``, S3-lifecycle style) is not a rule but a limit over them: a
checkpoint older than that many days (its :attr:`Item.age_days`, by the store's clock) is deleted
whatever the rules keep, except the pinned, the protected and the newest ``latest=True`` one.

Planning is pure (no storage access), so a dry run and a real run decide the same way;
deleting is the caller's job (manifests only; their blobs go with garbage collection).

Long module: the rules, the policy listing them and the validation of its options are one
concept (a change to a rule touches all three), so they stay together past 400 lines.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import CheckpointConfigError

#: The reason given for every checkpoint when a policy has no rule at all.
NO_RULE = "no retention rule"
#: The reason a rule gives for every checkpoint of a group when it cannot be applied.
NOT_APPLICABLE = "rule not applicable"


@dataclass(frozen=True)
class Item:
    """What retention needs to know about one checkpoint."""

    key: str
    order: tuple  # oldest first when sorted
    created_ms: int
    metadata: dict
    latest: bool = True
    #: Days since the manifest was written, by the store's clock; None: unknown.
    age_days: Optional[float] = None


@dataclass(frozen=True)
class Kept:
    """What one rule keeps in one group: ``{key: reason}``, and a warning when the rule cannot
    be applied (it then keeps the whole group)."""

    reasons: dict[str, str]
    warning: Optional[str] = None


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


def newest_first(items: Sequence[Item]) -> list[Item]:
    """``items`` by ``order``, newest first (ties keep the order given)."""
    return sorted(items, key=lambda i: i.order, reverse=True)


def _first_of_each(pairs: Sequence[tuple[Item, float]], width: float, origin: float = 0.0):
    """``(item, value, bucket)`` for the first of ``pairs`` (oldest first) in each bucket
    ``floor((value - origin) / width)``."""
    seen: set = set()
    for item, value in pairs:
        bucket = math.floor((value - origin) / width)
        if bucket not in seen:
            seen.add(bucket)
            yield item, value, bucket


def _show(value: float) -> str:
    """A metric value as a user wrote it: ``3000`` rather than ``3000.0``."""
    return "%d" % value if value.is_integer() and abs(value) < 1e15 else "%g" % value


class Rule(abc.ABC):
    """One retention rule: decides alone, from the whole group, what it keeps and why."""

    @abc.abstractmethod
    def keeps(self, items: Sequence[Item], group: str = "") -> Kept:
        """The keys of ``items`` (one group, any order) this rule keeps, each with its reason.

        ``group`` names the group in warnings."""

    def _not_applicable(self, items: Sequence[Item], why: str, warning: str) -> Kept:
        reason = "%s (%s)" % (NOT_APPLICABLE, why)
        return Kept({i.key: reason for i in items}, warning)


@dataclass(frozen=True)
class KeepLast(Rule):
    """Keep the ``count`` newest checkpoints (by the order a retry uses)."""

    count: int

    def describe(self) -> str:
        return "keep last %d" % self.count

    def keeps(self, items: Sequence[Item], group: str = "") -> Kept:
        chosen = newest_first(items)[: self.count]
        return Kept(
            {i.key: "keep_last %d (#%d)" % (self.count, n + 1) for n, i in enumerate(chosen)}
        )


@dataclass(frozen=True)
class KeepBest(Rule):
    """Keep the ``count`` best checkpoints by the numeric metadata field ``metric``; among equal
    values the newest win."""

    metric: str
    mode: str = "min"
    count: int = 1

    def __str__(self) -> str:
        return "%s:%s:%d" % (self.metric, self.mode, self.count)

    def describe(self) -> str:
        return "keep best %s" % self

    def keeps(self, items: Sequence[Item], group: str = "") -> Kept:
        scored = [(i, numeric(i.metadata.get(self.metric))) for i in newest_first(items)]
        scored = [(i, v) for i, v in scored if v is not None]
        if not scored:
            return self._not_applicable(
                items,
                "best %s: no numeric %r" % (self, self.metric),
                "No checkpoint of %s has a numeric %r: keep-best %s cannot be applied, nothing "
                "deleted there." % (group or "this group", self.metric, self),
            )
        scored.sort(key=lambda p: p[1], reverse=self.mode == "max")  # stable: newest first
        return Kept(
            {
                i.key: "best %s:%s (#%d of %d)" % (self.metric, self.mode, n + 1, self.count)
                for n, (i, _) in enumerate(scored[: self.count])
            }
        )


@dataclass(frozen=True)
class KeepEverySteps(Rule):
    """Keep the first checkpoint at or after every multiple of ``every`` of the numeric
    metadata field ``field`` (``step``)."""

    every: int
    step_field: str = "step"

    def describe(self) -> str:
        return "keep one every %d %s" % (self.every, self.step_field)

    def keeps(self, items: Sequence[Item], group: str = "") -> Kept:
        oldest_first = newest_first(items)[::-1]
        name = self.step_field
        stepped = [(i, numeric(i.metadata.get(name))) for i in oldest_first]
        stepped = [(i, v) for i, v in stepped if v is not None]
        if not stepped:
            return self._not_applicable(
                items,
                "every %d %s: no numeric %r" % (self.every, name, name),
                "No checkpoint of %s has a numeric %r: keep-every-%d-steps cannot be applied, "
                "nothing deleted there." % (group or "this group", name, self.every),
            )
        unit = "steps" if name == "step" else name
        return Kept(
            {
                i.key: "every %d %s (%s %s)" % (self.every, unit, name, _show(v))
                for i, v, _ in _first_of_each(stepped, self.every)
            }
        )


@dataclass(frozen=True)
class KeepEveryMinutes(Rule):
    """Keep the first checkpoint of every ``minutes`` minutes, counted from the oldest of the
    group (by creation date)."""

    minutes: float

    def describe(self) -> str:
        return "keep one every %g minutes" % self.minutes

    def keeps(self, items: Sequence[Item], group: str = "") -> Kept:
        if not items:
            return Kept({})
        oldest_first = newest_first(items)[::-1]
        # Dates are whole milliseconds: a narrower bucket means one per millisecond (and a
        # width of a few subnormal floats would overflow the bucket number).
        width = max(self.minutes * 60_000, 1.0)
        dated = [(i, i.created_ms) for i in oldest_first]
        return Kept(
            {
                i.key: "every %g min (first of minutes %g-%g from the oldest)"
                % (self.minutes, b * width / 60_000, (b + 1) * width / 60_000)
                for i, _, b in _first_of_each(dated, width, origin=oldest_first[0].created_ms)
            }
        )


@dataclass(frozen=True)
class Pinned(Rule):
    """Keep the pinned checkpoints (``Checkpoint().pin``), always."""

    keys: frozenset = frozenset()

    def keeps(self, items: Sequence[Item], group: str = "") -> Kept:
        return Kept({i.key: "pinned" for i in items if i.key in self.keys})


@dataclass(frozen=True)
class Protected(Rule):
    """Keep the checkpoints named by the caller, e.g. the one a ``save()`` has just returned,
    or a paused task's resume point; ``reasons`` says why for some (default ``"protected"``)."""

    keys: frozenset = frozenset()
    reasons: Mapping[str, str] = field(default_factory=dict)

    def keeps(self, items: Sequence[Item], group: str = "") -> Kept:
        return Kept(
            {i.key: self.reasons.get(i.key, "protected") for i in items if i.key in self.keys}
        )


@dataclass(frozen=True)
class NewestLatest(Rule):
    """Keep the newest ``latest=True`` checkpoint (the greatest ``order``): what ``@retry`` and
    ``resume`` load when ``order`` is the one they use (:func:`.policies.sort_key`)."""

    def keeps(self, items: Sequence[Item], group: str = "") -> Kept:
        marked = [i for i in newest_first(items) if i.latest]
        return Kept(
            {marked[0].key: "newest latest=True (what a retry or resume loads)"} if marked else {}
        )


@dataclass(frozen=True)
class Retention:
    """A retention policy.  Every field is optional; an empty policy keeps everything."""

    keep_last: Optional[int] = None
    keep_best: tuple[KeepBest, ...] = ()
    keep_every_steps: Optional[int] = None
    step_field: str = "step"
    keep_every_minutes: Optional[float] = None
    expire_after_days: Optional[float] = None

    @property
    def empty(self) -> bool:
        return not self.rules() and self.expire_after_days is None

    def rules(self) -> list[Rule]:
        """The policy's rules as objects, in the order their reasons are listed."""
        out: list[Rule] = []
        if self.keep_last is not None:
            out.append(KeepLast(self.keep_last))
        out += self.keep_best
        if self.keep_every_steps is not None:
            out.append(KeepEverySteps(self.keep_every_steps, self.step_field))
        if self.keep_every_minutes is not None:
            out.append(KeepEveryMinutes(self.keep_every_minutes))
        return out

    def describe(self) -> str:
        parts = [r.describe() for r in self.rules()]
        if self.expire_after_days is not None:
            parts.append("expire after %s days" % _show(self.expire_after_days))
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
    expire_after_days: Any = None,
) -> Retention:
    """Validate retention options into a :class:`Retention`.

    Raises
    ------
    CheckpointConfigError
        A negative or non-integer count, a malformed ``keep_best``, contradictory rules
        (the same metric kept both by ``min`` and by ``max``), or an ``expire_after_days``
        that is not a positive finite number.
    """
    _check_expire_after_days(expire_after_days)
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
        expire_after_days=None if expire_after_days is None else float(expire_after_days),
    )


def _check_expire_after_days(value: Any) -> None:
    """Refuse anything but a positive finite number of days (float ok)."""
    if value is None:
        return
    days = numeric(value)
    if days is None or days <= 0:
        raise CheckpointConfigError(
            "expire_after_days=%r must be a positive number of days (e.g. 30, or 0.5 for 12 "
            "hours): not 0, negative, NaN, infinite, a bool or a string." % (value,)
        )


@dataclass
class Plan:
    """The decision for one group: what to keep (with why) and what to delete."""

    keep: dict[str, list[str]] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: The deleted checkpoints that expired (``expire_after_days``), each with why.
    expired: dict[str, str] = field(default_factory=dict)


def expiry(item: Item, days: Optional[float]) -> Optional[str]:
    """Why ``item`` has expired under ``expire_after_days=days``, or None if it has not (or
    its age is unknown)."""
    if days is None or item.age_days is None or not item.age_days > days:
        return None
    return "expired: %s days old (expire_after_days=%s)" % (
        _days(item.age_days),
        _show(days),
    )


def all_rules(
    policy: Retention,
    pinned: Collection[str] = frozenset(),
    protect: Collection[str] = frozenset(),
    protect_newest: bool = True,
) -> list[Rule]:
    """Every rule :func:`plan` applies: pinned, protected (``protect``: keys, or keys with
    the reason to give), the newest ``latest=True`` (if ``protect_newest``), then the
    policy's own rules."""
    why = dict(protect) if isinstance(protect, Mapping) else {}
    out: list[Rule] = [Pinned(frozenset(pinned)), Protected(frozenset(protect), why)]
    if protect_newest:
        out.append(NewestLatest())
    return out + policy.rules()


def plan(
    items: Sequence[Item],
    policy: Retention,
    pinned: frozenset = frozenset(),
    group: str = "",
    protect_newest: bool = True,
    protect: Collection[str] = frozenset(),  # or a Mapping key -> reason
) -> Plan:
    """Decide which of ``items`` (one group) to keep: the union of what every rule of
    :func:`all_rules` keeps.

    ``protect_newest`` keeps the newest ``latest=True`` checkpoint (:class:`NewestLatest`);
    ``protect`` names checkpoints kept whatever the rules say (:class:`Protected`; a mapping
    gives each one's reason, e.g. a paused task's resume point).  A rule that
    cannot be applied keeps the whole group and adds a warning.  Every item is either kept
    (with every reason, in rule order) or deleted (newest first).  An empty policy keeps
    everything (reason ``"no retention rule"``): it has no rule that could choose.

    With ``policy.expire_after_days``, an item older than that (:func:`expiry`) is deleted
    whatever the policy's rules keep, unless pinned, protected or the newest ``latest=True``;
    with no keep rule at all, the items not expired are kept (``"not expired (...)"``).  An
    item of unknown age never expires (one warning per group).
    """
    if policy.empty:
        return Plan(keep={i.key: [NO_RULE] for i in items})
    out = Plan()
    if not items:
        return out
    reasons: dict[str, list[str]] = {i.key: [] for i in items}
    guarded: set[str] = set()  # what even expiry never deletes
    for rule in all_rules(policy, pinned, protect, protect_newest):
        kept = rule.keeps(items, group)
        for key, why in kept.reasons.items():
            reasons[key].append(why)
        if isinstance(rule, (Pinned, Protected, NewestLatest)):
            guarded |= set(kept.reasons)
        if kept.warning:
            out.warnings.append(kept.warning)
    days = policy.expire_after_days
    if days is not None and any(i.age_days is None for i in items):
        out.warnings.append(
            "The store gives no age for some checkpoints of %s: expire_after_days=%s cannot "
            "apply to them, they are kept (or not) by the other rules only."
            % (group or "this group", _show(days))
        )
    only_expiry = not policy.rules()
    for item in newest_first(items):
        expired = expiry(item, days)
        if expired is not None and item.key not in guarded:
            out.delete.append(item.key)
            out.expired[item.key] = expired
        elif reasons[item.key]:
            out.keep[item.key] = reasons[item.key]
        elif only_expiry:
            out.keep[item.key] = [_not_expired(item, days)]
        else:
            out.delete.append(item.key)
    return out


def _days(age: float) -> str:
    """An age in days to one decimal, rounded down (an age just past a limit shows the limit)."""
    return _show(max(0.0, math.floor(age * 10) / 10))


def _not_expired(item: Item, days: Optional[float]) -> str:
    if item.age_days is None:
        return "age unknown (expire_after_days=%s)" % _show(days or 0.0)
    return "not expired: %s days old (expire_after_days=%s)" % (
        _days(item.age_days),
        _show(days or 0.0),
    )
