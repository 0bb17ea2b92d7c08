"""Property tests of retention plans (hypothesis).

For generated groups of checkpoints (created times that collide or run backwards, several
attempts and tasks, ``latest`` flags, metrics that are missing, non-numeric, NaN, infinite or
too large for a float, pins) and generated policies (``keep_last`` including 0, ``keep_best``,
``keep_every_steps``, ``keep_every_minutes``), a plan

* keeps or deletes every checkpoint, never both;
* never deletes a pinned checkpoint, an explicitly protected one, or the newest ``latest=True``
  one, i.e. what a retry (``resume``, ``eager``) would load, as the load policy itself finds it;
* is the same in a dry run and in a real run, and the real run deletes exactly its ``delete``.

The store-level properties write real manifests to a memory store (as a commit does, some with
metadata no ``save()`` would accept, as a foreign or damaged writer could leave them) and prune
with ``CheckpointStore.prune``, the function the runtime, the client and the CLI use.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core import policies, retention
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import Manifest
from metaflow_extensions.checkpointing.plugins.checkpointing.core.retention import Item, plan
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage

from .helpers import make_scope, options

T0 = 1_750_000_000_000

# Metadata values: numbers of every kind, and things that are not usable numbers.
metric_values = st.one_of(
    st.integers(-(10**6), 10**6),
    st.integers(min_value=10**308, max_value=10**400),  # too large for a float
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def metadata(draw) -> dict:
    out = {}
    for field in ("loss", "step"):
        if draw(st.booleans()):
            out[field] = draw(metric_values)
    return out


# Created times: a few distinct values (collisions), spread or packed, in any order.
created = st.one_of(
    st.integers(T0, T0 + 5),
    st.integers(T0 - 10 * 86_400_000, T0 + 10 * 86_400_000),
)


@st.composite
def policy(draw) -> retention.Retention:
    keep_best = draw(
        st.one_of(
            st.none(),
            st.builds(
                lambda metric, mode, n: "%s:%s:%d" % (metric, mode, n),
                st.sampled_from(["loss", "absent"]),
                st.sampled_from(["min", "max"]),
                st.integers(1, 4),
            ),
        )
    )
    return retention.build(
        keep_last=draw(st.one_of(st.none(), st.integers(0, 6))),
        keep_best=keep_best,
        keep_every_steps=draw(st.one_of(st.none(), st.integers(1, 10**6))),
        keep_every_minutes=draw(
            st.one_of(
                st.none(),
                st.floats(min_value=0, max_value=1e6, exclude_min=True, allow_infinity=False),
            )
        ),
    )


@st.composite
def checkpoints(draw, tasks: tuple[str, ...], names: tuple[str, ...]) -> list[dict]:
    n = draw(st.integers(1, 12))
    return [
        {
            "task": draw(st.sampled_from(tasks)),
            "run": draw(st.sampled_from(["100", "101"])) if len(tasks) > 1 else "100",
            "attempt": draw(st.integers(0, 2)),
            "created_ms": draw(created),
            "seq": draw(st.integers(0, 3)),
            "latest": draw(st.booleans()),
            "name": draw(st.sampled_from(names)),
            "metadata": draw(metadata()),
        }
        for _ in range(n)
    ]


def _commit(storage: MemoryStorage, i: int, spec: dict) -> str:
    """Write a checkpoint's manifest as a commit does (its files are irrelevant here)."""
    m = Manifest(
        id="%016x" % i,
        name=spec["name"],
        scope=make_scope(task=spec["task"], run=spec["run"], attempt=spec["attempt"]),
        latest=spec["latest"],
        created_ms=spec["created_ms"],
        seq=spec["seq"],
        metadata=spec["metadata"],
        files=[],
    )
    storage.put_bytes(m.key, m.dumps())
    return m.key


def _check_plan(group_headers, decision, pinned: set, protected: set, within_task: bool) -> None:
    keys = {h.key for h in group_headers}
    kept, deleted = set(decision.keep), set(decision.delete)
    assert kept | deleted == keys and not kept & deleted
    assert len(decision.delete) == len(deleted)
    assert pinned & keys <= kept
    assert protected & keys <= kept
    newest = policies.newest(group_headers, within_task=within_task)  # what is loaded
    if newest is not None:
        assert newest.key in kept


# ------------------------------------------------------------------------------ store level
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=checkpoints(tasks=("7",), names=("mfchckpt", "other")),
    rules=policy(),
    data=st.data(),
)
def test_in_task_retention_never_deletes_what_a_retry_loads(specs, rules, data):
    """The runtime's retention (one task, per series name, all attempts)."""
    storage = MemoryStorage()
    store = CheckpointStore(storage, options())
    keys = [_commit(storage, i, s) for i, s in enumerate(specs)]
    pinned = set(data.draw(st.lists(st.sampled_from(keys), max_size=3)))
    protected = set(data.draw(st.lists(st.sampled_from(keys), max_size=2)))
    for key in pinned:
        store.pin(key)
    scope = make_scope(attempt=3)  # a retry after every generated attempt
    retry_before = store.resolve("fresh", scope).header
    headers = store.headers(scope.task_prefix())

    def prune(dry_run: bool):
        return store.prune(
            headers,
            rules,
            group_of=lambda h: h.name,
            dry_run=dry_run,
            protect=protected,
            within_task=True,
        )

    dry = prune(True)
    for group, decision in dry:
        _check_plan([h for h in headers if h.name == group], decision, pinned, protected, True)
    real = prune(False)
    assert [(g, p.keep, p.delete, p.warnings) for g, p in real] == [
        (g, p.keep, p.delete, p.warnings) for g, p in dry
    ]
    remaining = {h.key for h in store.headers(scope.task_prefix())}
    assert remaining == {k for _, p in dry for k in p.keep}
    # The retry still loads exactly what it would have loaded before pruning.
    retry_after = store.resolve("fresh", scope).header
    assert (retry_after and retry_after.key) == (retry_before and retry_before.key)
    # And the runtime's own listing order agrees with it.
    if retry_after is not None:
        in_task = sorted(
            store.headers(scope.task_prefix()),
            key=policies.sort_key(within_task=True),
            reverse=True,
        )
        assert next(h for h in in_task if h.latest).key == retry_after.key


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=checkpoints(tasks=("7", "8"), names=("mfchckpt",)), rules=policy(), data=st.data())
def test_retention_across_runs_never_deletes_what_resume_or_eager_loads(specs, rules, data):
    """The client's and CLI's prune (per step, foreach split and name, across runs)."""
    storage = MemoryStorage()
    store = CheckpointStore(storage, options())
    keys = [_commit(storage, i, s) for i, s in enumerate(specs)]
    pinned = set(data.draw(st.lists(st.sampled_from(keys), max_size=3)))
    for key in pinned:
        store.pin(key)
    lineage = make_scope(run="200")
    eager_before = store.resolve("eager", lineage).header
    headers = store.headers(lineage.lineage_prefix())

    def prune(dry_run: bool):
        return store.prune(headers, rules, group_of=lambda h: h.name, dry_run=dry_run)

    dry = prune(True)
    for group, decision in dry:
        _check_plan([h for h in headers if h.name == group], decision, pinned, set(), False)
    real = prune(False)
    assert [(g, p.keep, p.delete) for g, p in real] == [(g, p.keep, p.delete) for g, p in dry]
    remaining = {h.key for h in store.headers(lineage.lineage_prefix())}
    assert remaining == {k for _, p in dry for k in p.keep}
    eager_after = store.resolve("eager", lineage).header
    assert (eager_after and eager_after.key) == (eager_before and eager_before.key)


# ------------------------------------------------------------------------------ plan level
@st.composite
def items(draw) -> list[Item]:
    n = draw(st.integers(0, 15))
    orders = draw(
        st.lists(
            st.tuples(st.integers(0, 5), st.integers(0, 3)), min_size=n, max_size=n, unique=True
        )
    )
    return [
        Item("k%02d" % i, order, draw(created), draw(metadata()), draw(st.booleans()))
        for i, order in enumerate(orders)
    ]


@settings(max_examples=400, deadline=None)
@given(its=items(), rules=policy(), data=st.data(), protect_newest=st.booleans())
def test_a_plan_keeps_or_deletes_everything_and_honours_every_keep_rule(
    its, rules, data, protect_newest
):
    keys = [i.key for i in its]
    pinned = frozenset(data.draw(st.lists(st.sampled_from(keys), max_size=3))) if keys else set()
    protected = frozenset(data.draw(st.lists(st.sampled_from(keys), max_size=2))) if keys else set()
    p = plan(its, rules, pinned, group="g", protect_newest=protect_newest, protect=protected)
    assert p == plan(list(reversed(its)), rules, pinned, "g", protect_newest, protected)
    assert set(p.keep) | set(p.delete) == set(keys) and not set(p.keep) & set(p.delete)
    assert pinned <= set(p.keep) and protected <= set(p.keep)
    marked = [i for i in its if i.latest]
    if protect_newest and marked:
        assert max(marked, key=lambda i: i.order).key in p.keep
    if p.warnings or rules.empty:  # no rule, or one that cannot be applied: nothing deleted
        assert p.delete == []
        return
    newest_first = sorted(its, key=lambda i: i.order, reverse=True)
    for item in newest_first[: rules.keep_last or 0]:
        assert item.key in p.keep
    for rule in rules.keep_best:
        values = [retention.numeric(i.metadata.get(rule.metric)) for i in its]
        scored = sorted(v for v in values if v is not None)
        if rule.mode == "max":
            scored.reverse()
        if not scored:
            continue
        cutoff = scored[: rule.count][-1]
        for item, value in zip(its, values):
            better = value is not None and (
                value < cutoff if rule.mode == "min" else value > cutoff
            )
            if better:
                assert item.key in p.keep  # strictly better than the k-th best: kept
    for item in its:  # only finite numbers count as metric values
        for v in item.metadata.values():
            n = retention.numeric(v)
            assert n is None or math.isfinite(n)


# ------------------------------------------------------------------------------ rules as objects
def _alone(rule: retention.Rule) -> retention.Retention:
    """A policy holding only ``rule`` (built through the same validation as any policy)."""
    if isinstance(rule, retention.KeepLast):
        return retention.build(keep_last=rule.count)
    if isinstance(rule, retention.KeepBest):
        return retention.build(keep_best=str(rule))
    if isinstance(rule, retention.KeepEverySteps):
        return retention.build(keep_every_steps=rule.every, step_field=rule.step_field)
    assert isinstance(rule, retention.KeepEveryMinutes)
    return retention.build(keep_every_minutes=rule.minutes)


@settings(max_examples=300, deadline=None)
@given(its=items(), rules=policy(), data=st.data(), protect_newest=st.booleans())
def test_a_plan_is_the_union_of_its_rules_each_deciding_alone(its, rules, data, protect_newest):
    """What a plan keeps is exactly the union of what its rules keep, each rule decided as in a
    policy of its own (whatever else the policy holds), every kept checkpoint lists at least
    one reason (every rule's, in rule order), and the rest is deleted, newest first."""
    keys = [i.key for i in its]
    pinned = frozenset(data.draw(st.lists(st.sampled_from(keys), max_size=3))) if keys else set()
    protected = frozenset(data.draw(st.lists(st.sampled_from(keys), max_size=2))) if keys else set()
    p = plan(its, rules, pinned, group="g", protect_newest=protect_newest, protect=protected)
    if rules.empty:
        assert p.keep == {k: [retention.NO_RULE] for k in keys} and p.delete == []
        return
    # Pinned, protected and the newest latest=True: rule objects the caller's arguments make.
    fixed = [retention.Pinned(pinned), retention.Protected(protected)]
    fixed += [retention.NewestLatest()] if protect_newest else []
    expected: dict[str, list[str]] = {}
    warnings: list[str] = []
    for rule in fixed:
        for key, why in rule.keeps(its, "g").reasons.items():
            expected.setdefault(key, []).append(why)
    # The policy's own rules, each planned alone (no pins, nothing protected, no newest).
    assert [type(r) for r in retention.all_rules(rules, pinned, protected, protect_newest)] == [
        type(r) for r in fixed + rules.rules()
    ]
    for rule in rules.rules():
        alone = plan(its, _alone(rule), group="g", protect_newest=False)
        assert alone.keep == {k: [why] for k, why in rule.keeps(its, "g").reasons.items()}
        for key, (why,) in alone.keep.items():
            expected.setdefault(key, []).append(why)
        warnings += alone.warnings
    if keys:
        assert p.keep == expected and p.warnings == warnings
    assert all(p.keep[k] for k in p.keep)  # every kept checkpoint says why
    ordered = [i.key for i in sorted(its, key=lambda i: i.order, reverse=True)]
    assert p.delete == [k for k in ordered if k not in expected]


def _items(metrics: list, every_ms: int = 20_000) -> list[Item]:
    """Items oldest first, one every ``every_ms``, with the metadata dicts given."""
    return [Item("k%d" % i, (i * every_ms, i), i * every_ms, m) for i, m in enumerate(metrics)]


LOSSES = [{"loss": x, "step": 1000 * i} for i, x in enumerate([5.0, 1.0, 4.0, 2.0, 3.0, 6.0])]


@pytest.mark.parametrize(
    "rule, kept",
    [
        (retention.KeepLast(2), {"k5": "keep_last 2 (#1)", "k4": "keep_last 2 (#2)"}),
        (
            retention.KeepBest("loss", "min", 2),
            {"k1": "best loss:min (#1 of 2)", "k3": "best loss:min (#2 of 2)"},
        ),
        (retention.KeepBest("loss", "max", 1), {"k5": "best loss:max (#1 of 1)"}),
        (
            retention.KeepEverySteps(2000),
            {
                "k0": "every 2000 steps (step 0)",
                "k2": "every 2000 steps (step 2000)",
                "k4": "every 2000 steps (step 4000)",
            },
        ),
        (
            retention.KeepEveryMinutes(1),
            {
                "k0": "every 1 min (first of minutes 0-1 from the oldest)",
                "k3": "every 1 min (first of minutes 1-2 from the oldest)",
            },
        ),
        (retention.Pinned(frozenset({"k2"})), {"k2": "pinned"}),
        (retention.Protected(frozenset({"k0"})), {"k0": "protected"}),
        (retention.NewestLatest(), {"k5": "newest latest=True (what a retry or resume loads)"}),
        (
            retention.KeepBest("val_loss"),
            {
                "k%d" % i: "rule not applicable (best val_loss:min:1: no numeric 'val_loss')"
                for i in range(6)
            },
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, retention.Rule) else "",
)
def test_each_rule_says_what_it_keeps_and_why(rule, kept):
    assert rule.keeps(_items(LOSSES), "g").reasons == kept
    assert rule.keeps(list(reversed(_items(LOSSES))), "g").reasons == kept  # any input order


def test_prune_returns_every_reason_of_a_checkpoint_kept_by_several_rules():
    """The store's prune (behind the client's ``prune`` and the CLI's ``--dry-run``) lists each
    kept checkpoint with the reason of every rule that keeps it."""
    storage = MemoryStorage()
    store = CheckpointStore(storage, options())
    specs = [
        {"task": "7", "run": "100", "attempt": 0, "created_ms": T0 + i * 20_000, "seq": 0}
        | {"latest": True, "name": "mfchckpt", "metadata": m}
        for i, m in enumerate(LOSSES)
    ]
    keys = [_commit(storage, i, s) for i, s in enumerate(specs)]
    store.pin(keys[0])
    rules = retention.build(keep_last=2, keep_best="loss:min:2", keep_every_steps=3000)
    [(group, p)] = store.prune(
        store.headers(make_scope().task_prefix()), rules, group_of=lambda h: h.name, dry_run=True
    )
    assert group == "mfchckpt" and p.warnings == []
    assert p.keep == {
        keys[5]: ["newest latest=True (what a retry or resume loads)", "keep_last 2 (#1)"],
        keys[4]: ["keep_last 2 (#2)"],
        keys[3]: ["best loss:min (#2 of 2)", "every 3000 steps (step 3000)"],
        keys[1]: ["best loss:min (#1 of 2)"],
        keys[0]: ["pinned", "every 3000 steps (step 0)"],
    }
    assert p.delete == [keys[2]]
