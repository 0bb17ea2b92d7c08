"""Blocking saves run in reused daemon threads (``task/save_threads.py``): one after another in
the same idle worker, concurrently when one is still busy (an abandoned save), and in a forked
child as well."""

from __future__ import annotations

import threading

from metaflow_extensions.checkpointing.plugins.checkpointing.task import save_threads

from .helpers import in_forked_child


def _run(job) -> threading.Thread:
    done, seen = threading.Event(), []

    def wrapped() -> None:
        seen.append(threading.current_thread())
        job()
        done.set()

    save_threads.start(wrapped)
    assert done.wait(10)
    return seen[0]


def test_saves_one_after_another_reuse_one_daemon_worker_named_busy_while_saving():
    names = []
    first = _run(lambda: names.append(threading.current_thread().name))
    second = _run(lambda: names.append(threading.current_thread().name))
    assert first is second and first.daemon
    assert names == [save_threads.BUSY, save_threads.BUSY]


def test_a_save_still_running_does_not_delay_the_next():
    """An abandoned save holds its worker: the next save gets another one and completes."""
    release, started = threading.Event(), threading.Event()

    def stuck() -> None:
        started.set()
        release.wait(30)

    save_threads.start(stuck)
    assert started.wait(10)
    try:
        other = _run(lambda: None)
        assert other.is_alive() and any(
            t.name == save_threads.BUSY for t in threading.enumerate() if t is not other
        )
    finally:
        release.set()


def test_a_forked_child_runs_saves_in_its_own_workers():
    _run(lambda: None)  # an idle worker exists in the parent, not in its child
    assert in_forked_child(lambda done: save_threads.start(done.set))
