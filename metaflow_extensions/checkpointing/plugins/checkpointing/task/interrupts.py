"""SIGTERM and Ctrl+C in a ``@checkpoint`` task, handled within a bounded time.

Long module: one state machine (the signal received, its deadline, the saves in progress, the
handling, the task's end) that every path of a stopping task goes through; split, its parts
would share that state through each other's private attributes.

On the first signal: run the ``on_interrupt`` callbacks, save the checkpoint directory if
``@checkpoint(save_on_interrupt=True)``, wait for pending background saves, then raise
:class:`CheckpointInterrupted` so the attempt fails and ``@retry`` (or ``resume``) continues
from the committed checkpoint.  A signal that arrives during a blocking save is handled once
that save has committed, or failed (then :class:`CheckpointInterrupted` is chained from the
save's error).  Further signals while this runs are ignored, and so are signals while the
task is ending (:meth:`Interrupts.ending`: its cleanup must finish).

**Bounded time.** The first signal starts a clock of ``seconds``
(``METAFLOW_CHECKPOINT_INTERRUPT_SECONDS``): a save that has not committed when it runs out
(the blocking save in progress, the final save, background saves) is *abandoned*.  Blocking
saves run in a worker thread while the caller waits (:meth:`Interrupts.run`), so the wait can
end at the deadline; each save goes through a :class:`Fence`, which after the deadline stops its
uploads and refuses its manifest write, so an abandoned save can never commit later: the
previous checkpoint stays the latest, and the log says which one it is.  A manifest write
already in flight at the deadline is waited for :data:`COMMIT_GRACE` seconds, and if it is still
running the log says the save may have committed.

:class:`Interrupts` owns all of that state (the signal received, its deadline, whether it is
being handled, how many blocking saves are running, the callbacks); what a signal commits is
asked of an :class:`InterruptTarget` (the task's saves) through its public methods.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, TypeVar

from ..core.uninterrupted import handler_of
from ..errors import CheckpointException, CheckpointInterrupted
from ..fmt import describe_error
from . import save_threads
from .fence import COMMIT_GRACE, Done, Fence, SaveAbandoned

if TYPE_CHECKING:
    from ..common.reference import CheckpointReference
    from ..core.manifest import ManifestHeader
    from ..core.scope import Scope

SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Signals that user and library code set Python handlers for (Metaflow's ``@timeout`` and
#: other timers, a trainer's requeue on SIGUSR1, debuggers, job control).  Such a handler runs
#: in the main thread between two bytecodes and may raise or save: with one set, no save runs
#: in the task's thread (:meth:`Interrupts.run`, ``inline``; ADR 009).
OTHER_SIGNALS = tuple(
    getattr(signal, name)
    for name in (
        "SIGALRM",
        "SIGVTALRM",
        "SIGPROF",
        "SIGUSR1",
        "SIGUSR2",
        "SIGHUP",
        "SIGQUIT",
        "SIGXCPU",
        "SIGCHLD",
        "SIGCONT",
        "SIGTSTP",
        "SIGWINCH",
    )
    if hasattr(signal, name)
)
#: The setting naming the time allowed after a signal (in messages).
SETTING = "METAFLOW_CHECKPOINT_INTERRUPT_SECONDS"
#: Default of that setting: Metaflow's local runtime kills tasks 4 to 5 s after Ctrl+C.
DEFAULT_SECONDS = 3.0
#: Seconds between two looks at the deadline while a blocking save runs in its thread.
_TICK = 0.05

T = TypeVar("T")


class InterruptTarget(Protocol):
    """What a signal commits before the task stops (implemented by ``saves.TaskSaves``)."""

    @property
    def scope(self) -> Scope: ...

    def final_save(self, metadata: dict, why: str) -> Optional[CheckpointReference]: ...

    def flush(self, raise_errors: bool = True) -> None: ...

    def task_headers(self) -> list[ManifestHeader]: ...

    def mark(self) -> int: ...

    def latest(
        self, headers: Optional[Sequence[ManifestHeader]], mark: Optional[int] = None
    ) -> Optional[str]: ...


class _Lookup:
    """The task's checkpoints listed in a daemon thread when the signal arrives, so that the
    final save starts at once and the log can still name the checkpoint that stays latest."""

    def __init__(self, list_headers: Callable[[], list]):
        self.headers: Optional[list] = None
        self.error: Optional[BaseException] = None
        self._done = Done()
        self._list = list_headers
        threading.Thread(target=self._run, name="checkpoint-latest", daemon=True).start()

    def _run(self) -> None:
        try:
            self.headers = self._list()
        except BaseException as exc:  # noqa: BLE001 - reported in the log line
            self.error = exc
        finally:
            self._done.set()

    def wait(self, timeout: Optional[float]) -> bool:
        return self._done.wait(timeout)


class Interrupts:
    """The signal handling of one task process.

    Parameters
    ----------
    save_on_interrupt : bool
        Save the checkpoint directory as a final checkpoint when a signal arrives
        (``@checkpoint(save_on_interrupt=True)``).
    log : callable
        Where one-line status messages go.
    seconds : float
        Time allowed from the first signal to the end of the task's checkpointing
        (``METAFLOW_CHECKPOINT_INTERRUPT_SECONDS``); saves not committed by then are abandoned.
    """

    def __init__(
        self,
        save_on_interrupt: bool = False,
        log: Callable[[str], None] = print,
        seconds: float = DEFAULT_SECONDS,
    ):
        self.save_on_interrupt = bool(save_on_interrupt)
        self.seconds = float(seconds)
        self._log = log
        self._callbacks: list[Callable[[], None]] = []
        self._target: Optional[InterruptTarget] = None
        self._previous: dict = {}
        self._installed = False
        self._busy = 0  # blocking saves in progress (a signal then waits for them)
        self._received: Optional[int] = None  # the first signal, handled once not busy
        self._deadline: Optional[float] = None  # time.monotonic() when the time allowed ends
        self._lookup: Optional[_Lookup] = None
        self._mark: Optional[int] = None  # the target's commits when the signal arrived
        self._announced = False
        self._abandoned: list[str] = []  # what was abandoned, for the end line and the error
        self._uncertain = False  # an abandoned save was still writing its manifest
        self._handling = False
        self._ending = False  # the task is ending: signals are absorbed until restore()

    def allow(self, seconds: float) -> None:
        """Give the next signal at least ``seconds`` (a cloud's preemption notice announces
        how long the machine has left: the setting's default is made for a local Ctrl+C)."""
        if self._received is None:
            self.seconds = max(self.seconds, float(seconds))

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
        self._installed = True
        return True

    def restore(self) -> None:
        """Put back the handlers :meth:`install` replaced (at the end of the task)."""
        _restore(self._previous)
        self._previous = {}
        self._installed = False
        self._ending = False

    def ending(self) -> None:
        """The task is ending: until :meth:`restore`, a signal is logged and absorbed.

        The end of a task commits what is pending and removes its directories (often GBs in
        the temp dir): a late Ctrl+C or SIGTERM must not interrupt that and leak them.  The
        signal is not delivered afterwards either: by then the task's outcome is recorded and
        the process is about to exit.  Its time still counts: background saves not committed
        within it are abandoned, and the end goes on.
        """
        self._ending = True

    @property
    def received(self) -> Optional[str]:
        """The name of the signal received and not handled yet (``"SIGTERM"``), or None: long
        waits inside a blocking save (a sharded save waiting for other ranks) poll it to stop
        early instead of deferring the signal until they time out."""
        return signal.Signals(self._received).name if self._received is not None else None

    @property
    def deadline(self) -> Optional[float]:
        """``time.monotonic()`` at which the time allowed after the first signal ends (None
        before any signal): saves not committed by then are abandoned."""
        return self._deadline

    def abandoned_error(self, what: str, may_have_committed: bool = False) -> SaveAbandoned:
        """The error of a save (``what``) abandoned at the deadline, naming the time allowed."""
        name = self.received or "the signal"
        if may_have_committed:
            error = SaveAbandoned(
                "Abandoned %s: still writing its manifest %g s after %s, so it may have "
                "committed" % (what, self.seconds + COMMIT_GRACE, name)
            )
            error.may_have_committed = True
            return error
        return SaveAbandoned(
            "Abandoned %s: not committed within %g s of %s (%s); nothing of it was committed"
            % (what, self.seconds, name, SETTING)
        )

    def record_abandoned(self, what: str, error: SaveAbandoned) -> None:
        """Log the line of an abandoned save (``what`` is named again in the error)."""
        self._abandoned.append(what)
        self._uncertain = self._uncertain or error.may_have_committed
        self._log("[@checkpoint] %s." % error.message)

    # ------------------------------------------------------------------ blocking saves
    def run(
        self,
        work: Callable[[Fence], T],
        deliver: bool = True,
        what: str = "the save in progress",
        inline: bool = False,
    ) -> T:
        """Run the blocking save ``work(fence)`` (the fence goes to ``store.save`` through
        :meth:`Fence.commit`) inside :meth:`blocking`; ``what`` names it in messages.

        With the signal handlers installed the save runs in a worker thread while this thread
        waits, so that once a signal's time runs out the save is abandoned (raising
        :class:`SaveAbandoned`) instead of holding the task until it completes.  With
        ``inline`` (a small save into local stores, ADR 009) it runs in this thread: it ends
        within milliseconds, and the hand-off to a worker cost it 80 us of 600.  Not while a
        Python handler other than ours could run inside it (:meth:`_alone`): one that raises
        (``@timeout``) would cut the save at any bytecode, one that saves would re-enter it.

        Raises
        ------
        SaveAbandoned
            The save had not committed at the deadline (and never will).
        """
        with self.blocking(deliver):
            fence = Fence()
            if self._deadline is not None and time.monotonic() >= self._deadline:
                raise self.abandoned_error(what)  # no time left: not even started
            if not self._installed or (inline and self._alone()):  # no deadline to keep
                return work(fence)
            return self._wait(work, fence, what)

    def _alone(self) -> bool:
        """Whether no Python signal handler but ours can run in this thread: it is not the
        main thread, or SIGTERM and SIGINT are ours and none of :data:`OTHER_SIGNALS` has one
        (a dozen ``getsignal`` calls of the C module, 2 us: ``signal.getsignal`` turns each
        answer into an enum, 13 us in all)."""
        if threading.current_thread() is not threading.main_thread():
            return True
        ours = self._on_signal
        if any(handler_of(sig) != ours for sig in SIGNALS):
            return False
        return not any(callable(handler_of(sig)) for sig in OTHER_SIGNALS)

    def _wait(self, work: Callable[[Fence], T], fence: Fence, what: str) -> T:
        outcome: dict = {}
        done = Done()

        def save() -> None:
            try:
                outcome["value"] = work(fence)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the waiting thread
                outcome["error"] = exc
            finally:
                done.set()

        # In a daemon thread: an abandoned save must not keep the process alive (the fence
        # keeps it from committing; its uploads stop at their next chunk).
        save_threads.start(save)
        while not done.wait(_TICK):
            self._announce()
            if self._deadline is None or time.monotonic() < self._deadline:
                continue
            state = fence.abandon(self.abandoned_error(what))
            if state == Fence.ABANDONED:
                raise self.abandoned_error(what)
            if state == Fence.COMMITTING:
                raise self.abandoned_error(what, may_have_committed=True)
            # Committed: what is left is the bookkeeping, then the retention prune (a listing
            # and deletes), skipped after a signal but a request in flight cannot be cut short.
            if done.wait(COMMIT_GRACE):
                break
            published, value = fence.result(COMMIT_GRACE)
            if not published:  # its thread stalled between the commit and the bookkeeping
                error = SaveAbandoned(
                    "Stopped waiting for %s: it committed, but had not returned %g s after %s"
                    % (what, self.seconds + COMMIT_GRACE, self.received or "the signal")
                )
                error.may_have_committed = True
                raise error
            key = getattr(value, "key", None)
            self._log(
                "[@checkpoint] %s committed%s; not waiting for its pruning of older checkpoints "
                "(the next attempt's saves prune)."
                % (what[0].upper() + what[1:], " as %s" % key if key else "")
            )
            return value
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    @contextlib.contextmanager
    def blocking(self, deliver: bool = True) -> Iterator[None]:
        """Mark a blocking save in progress: a signal arriving meanwhile waits until it ends.

        With ``deliver`` (the default), a signal that arrived during the block is handled as
        soon as the block completes, i.e. right after the save committed (this raises
        :class:`CheckpointInterrupted`).  ``deliver=False`` is for the final saves made while
        the task is already stopping (on a signal, or after the step failed).  The block runs
        in the calling thread, unbounded: saves that must end at the deadline use :meth:`run`.
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
        if isinstance(failure, SaveAbandoned):
            self._announce(force=True)
            self.record_abandoned("the save in progress", failure)
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
            The error of the blocking save the signal waited for, when that save failed or was
            abandoned (named in the :class:`CheckpointInterrupted` message).

        Raises
        ------
        CheckpointInterrupted
            Once pending saves are committed or abandoned (unless the signal was deferred or
            ignored).
        """
        if self._ending:
            # Absorbed, but its time counts: the end's wait for background saves stops then.
            first = self._received is None
            if first:
                self._received = signum
                self._deadline = time.monotonic() + self.seconds
            self._log(
                "[@checkpoint] Received %s while the task is ending: finishing first.%s"
                % (
                    signal.Signals(signum).name,
                    " Saves not committed within %g s (%s) are abandoned." % (self.seconds, SETTING)
                    if first
                    else "",
                )
            )
            return
        if self._handling:
            return  # a further signal while we are already committing: keep going
        if self._received is None:
            # The first signal: its time starts now, and the task's checkpoints are listed
            # aside (the final save does not wait for that) to name the one that stays latest.
            self._received = signum
            self._deadline = time.monotonic() + self.seconds
            if self._target is not None:
                self._mark = self._target.mark()  # what it had committed when the signal came
                self._lookup = _Lookup(self._target.task_headers)
        if self._busy or self._target is None:
            return  # inside a blocking save: handled right after it ends (see blocking())
        self._handling = True
        name = signal.Signals(self._received).name
        log, target = self._log, self._target
        saved = None
        for callback in self._callbacks:
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - a failing callback must not lose the save
                log("[@checkpoint] on_interrupt callback %r failed: %s" % (callback, exc))
        self._announce()
        if self.save_on_interrupt:
            try:
                saved = target.final_save(
                    {"reason": "interrupted", "signal": name}, why="on %s" % name
                )
            except SaveAbandoned as exc:
                self._announce(force=True)
                self.record_abandoned("the final save", exc)
            except CheckpointException as exc:
                log("[@checkpoint] The final save failed: %s" % exc.message)
            else:
                if saved is not None:
                    self._announce(force=True)
                    log("[@checkpoint] Saved checkpoint %s %s." % (saved.key, "on %s" % name))
        target.flush(raise_errors=False)
        self._announce(force=True)
        if self._abandoned:
            log("[@checkpoint] %s" % self._stays_latest())
        raise CheckpointInterrupted(self._message(name, saved, failed_save))

    def _message(
        self,
        name: str,
        saved: Optional[CheckpointReference],
        failed_save: Optional[BaseException],
    ) -> str:
        parts = []
        if saved is not None:
            parts.append("saved checkpoint %s" % saved.key)
        if self._abandoned:
            what = ", ".join(self._abandoned[:-1]) + " and " if len(self._abandoned) > 1 else ""
            parts.append(
                "abandoned %s%s (not committed within %g s, %s)"
                % (what, self._abandoned[-1], self.seconds, SETTING)
            )
        else:
            parts.append("pending saves were committed first")
        if failed_save is not None and not isinstance(failed_save, SaveAbandoned):
            failed = describe_error(failed_save)
            parts.append("the save in progress when it arrived failed: %s" % failed)
        assert self._target is not None
        text = "; ".join(parts).rstrip(".")  # a save's error may end with its own period
        return "Task %s received %s; %s." % (self._target.scope.pathspec, name, text)

    def _stays_latest(self) -> str:
        """The end line after something was abandoned: which checkpoint is the latest."""
        assert self._target is not None
        headers = self._lookup.headers if self._lookup is not None else None
        latest = self._target.latest(headers)
        if self._uncertain:
            return (
                "The latest checkpoint is %s, unless the manifest write still in flight "
                "completed." % (latest or "none")
            )
        if headers is None:  # the listing failed: only what this process knows
            return (
                "Nothing abandoned was committed: the latest checkpoint stays the newest one "
                "committed before (the newest this process knows of: %s)." % (latest or "none")
            )
        return "Nothing abandoned was committed: the latest checkpoint stays %s." % (
            latest or "none (this task has no checkpoint)"
        )

    def _announce(self, force: bool = False) -> None:
        """Log, once, the line saying the time allowed and which checkpoint stays the latest.

        Logged as soon as the listing started at the signal has answered (without waiting for
        it unless ``force``: then until the deadline at most)."""
        if self._announced or self._received is None or self._target is None:
            return
        lookup = self._lookup
        wait = _remaining(self._deadline) if force else 0.0
        if lookup is not None and not lookup.wait(wait) and not force:
            return
        self._announced = True
        name = signal.Signals(self._received).name
        if lookup is not None and lookup.headers is not None:
            latest = self._target.latest(lookup.headers, self._mark)
            now = "now: %s" % (latest or "none, this task has no checkpoint yet")
        else:
            error = lookup.error if lookup is not None else None
            now = "the store could not be listed to name it%s" % (
                ": %s" % describe_error(error) if error is not None else " in time"
            )
        self._log(
            "[@checkpoint] Received %s: committing checkpoints before stopping. Saves not "
            "committed within %g s (%s) are abandoned, never half-written: the latest "
            "checkpoint then stays the newest one committed (%s)."
            % (name, self.seconds, SETTING, now)
        )


def _remaining(deadline: Optional[float]) -> float:
    return 0.0 if deadline is None else max(0.0, deadline - time.monotonic())


def _restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
