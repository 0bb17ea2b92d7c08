"""The bounded runner every transfer uses (``core.transfer._run_bounded``): every job runs once,
no more than ``inflight`` at a time, a failure is raised, and a lone job (a small save or load:
one blob) runs in the calling thread, without a pool.  Its threads are kept between transfers
(``core/idle_threads.py``), never make a job wait for another, and are not inherited by a
forked child."""

from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core import transfer
from metaflow_extensions.checkpointing.plugins.checkpointing.core.idle_threads import IdleThreads
from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import _run_bounded

from .helpers import in_forked_child


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


# --------------------------------------------------------------- threads kept between transfers
def _within(fn, seconds: float = 20):
    """``fn()``'s result, run in a thread: a runner that never returns fails, not hangs."""
    out: list = []

    def run() -> None:
        try:
            out.append((True, fn()))
        except BaseException as exc:
            out.append((False, exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert out, "the transfer did not return within %s s" % seconds
    ok, value = out[0]
    if not ok:
        raise value
    return value


def _threads_of(n: int, workers: int = 4) -> set:
    seen, lock = set(), threading.Lock()

    def job() -> None:
        time.sleep(0.002)
        with lock:
            seen.add(threading.current_thread())

    _run_bounded((job for _ in range(n)), workers, workers)
    return seen


def test_a_transfer_reuses_the_threads_of_the_one_before():
    """A new pool per transfer cost a load of 4 blobs ~0.45 ms (thread starts and joins)."""
    first = _threads_of(8)
    deadline = time.monotonic() + 10  # they become idle just after the transfer returns
    while time.monotonic() < deadline and any(t.name != "mfckpt-idle" for t in first):
        time.sleep(0.005)
    second = _threads_of(8)
    assert second <= first and all(t.daemon for t in second)


def test_a_job_may_run_a_transfer_of_its_own():
    """Jobs that start jobs never wait for a thread (each gets one of its own): no deadlock."""
    ran = []

    def outer(i: int) -> None:
        _run_bounded((lambda j=j: ran.append((i, j)) for j in range(3)), 2, 2)

    _within(lambda: _run_bounded((lambda i=i: outer(i) for i in range(4)), 2, 2))
    assert sorted(ran) == [(i, j) for i in range(4) for j in range(3)]


def test_a_failing_job_list_is_raised_and_nothing_after_it_runs():
    ran = []

    def jobs():
        for i in range(3):
            yield lambda i=i: ran.append(i)
        raise JobFailed("the plan")

    with pytest.raises(JobFailed, match="the plan"):
        _run_bounded(jobs(), 4, 4)
    assert sorted(ran) == [0, 1, 2]


def test_an_interrupted_wait_starts_no_new_job_and_raises_once_the_running_ones_end():
    """Ctrl-C (or a signal handler raising) while the caller waits: the jobs running finish
    before the interrupt reaches the caller (its cleanup must not race them), none is started
    after it."""
    import signal

    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted()

    release, started, ended = threading.Event(), [], []

    def job(i: int) -> None:
        started.append(i)
        release.wait(20)
        time.sleep(0.05)
        ended.append(i)

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        threading.Timer(0.5, release.set).start()
        with pytest.raises(Interrupted):
            _run_bounded((lambda i=i: job(i) for i in range(10)), 2, 2)
        assert sorted(ended) == [0, 1]  # before the interrupt was raised
    finally:
        signal.signal(signal.SIGUSR1, old)
        release.set()
    time.sleep(0.2)
    assert sorted(started) == [0, 1]


def test_no_new_thread_to_be_had_still_runs_every_job(monkeypatch):
    """At a thread limit (``RuntimeError: can't start new thread``) the runners there are do
    every job."""
    real, calls = transfer._threads.start, []

    def start(job) -> None:
        calls.append(job)
        if len(calls) > 1:
            raise RuntimeError("can't start new thread")
        real(job)

    monkeypatch.setattr(transfer._threads, "start", start)
    ran = []
    _within(lambda: _run_bounded((lambda i=i: ran.append(i) for i in range(6)), 4, 4))
    assert sorted(ran) == list(range(6)) and len(calls) > 1


def test_a_forked_child_runs_transfers_in_its_own_threads():
    _threads_of(4)  # idle threads exist in the parent, not in its child

    def start(done: threading.Event) -> None:
        threading.Thread(target=lambda: (_threads_of(4), done.set()), daemon=True).start()

    assert in_forked_child(start)


def test_idle_threads_beyond_keep_end():
    pool = IdleThreads("t-busy", "t-idle-%d" % os.getpid(), keep=1)
    release, go = threading.Event(), threading.Barrier(4)

    def job() -> None:
        go.wait(10)
        release.wait(10)

    for _ in range(3):
        pool.start(job)
    go.wait(10)
    release.set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        idle = [t for t in threading.enumerate() if t.name == pool.idle]
        if len(idle) == 1:
            break
        time.sleep(0.01)
    assert len(idle) == 1


def test_no_thread_at_all_runs_every_job_in_the_caller(monkeypatch):
    """No idle thread and none to be had: the caller runs the jobs itself, one by one."""

    def start(job) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(transfer._threads, "start", start)
    ran = []
    _within(
        lambda: _run_bounded(
            (lambda i=i: ran.append(threading.get_ident()) for i in range(5)), 4, 4
        )
    )
    assert len(ran) == 5


def test_an_interrupt_while_a_thread_starts_still_runs_the_job(monkeypatch):
    """``Thread.start`` waits for the new thread: interrupted there, the thread exists and
    must find its job (it waited on an empty queue for good: 2,729 such threads after as many
    interrupts in the review)."""
    pool = IdleThreads("t2-busy", "t2-idle", keep=0)
    real = threading.Thread.start

    def start(self) -> None:
        real(self)
        raise KeyboardInterrupt  # as if Ctrl-C arrived while it waited for the thread

    monkeypatch.setattr(threading.Thread, "start", start)
    done = threading.Event()
    with pytest.raises(KeyboardInterrupt):
        pool.start(done.set)
    monkeypatch.undo()
    assert done.wait(10)
