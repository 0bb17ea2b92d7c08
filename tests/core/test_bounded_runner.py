"""The bounded runner every transfer uses (``core.transfer._run_bounded``): every job runs once,
no more than ``inflight`` at a time, a failure is raised, and a lone job (a small save or load:
one blob) runs in the calling thread, without a pool."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import _run_bounded


class JobFailed(Exception):
    pass


@settings(max_examples=60, deadline=None)
@given(
    fails=st.lists(st.booleans(), max_size=12),
    workers=st.integers(1, 4),
    inflight=st.integers(1, 4),
)
def test_every_job_runs_once_within_the_bound_and_a_failure_is_raised(fails, workers, inflight):
    ran: list[int] = []
    running = [0, 0]  # now, most at once
    lock = threading.Lock()

    def job(i: int) -> None:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        time.sleep(0.001)
        with lock:
            running[0] -= 1
            ran.append(i)
        if fails[i]:
            raise JobFailed(i)

    jobs = (lambda i=i: job(i) for i in range(len(fails)))
    if any(fails):
        with pytest.raises(JobFailed) as err:
            _run_bounded(jobs, workers, inflight)
        assert fails[err.value.args[0]]  # the error is a failed job's
        assert sorted(ran) == sorted(set(ran))  # none twice
    else:
        _run_bounded(jobs, workers, inflight)
        assert sorted(ran) == list(range(len(fails)))
    assert running[1] <= min(workers, inflight) or len(fails) <= 1


def test_a_lone_job_runs_in_the_calling_thread_and_its_error_is_raised():
    seen = []
    _run_bounded(iter([lambda: seen.append(threading.current_thread())]), 8, 8)
    assert seen == [threading.current_thread()]

    def boom() -> None:
        raise JobFailed("lone")

    with pytest.raises(JobFailed, match="lone"):
        _run_bounded(iter([boom]), 8, 8)
    _run_bounded(iter([]), 8, 8)  # nothing to do: no error


def test_two_jobs_run_on_the_pool():
    seen = []
    _run_bounded(iter([lambda: seen.append(threading.current_thread())] * 2), 2, 2)
    assert len(seen) == 2 and threading.current_thread() not in seen
