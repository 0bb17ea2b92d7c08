"""SIGTERM and Ctrl+C in a ``@checkpoint`` task (what Kubernetes, Batch and spot reclaims send).

On the first signal: run the ``on_interrupt`` callbacks, save the checkpoint directory if
``@checkpoint(save_on_interrupt=True)``, wait for pending background saves, then raise
:class:`CheckpointInterrupted` so the attempt fails and ``@retry`` (or ``resume``) continues
from the committed checkpoint.  A signal that arrives during a blocking save is handled once
that save has committed.  Further signals while this runs are ignored.
"""

from __future__ import annotations

import signal
from typing import Any

from ..errors import CheckpointException, CheckpointInterrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install(runtime: Any) -> dict:
    """Route SIGTERM/SIGINT to ``runtime``; returns the previous handlers (for :func:`restore`).

    Only the main thread may install handlers; elsewhere nothing is installed.
    """
    previous = {}
    try:
        for sig in SIGNALS:
            previous[sig] = signal.signal(sig, runtime._on_signal)
    except ValueError:  # not the main thread
        restore(previous)
        return {}
    return previous


def restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def handle(runtime: Any, signum: int) -> None:
    name = signal.Signals(signum).name
    if runtime._interrupted is not None and runtime._busy == 0 and runtime._handling:
        return  # a second signal while we are already saving: keep going
    runtime._interrupted = signum
    if runtime._busy:
        return  # inside a blocking save: handled right after it commits (runtime.save)
    runtime._handling = True
    log = runtime._log
    log("[@checkpoint] Received %s: committing checkpoints before stopping." % name)
    saved = None
    for callback in runtime._interrupt_callbacks:
        try:
            callback()
        except Exception as exc:  # noqa: BLE001 - a failing callback must not lose the save
            log("[@checkpoint] on_interrupt callback %r failed: %s" % (callback, exc))
    if runtime._save_on_interrupt:
        try:
            saved = runtime._final_save(
                {"reason": "interrupted", "signal": name}, why="on %s" % name
            )
        except CheckpointException as exc:
            log("[@checkpoint] The final save failed: %s" % exc.message)
    runtime.flush(raise_errors=False)
    raise CheckpointInterrupted(
        "Task %s received %s%s; pending saves were committed first."
        % (
            runtime.scope.pathspec,
            name,
            " and saved checkpoint %s" % saved.key if saved is not None else "",
        )
    )
