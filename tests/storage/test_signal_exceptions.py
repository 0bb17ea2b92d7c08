"""A signal handler that raises in the middle of a storage call (Metaflow's ``@timeout`` raises
its ``TimeoutException`` from SIGALRM wherever the main thread is) gets its exception to the
caller unchanged: a ``StorageError`` in its place would be caught by best-effort callers (the
metrics log, retention) and the timeout lost (found attacking ADR 009)."""

from __future__ import annotations

import gc
import signal
import time

from metaflow.exception import MetaflowException

from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage


class Timeout(MetaflowException):
    """What ``@timeout``'s handler raises."""


def test_an_exception_a_signal_handler_raises_during_a_call_reaches_the_caller(tmp_path):
    storage = LocalStorage(str(tmp_path / "store"))
    for i in range(1500):
        storage.put_bytes("m/%04d" % i, b"x")

    def on_alarm(signum, frame):
        raise Timeout("Step train timed out")

    caught = []
    signal.signal(signal.SIGALRM, on_alarm)  # the conftest puts pytest-timeout's back
    # A handler that runs inside a finalizer (an earlier test's garbage collected meanwhile)
    # has its exception printed and dropped by Python: no collection while alarms fire.
    gc.collect()
    gc.disable()
    try:
        for n in range(20):  # a listing of 1,500 objects takes milliseconds: fired inside it
            end = time.monotonic() + 5
            try:
                signal.setitimer(signal.ITIMER_REAL, 0.001 + n * 0.0003)
                while time.monotonic() < end:
                    storage.list("m/")
                caught.append(None)  # no alarm in 5 s
            except Exception as exc:  # noqa: BLE001 - what reached the caller is the test
                caught.append(exc)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        gc.enable()
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    assert [type(e).__name__ for e in caught] == ["Timeout"] * 20, caught[:3]
