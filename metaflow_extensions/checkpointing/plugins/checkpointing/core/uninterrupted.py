"""Short steps that a signal must not split: run them whole, handle the signal right after.

A load puts its files into place with a series of renames (:func:`.destination.commit_renames`,
:func:`.loading._replace`).  An exception raised between two of them (``KeyboardInterrupt``
from Ctrl-C, a task's SIGTERM handler stopping the step, Metaflow's ``@timeout``) left a
directory of old and new files, or a half-filled one that the task's final save then
committed.  Python runs signal handlers in the main thread only, between two bytecodes:
:func:`deferred_signals` replaces the Python handlers of the usual stop signals for the
duration of the block with one that records the signal, then restores them and raises each
recorded signal again, so the original handler runs once the block is whole.  Elsewhere than
in the main thread no handler can interrupt the block, and it does nothing.  SIGKILL cannot
be deferred: a load killed mid-commit is recovered by the next one (its lock file and temp
names).  Blocks must stay short (renames, unlinks): a signal waits for them.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

#: The signals that stop a program and that a Python handler may turn into an exception
#: (SIGALRM: Metaflow's ``@timeout`` raises from its handler).
_STOPS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGALRM")
    if hasattr(signal, name)
)

#: ``signal.getsignal`` without its conversion of the answer to an enum (SIG_DFL and SIG_IGN
#: come back as ints): the function the signal module wraps.  With ``_setsignal``, a block
#: costs 6 us instead of 26 us (a load enters four); :meth:`.Interrupts._alone` asks it too.
handler_of = getattr(signal, "_signal", signal).getsignal
_setsignal = getattr(signal, "_signal", signal).signal


class _Depth:
    """How many blocks the main thread is in (only the main thread changes it)."""

    n = 0


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Defer the Python handlers of SIGINT, SIGTERM, SIGHUP, SIGQUIT and SIGALRM (those that
    have one) until the block ends; then each signal that arrived is raised again, once, in
    the order it came, each handler running even if an earlier one raised.  A handler set
    during the block is kept.  A block inside another defers to the outer one; outside the
    main thread (where no handler runs) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread() or _Depth.n:
        yield
        return
    arrived: list[int] = []
    saved: dict = {}
    over = [False]

    def record(signum, frame):
        if over[0]:
            # The block is over but this stand-in is still installed: the restore was cut
            # short (setting a handler runs pending handlers first, and one raised).  Act as
            # the handler it stands for, so no signal is ever swallowed.
            return saved[signum](signum, frame)
        if signum not in arrived:
            arrived.append(signum)

    record._mfckpt_stands_for = saved  # type: ignore[attr-defined]
    _Depth.n = 1
    try:
        for sig in _STOPS:
            handler = handler_of(sig)
            # A stand-in an earlier block left installed is saved as the handler it stands
            # for: stand-ins of stand-ins would chain, one per restore cut short, until a
            # signal met RecursionError instead of its handler (~1,000 of them).
            while sig in getattr(handler, "_mfckpt_stands_for", ()):
                handler = handler._mfckpt_stands_for[sig]
            if callable(handler):  # SIG_DFL / SIG_IGN / None: no Python code runs for it
                saved[sig] = handler
                _setsignal(sig, record)
        yield
    finally:
        over[0] = True
        _Depth.n = 0
        try:
            for sig, handler in saved.items():
                if handler_of(sig) is record:  # not one a handler set meanwhile
                    _setsignal(sig, handler)
        finally:
            _raise_again(arrived)


def _raise_again(signals: list[int]) -> None:
    """Raise each of ``signals`` again, in order; a handler raising does not stop the next."""
    if signals:
        try:
            signal.raise_signal(signals[0])  # its handler runs now, the block being whole
        finally:
            _raise_again(signals[1:])
