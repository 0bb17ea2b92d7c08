"""SIGTERM and Ctrl+C in a ``@checkpoint`` task (what Kubernetes, Batch and spot reclaims send).

On the first signal: run the ``on_interrupt`` callbacks, save the checkpoint directory if
``@checkpoint(save_on_interrupt=True)``, wait for pending background saves, then raise
:class:`CheckpointInterrupted` so the attempt fails and ``@retry`` (or ``resume``) continues
from the committed checkpoint.  A signal that arrives during a blocking save is handled once
that save has committed, or failed (then :class:`CheckpointInterrupted` is chained from the
save's error).  Further signals while this runs are ignored, and so are signals while the
task is ending (:meth:`Interrupts.ending`: its cleanup must finish).

:class:`Interrupts` owns all of that state (the signal received, whether it is being handled,
how many blocking saves are running, the callbacks); what a signal commits is asked of an
:class:`InterruptTarget` (the task's saves) through its public methods.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from ..errors import CheckpointException, CheckpointInterrupted

if TYPE_CHECKING:
    from ..common.reference import CheckpointReference
    from ..core.scope import Scope

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class InterruptTarget(Protocol):
    """What a signal commits before the task stops (implemented by ``saves.TaskSaves``)."""

    @property
    def scope(self) -> Scope: ...

    def final_save(self, metadata: dict, why: str) -> Optional[CheckpointReference]: ...

    def flush(self, raise_errors: bool = True) -> None: ...


class Interrupts:
    """The signal handling of one task process.

    Parameters
    ----------
    save_on_interrupt : bool
        Save the checkpoint directory as a final checkpoint when a signal arrives
        (``@checkpoint(save_on_interrupt=True)``).
    log : callable
        Where one-line status messages go.
    """

    def __init__(self, save_on_interrupt: bool = False, log: Callable[[str], None] = print):
        self.save_on_interrupt = bool(save_on_interrupt)
        self._log = log
        self._callbacks: list[Callable[[], None]] = []
        self._target: Optional[InterruptTarget] = None
        self._previous: dict = {}
        self._busy = 0  # blocking saves in progress (a signal then waits for them)
        self._received: Optional[int] = None  # the signal to handle, once not busy
        self._handling = False
        self._ending = False  # the task is ending: signals are absorbed until restore()

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` first when a signal arrives (``current.checkpoint.on_interrupt``)."""
        self._callbacks.append(callback)

    # ------------------------------------------------------------------ installation
    def install(self, target: InterruptTarget) -> bool:
        """Route SIGTERM/SIGINT to :meth:`handle`, committing through ``target``.

        Only the main thread may install handlers; elsewhere nothing is installed (returns
        False).  :meth:`restore` puts the previous handlers back.
        """
        self._target = target
        previous = {}
        try:
            for sig in SIGNALS:
                previous[sig] = signal.signal(sig, self._on_signal)
        except ValueError:  # not the main thread
            _restore(previous)
            return False
        self._previous = previous
        return True

    def restore(self) -> None:
        """Put back the handlers :meth:`install` replaced (at the end of the task)."""
        _restore(self._previous)
        self._previous = {}
        self._ending = False

    def ending(self) -> None:
        """The task is ending: until :meth:`restore`, a signal is logged and absorbed.

        The end of a task commits what is pending and removes its directories (often GBs in
        the temp dir): a late Ctrl+C or SIGTERM must not interrupt that and leak them.  The
        signal is not delivered afterwards either: by then the task's outcome is recorded and
        the process is about to exit.
        """
        self._ending = True

    @property
    def received(self) -> Optional[str]:
        """The name of the signal received and not handled yet (``"SIGTERM"``), or None: long
        waits inside a blocking save (a sharded save waiting for other ranks) poll it to stop
        early instead of deferring the signal until they time out."""
        return signal.Signals(self._received).name if self._received is not None else None

    # ------------------------------------------------------------------ blocking saves
    @contextlib.contextmanager
    def blocking(self, deliver: bool = True) -> Iterator[None]:
        """Mark a blocking save in progress: a signal arriving meanwhile waits until it ends.

        With ``deliver`` (the default), a signal that arrived during the block is handled as
        soon as the block completes, i.e. right after the save committed (this raises
        :class:`CheckpointInterrupted`).  ``deliver=False`` is for the final saves made while
        the task is already stopping (on a signal, or after the step failed).
        """
        self._busy += 1
        try:
            yield
        except BaseException as failure:
            # The save failed: the signal must still stop the task (user code that catches the
            # save's error would otherwise train on until SIGKILL), with the failure as cause.
            self._busy -= 1
            if self._pending(deliver):
                self._deliver(failure)
            raise
        self._busy -= 1
        if self._pending(deliver):
            self._deliver(None)

    def _pending(self, deliver: bool) -> bool:
        """A signal deferred by a blocking save is now due (no save left in progress)."""
        return deliver and self._received is not None and not self._busy and not self._handling

    def _deliver(self, failure: Optional[BaseException]) -> None:
        """Handle the deferred signal; after a failed save, chained from its error."""
        assert self._received is not None
        if failure is None:
            self.handle(self._received)
            return
        try:
            self.handle(self._received, failed_save=failure)
        except CheckpointInterrupted as interrupted:
            raise interrupted from failure

    # ------------------------------------------------------------------ handling
    def _on_signal(self, signum: int, frame: Any) -> None:
        self.handle(signum)

    def handle(self, signum: int, failed_save: Optional[BaseException] = None) -> None:
        """The signal handler's body: see the module docstring.

        Parameters
        ----------
        signum : int
            The signal received.
        failed_save : BaseException, optional
            The error of the blocking save the signal waited for, when that save failed (named
            in the :class:`CheckpointInterrupted` message).

        Raises
        ------
        CheckpointInterrupted
            Once pending saves are committed (unless the signal was deferred or ignored).
        """
        if self._ending:
            self._log(
                "[@checkpoint] Received %s while the task is ending: finishing first."
                % signal.Signals(signum).name
            )
            return
        if self._handling:
            return  # a further signal while we are already committing: keep going
        self._received = signum
        if self._busy or self._target is None:
            return  # inside a blocking save: handled right after it commits (see blocking())
        self._handling = True
        name = signal.Signals(signum).name
        log, target = self._log, self._target
        log("[@checkpoint] Received %s: committing checkpoints before stopping." % name)
        saved = None
        for callback in self._callbacks:
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - a failing callback must not lose the save
                log("[@checkpoint] on_interrupt callback %r failed: %s" % (callback, exc))
        if self.save_on_interrupt:
            try:
                saved = target.final_save(
                    {"reason": "interrupted", "signal": name}, why="on %s" % name
                )
            except CheckpointException as exc:
                log("[@checkpoint] The final save failed: %s" % exc.message)
        target.flush(raise_errors=False)
        raise CheckpointInterrupted(
            "Task %s received %s%s; pending saves were committed first%s."
            % (
                target.scope.pathspec,
                name,
                " and saved checkpoint %s" % saved.key if saved is not None else "",
                "; the save in progress when it arrived failed: %s" % _describe(failed_save)
                if failed_save is not None
                else "",
            )
        )


def _describe(error: BaseException) -> str:
    message = getattr(error, "message", None) or str(error)
    return "%s: %s" % (type(error).__name__, message) if message else type(error).__name__


def _restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
