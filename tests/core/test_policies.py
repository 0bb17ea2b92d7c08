"""Load policies: which checkpoint a task starts from (fresh / eager / none, retry and resume)."""

from __future__ import annotations

import itertools

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core import commit
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError

from .helpers import make_scope, tiny


def _save(store, tmp_path, scope, **kwargs):
    return store.save(str(tiny(tmp_path)), scope, **kwargs)


def _picked(store, policy, scope, origin_runs=lambda: ()):
    h = store.resolve(policy, scope, origin_runs).header
    return None if h is None else h.key


def test_fresh_first_attempt_of_new_run_loads_nothing(store, tmp_path):
    """A brand-new run starts empty under 'fresh' even when older runs have checkpoints."""
    _save(store, tmp_path, make_scope(run="99"))
    _save(store, tmp_path, make_scope(task="8"))
    assert _picked(store, "fresh", make_scope()) is None


def test_fresh_retry_loads_latest_of_same_task(store, tmp_path):
    """On a retry, 'fresh' loads this task's newest latest=True checkpoint, not a latest=False."""
    first = _save(store, tmp_path, make_scope())
    wanted = _save(store, tmp_path, make_scope())
    _save(store, tmp_path, make_scope(), latest=False)
    _save(store, tmp_path, make_scope(task="8"))  # another task of the same step
    _save(store, tmp_path, make_scope(run="101"))  # same task id, other run
    assert _picked(store, "fresh", make_scope(attempt=1)) == wanted.key
    assert first.key != wanted.key


def test_fresh_retry_prefers_later_attempt(store, tmp_path):
    """A checkpoint from attempt 1 wins over attempt 0 on attempt 2."""
    _save(store, tmp_path, make_scope(attempt=0))
    a1 = _save(store, tmp_path, make_scope(attempt=1))
    assert _picked(store, "fresh", make_scope(attempt=2)) == a1.key


def test_fresh_retry_later_attempt_wins_despite_clock_skew(store, tmp_path, monkeypatch):
    """A retry on a machine whose clock is behind still supersedes the earlier attempt."""
    monkeypatch.setattr(commit, "now_ms", lambda: 2_000_000_000_000)
    _save(store, tmp_path, make_scope(attempt=0))
    monkeypatch.setattr(commit, "now_ms", lambda: 1_000_000_000_000)
    a1 = _save(store, tmp_path, make_scope(attempt=1))
    assert _picked(store, "fresh", make_scope(attempt=2)) == a1.key


def test_fresh_retry_newest_save_wins_across_processes_of_one_attempt(store, tmp_path, monkeypatch):
    """A later save by a subprocess of the same attempt (own save counter) is the one loaded."""
    monkeypatch.setattr(commit, "_SEQ", itertools.count(5))
    monkeypatch.setattr(commit, "now_ms", lambda: 1_700_000_000_000)
    _save(store, tmp_path, make_scope())  # main process, its 6th save
    monkeypatch.setattr(commit, "_SEQ", itertools.count(0))
    monkeypatch.setattr(commit, "now_ms", lambda: 1_700_000_060_000)
    later = _save(store, tmp_path, make_scope())  # a subprocess one minute later, its 1st save
    assert _picked(store, "fresh", make_scope(attempt=1)) == later.key


def test_fresh_retry_without_earlier_checkpoint_loads_nothing(store, tmp_path):
    """A retry whose earlier attempts saved nothing (or only latest=False) starts empty."""
    _save(store, tmp_path, make_scope(), latest=False)
    assert _picked(store, "fresh", make_scope(attempt=1)) is None


def test_resume_loads_origin_counterpart(store, tmp_path):
    """On resume, a re-executed task loads the same step and split from the origin run."""
    origin = _save(store, tmp_path, make_scope(run="10", task="5", foreach="3"))
    scope = make_scope(run="11", task="70", foreach="3")
    assert _picked(store, "fresh", scope, lambda: ["10"]) == origin.key


def test_resume_never_loads_another_splits_checkpoint(store, tmp_path):
    """Split 2 on resume does not load split 3's, nor 3.0's or 30's, checkpoint of the origin."""
    for fe in ("3", "3.0", "30", "23"):
        _save(store, tmp_path, make_scope(run="10", task="5" + fe, foreach=fe))
    assert _picked(store, "fresh", make_scope(run="11", foreach="2"), lambda: ["10"]) is None
    picked = _picked(store, "fresh", make_scope(run="11", foreach="3"), lambda: ["10"])
    assert picked is not None and "/3/10/" in picked


def test_resume_follows_chain_of_origin_runs(store, tmp_path):
    """An origin run without a checkpoint is skipped for the next older origin that has one."""
    old = _save(store, tmp_path, make_scope(run="10"))
    res = store.resolve("fresh", make_scope(run="12"), lambda: ["11", "10"])
    assert res.header.key == old.key
    assert "10" in res.reason


def test_resume_prefers_own_checkpoint_and_skips_origin_lookup(store, tmp_path):
    """A resumed task that already checkpointed (then retried) loads its own checkpoint."""
    _save(store, tmp_path, make_scope(run="10"))
    own = _save(store, tmp_path, make_scope(run="11"))

    def origins():
        raise AssertionError("origin runs must not be looked up when the task has its own")

    assert _picked(store, "fresh", make_scope(run="11", attempt=1), origins) == own.key


def test_eager_falls_back_to_same_step_and_split_of_other_runs(store, tmp_path):
    """'eager' on a new run loads the newest checkpoint of the same flow, step and split."""
    _save(store, tmp_path, make_scope(run="1", foreach="4"))
    newest = _save(store, tmp_path, make_scope(run="2", task="3", foreach="4"))
    _save(store, tmp_path, make_scope(run="3", foreach="4"), latest=False)
    assert _picked(store, "eager", make_scope(run="9", foreach="4")) == newest.key
    assert _picked(store, "fresh", make_scope(run="9", foreach="4")) is None


def test_eager_never_crosses_split_step_flow_or_namespace(store, tmp_path):
    """'eager' ignores other foreach splits, steps, flows and namespaces entirely."""
    target = make_scope(run="9", foreach="4")
    _save(store, tmp_path, make_scope(run="1", foreach="5"))
    _save(store, tmp_path, make_scope(run="1", foreach="4.0"))
    _save(store, tmp_path, make_scope(run="1", foreach="44"))
    _save(store, tmp_path, make_scope(run="1", foreach="4", step="train2"))
    _save(store, tmp_path, make_scope(run="1", foreach="4", step="trai"))
    _save(store, tmp_path, make_scope(run="1", foreach="4", flow="OtherFlow"))
    _save(store, tmp_path, make_scope(run="1", foreach="4", namespace="user:bob"))
    _save(store, tmp_path, make_scope(run="1", foreach="4", namespace="user:alice2"))
    _save(store, tmp_path, make_scope(run="1", foreach="4", namespace="production:x"))
    assert _picked(store, "eager", target) is None


def test_eager_prefers_own_retry_checkpoint_over_newer_runs(store, tmp_path):
    """On a retry, 'eager' loads the task's own checkpoint even if another run saved later."""
    own = _save(store, tmp_path, make_scope(run="9"))
    _save(store, tmp_path, make_scope(run="8"))
    assert _picked(store, "eager", make_scope(run="9", attempt=1)) == own.key


def test_eager_uses_origin_before_other_runs(store, tmp_path):
    """On resume, 'eager' loads the origin counterpart rather than a newer unrelated run."""
    origin = _save(store, tmp_path, make_scope(run="10"))
    _save(store, tmp_path, make_scope(run="5"))
    assert _picked(store, "eager", make_scope(run="11"), lambda: ["10"]) == origin.key


def test_none_loads_nothing(store, tmp_path):
    """'none' never loads, even on a retry with checkpoints or a resume with an origin."""
    _save(store, tmp_path, make_scope(run="10"))
    _save(store, tmp_path, make_scope(run="11"))
    assert _picked(store, "none", make_scope(run="11", attempt=1), lambda: ["10"]) is None


@pytest.mark.parametrize("policy", ["Fresh", "latest", "", None, "all"])
def test_unknown_policy_is_a_config_error(store, policy):
    """A misspelled load_policy is rejected with a clear configuration error."""
    with pytest.raises(CheckpointConfigError, match="load_policy"):
        store.resolve(policy, make_scope())
