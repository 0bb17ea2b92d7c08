"""``expire_after_days``: checkpoints older than N days by the STORE's clock are pruned, whatever
the keep_* rules say, except pinned ones and the newest ``latest=True`` of each group.

Ages come from real stores: a local store whose manifest files are dated back with ``os.utime``
(what the filesystem then lists), and moto's S3 server whose objects' ``last_modified`` is set
back in the server's own state (what ListObjectsV2 then returns).  A writer whose clock is off
by 10 days is a save whose key carries that date (``created_ms``): it must not change anything.
"""

from __future__ import annotations

import datetime
import math
import os
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.common import settings as mf_settings
from metaflow_extensions.checkpointing.plugins.checkpointing.core import policies, store_clock
from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import CONTROL
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import Manifest
from metaflow_extensions.checkpointing.plugins.checkpointing.core.retention import (
    Item,
    build,
    plan,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import make_scope, options

DAY = 86400.0
DAY_MS = 86_400_000


def _save(store: CheckpointStore, tmp_path, n: int, created_ms=None, **kw):
    src = tmp_path / ("src%d" % n)
    src.mkdir(exist_ok=True)
    (src / "w.bin").write_bytes(b"weights %d" % n)
    return store.save(str(src), make_scope(), metadata={"i": n}, created_ms=created_ms, **kw)


def _local(tmp_path) -> CheckpointStore:
    return CheckpointStore(LocalStorage(str(tmp_path / "store")), options())


def _age_local(store: CheckpointStore, key: str, days: float) -> None:
    """Date the manifest file ``days`` back: what a store whose object is that old lists."""
    path = os.path.join(store.storage.root, key)
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def _prune(store, **kw):
    headers = store.headers(make_scope().task_prefix())
    dry_run = kw.pop("dry_run", False)
    ((_, p),) = store.prune(headers, build(**kw), group_of=lambda h: "g", dry_run=dry_run)
    return p


def test_old_checkpoints_expire_but_the_newest_latest_and_pinned_stay(tmp_path):
    store = _local(tmp_path)
    keys = [_save(store, tmp_path, i).key for i in range(5)]  # keys[4] is the newest
    for k in keys[:3]:
        _age_local(store, k, 40)
    _age_local(store, keys[4], 40)  # the newest latest=True is old too: a retry needs it
    store.pin(keys[1])
    dry = _prune(store, expire_after_days=30, dry_run=True)
    assert dry.expired == {
        keys[2]: "expired: 40 days old (expire_after_days=30)",
        keys[0]: "expired: 40 days old (expire_after_days=30)",
    }
    assert dry.keep[keys[1]] == ["pinned"]
    assert dry.keep[keys[4]] == ["newest latest=True (what a retry or resume loads)"]
    assert dry.keep[keys[3]] == ["not expired: 0 days old (expire_after_days=30)"]
    assert {h.key for h in store.headers(make_scope().task_prefix())} == set(keys)  # dry run
    real = _prune(store, expire_after_days=30)
    assert real.delete == dry.delete == [keys[2], keys[0]]
    left = {h.key for h in store.headers(make_scope().task_prefix())}
    assert left == {keys[1], keys[3], keys[4]}


def test_expiry_overrides_the_keep_rules(tmp_path):
    store = _local(tmp_path)
    keys = [_save(store, tmp_path, i).key for i in range(4)]
    _age_local(store, keys[0], 10)
    _age_local(store, keys[1], 2.5)
    # keep_last=10 would keep all four; the 10-day-old one expires anyway.
    p = _prune(store, keep_last=10, expire_after_days=3)
    assert p.delete == [keys[0]]
    assert p.expired == {keys[0]: "expired: 10 days old (expire_after_days=3)"}
    assert p.keep[keys[1]] == ["keep_last 10 (#3)"]
    # With keep rules, a young checkpoint they do not keep goes as before.
    p = _prune(store, keep_last=1, expire_after_days=3)
    assert p.delete == [keys[2], keys[1]] and p.expired == {}


def test_fractional_days(tmp_path):
    store = _local(tmp_path)
    keys = [_save(store, tmp_path, i).key for i in range(2)]
    _age_local(store, keys[0], 0.75)
    p = _prune(store, expire_after_days=0.5, dry_run=True)
    assert p.expired == {keys[0]: "expired: 0.7 days old (expire_after_days=0.5)"}


@pytest.mark.parametrize("skew_days", [10, -10])
def test_a_writer_clock_off_by_days_changes_nothing(tmp_path, skew_days):
    """The key's date is the writer's clock; the age is the store's: a writer 10 days ahead
    does not make a fresh checkpoint look young forever, one 10 days behind does not make a
    fresh one expire."""
    store = _local(tmp_path)
    skewed = int(time.time() * 1000) + skew_days * DAY_MS
    old = _save(store, tmp_path, 0, created_ms=skewed).key
    fresh = _save(store, tmp_path, 1, created_ms=skewed + 1000).key
    newest = _save(store, tmp_path, 2, created_ms=skewed + 2000).key
    _age_local(store, old, 8)
    p = _prune(store, expire_after_days=5, dry_run=True)
    assert set(p.expired) == {old}
    assert set(p.keep) == {fresh, newest}


@pytest.mark.s3
def test_s3_ages_by_the_servers_last_modified(s3_env, tmp_path):
    """On S3 the age is the listing's LastModified against the server's clock (the probe)."""
    from moto.s3.models import s3_backends

    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.s3 import S3Storage

    bucket = s3_env["new_bucket"]()
    store = CheckpointStore(
        S3Storage("s3://%s/ckpt" % bucket, config=mf_settings.s3_config()), options()
    )
    # A writer 10 days ahead: its key dates the checkpoint in the future.
    ahead = int(time.time() * 1000) + 10 * DAY_MS
    keys = [_save(store, tmp_path, i, created_ms=ahead + i).key for i in range(3)]
    # Age the oldest manifest in the server's own state: what a 40-day-old object lists as.
    (backend,) = [b["global"] for b in s3_backends.values() if bucket in b["global"].buckets]
    obj = backend.buckets[bucket].keys["ckpt/" + keys[0]]
    obj.last_modified = obj.last_modified - datetime.timedelta(days=40)
    p = _prune(store, expire_after_days=30)
    assert p.expired == {keys[0]: "expired: 40 days old (expire_after_days=30)"}
    left = {h.key for h in store.headers(make_scope().task_prefix())}
    assert left == set(keys[1:])
    # The clock probe leaves nothing behind.
    assert store.storage.list(CONTROL + "/") == []


def test_the_store_clock_is_the_stores_not_this_machines(tmp_path, monkeypatch):
    storage = LocalStorage(str(tmp_path / "store"))
    real = time.time()
    monkeypatch.setattr(time, "time", lambda: real + 10 * DAY)  # this process's clock only
    assert abs(store_clock.now(storage) - real) < 60
    assert storage.list() == []


def test_an_age_unknown_never_expires_and_says_so():
    items = [Item("a", (1,), 1, {}, True, None), Item("b", (0,), 0, {}, True, None)]
    p = plan(items, build(expire_after_days=1), group="g")
    assert p.delete == [] and p.expired == {}
    assert p.keep["b"] == ["age unknown (expire_after_days=1)"]
    assert "expire_after_days=1 cannot apply" in p.warnings[0]


@pytest.mark.parametrize(
    "bad", [0, -1, -0.5, math.nan, math.inf, -math.inf, True, False, "30", "", [30], 0.0]
)
def test_a_bad_expire_after_days_is_refused_naming_it(bad):
    with pytest.raises(CheckpointConfigError) as exc:
        build(expire_after_days=bad)
    assert "expire_after_days=%r must be a positive number of days" % (bad,) in exc.value.message


@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**400), max_value=10**400),
        st.booleans(),
        st.text(max_size=5),
        st.none(),
    )
)
def test_the_validator_accepts_exactly_positive_finite_numbers(value):
    def finite(v) -> bool:
        try:
            return math.isfinite(float(v))
        except OverflowError:  # an integer beyond what a float holds
            return False

    ok = value is None or (not isinstance(value, (bool, str)) and finite(value) and value > 0)
    if ok:
        policy = build(expire_after_days=value)
        assert policy.expire_after_days == (None if value is None else float(value))
        assert policy.empty is (value is None)
    else:
        with pytest.raises(CheckpointConfigError, match="expire_after_days="):
            build(expire_after_days=value)


def test_a_store_without_modification_times_refuses_expiry_and_deletes_nothing(tmp_path):
    """Some fsspec filesystems list no mtime. No backend of this repository is one, so this
    store is memory storage whose listing drops them (a fake of such a backend, not of our
    code): expiry cannot judge ages there and must say so rather than guess."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.base import ObjectInfo
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import (
        MemoryStorage,
    )

    class NoMtimes(MemoryStorage):
        def _list(self, prefix):
            return (ObjectInfo(o.key, o.size, None) for o in super()._list(prefix))

    store = CheckpointStore(NoMtimes(), options())
    keys = [_save(store, tmp_path, i).key for i in range(3)]
    with pytest.raises(CheckpointConfigError, match="does not report modification times"):
        _prune(store, expire_after_days=1)
    assert {h.key for h in store.headers(make_scope().task_prefix())} == set(keys)


# ------------------------------------------------------------------------ paused tasks
def test_a_paused_tasks_resume_point_survives_expiry_and_keep_rules_across_runs(tmp_path):
    """Across runs (one group per step and name), the newest latest=True of a task whose last
    attempt paused is kept by keep_last and expiry alike, with why; a failed task's expire."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.pruning import (
        resume_points,
    )

    store = _local(tmp_path)
    src = tmp_path / "src"
    src.mkdir()

    def save(n, latest=True, **scope):
        (src / "w.bin").write_bytes(b"weights %d" % n)
        ref = store.save(str(src), make_scope(**scope), metadata={"i": n}, latest=latest)
        _age_local(store, ref.key, 40)
        return ref.key

    paused = [save(0, run="100"), save(1, run="100", attempt=1), save(2, run="100", attempt=1)]
    save(3, latest=False, run="100", attempt=1)  # resume never loads it
    failed = [save(4, run="101"), save(5, run="101")]
    # Attempt 0 paused, but the task's last attempt (1) failed: no resume point.
    retried = [save(6, run="102"), save(7, run="102", attempt=1)]
    newest = save(8, run="103")
    task = {k: k.rsplit("/", 1)[0] + "/" for k in paused + failed + retried + [newest]}
    last_ended = {
        task[paused[0]]: "paused",
        task[failed[0]]: "failed",
        task[retried[0]]: "failed",
        task[newest]: "succeeded",
    }
    headers = store.headers("manifests/user%3Aalice/TrainFlow/train/")
    assert len(headers) == 9
    points = resume_points(headers, last_ended)
    why = "newest latest=True of paused task TrainFlow/100/train/7: its resume point"
    assert points == {paused[2]: why}
    for rules in (
        {"keep_last": 1},
        {"expire_after_days": 30},
        {"keep_last": 9, "expire_after_days": 30},
    ):
        ((_, p),) = store.prune(
            headers, build(**rules), group_of=lambda h: "g", dry_run=True, protect=points
        )
        assert p.keep[paused[2]][0] == why, rules
        assert set(p.keep) == {paused[2], newest}, rules
    ((_, p),) = store.prune(
        headers, build(expire_after_days=30), group_of=lambda h: "g", protect=points
    )
    left = {h.key for h in store.headers("manifests/user%3Aalice/TrainFlow/train/")}
    assert left == {paused[2], newest}


# ------------------------------------------------------------------------------ property
@st.composite
def _group(draw):
    n = draw(st.integers(1, 10))
    return [
        {
            "created_ms": draw(st.integers(T0 - 20 * DAY_MS, T0 + 20 * DAY_MS)),  # any clock
            "seq": i,
            "attempt": draw(st.integers(0, 2)),
            "latest": draw(st.booleans()),
            "loss": draw(st.one_of(st.none(), st.floats(0, 10))),
            "age": draw(st.floats(0, 60)),
        }
        for i in range(n)
    ]


T0 = 1_750_000_000_000


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=_group(),
    keep_last=st.one_of(st.none(), st.integers(0, 5)),
    keep_best=st.one_of(st.none(), st.just("loss:min:1")),
    days=st.floats(0.01, 50),
    data=st.data(),
)
def test_expiry_deletes_exactly_the_old_unguarded_and_changes_nothing_else(
    specs, keep_last, keep_best, days, data
):
    """On a real local store with manifests of random ages (by mtime) and random writer dates:
    an old checkpoint is deleted unless pinned or the newest latest=True (what a retry loads);
    every other decision is the one the keep rules alone make."""
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore(LocalStorage(tmp), options())
        keys = []
        for i, s in enumerate(specs):
            m = Manifest(
                id="%016x" % i,
                name="mfchckpt",
                scope=make_scope(attempt=s["attempt"]),
                latest=s["latest"],
                created_ms=s["created_ms"],
                seq=s["seq"],
                metadata={} if s["loss"] is None else {"loss": s["loss"]},
                files=[],
            )
            store.storage.put_bytes(m.key, m.dumps())
            _age_local(store, m.key, s["age"])
            keys.append(m.key)
        pinned = set(data.draw(st.lists(st.sampled_from(keys), max_size=2)))
        for k in pinned:
            store.pin(k)
        headers = store.headers(make_scope().task_prefix())
        ages = {k: s["age"] for k, s in zip(keys, specs)}
        rules = {"keep_last": keep_last, "keep_best": keep_best}

        def run(**extra):
            ((_, p),) = store.prune(
                headers,
                build(**rules, **extra),
                group_of=lambda h: "g",
                within_task=True,
                dry_run=True,
            )
            return p

        with_expiry = run(expire_after_days=days)
        kept, deleted = set(with_expiry.keep), set(with_expiry.delete)
        assert kept | deleted == set(keys) and not kept & deleted
        newest = policies.newest(headers, within_task=True)
        guarded = pinned | ({newest.key} if newest is not None else set())
        assert guarded <= kept
        # 1 s of slack: the age is measured a moment after the file was dated.
        old = {k for k in keys if ages[k] > days + 1 / DAY}
        young = {k for k in keys if ages[k] < days - 1 / DAY}
        assert old - guarded <= set(with_expiry.expired) <= deleted
        assert not young & set(with_expiry.expired)
        if keep_last is not None or keep_best is not None:
            alone = run()
            for k in young - guarded:
                assert (k in kept) == (k in alone.keep), k
        else:
            assert young <= kept
