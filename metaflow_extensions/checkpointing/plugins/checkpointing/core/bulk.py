"""Building many small objects at once: a listing of 100,000 checkpoints, a save of 10,000 files.

Python's cyclic garbage collector runs a pass every few hundred allocations, and the older
generations are rescanned as the objects a listing keeps pile up: a third of a local listing
of 100,000 checkpoints went to it, none of whose objects are garbage (headers, scopes and
references form no cycles).  :func:`paused_gc` turns the collector off for such a build.
A save may run for minutes beside the user's code (a background save), so it only makes the
collector's passes rarer (:func:`relaxed_gc`): 16% of a local save of 10,000 files of 4 KiB
went to them.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

#: Allocations between two passes of the youngest generation inside :func:`relaxed_gc`
#: (Python's default is 700): garbage made meanwhile is still collected, in larger batches.
RELAXED_THRESHOLD = 100_000

_relaxed_lock = threading.Lock()
_relaxed = {"depth": 0, "saved": None}


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic GC for the block.

    A ``with`` block, not a decorator, around public calls: a decorator adds a frame, and
    the warnings a listing gives point at the caller's line by counting frames.

    Reference counting still frees everything that is not in a cycle; cycles made meanwhile
    are collected at the next pass after the block.  The collector is turned back on only if
    this block turned it off: nested blocks, a block in another thread, or a program that
    disabled it itself are left as they were (a program disabling it *during* a block is the
    one case this re-enables).
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@contextlib.contextmanager
def relaxed_gc() -> Iterator[None]:
    """Make the cyclic GC's passes rarer for the block: its youngest generation is collected
    every :data:`RELAXED_THRESHOLD` allocations instead of every 700 or so.

    Unlike :func:`paused_gc`, the collector keeps running, so a long block in one thread
    (a background save) never lets another thread's cyclic garbage grow without bound.
    Blocks may overlap across threads: the first to enter raises the threshold, the last to
    leave puts back what was there, unless the program changed it meanwhile (its setting
    then stands).  A program whose threshold is already higher, or that set it to 0 (no
    automatic collection), is left as it was.
    """
    with _relaxed_lock:
        if _relaxed["depth"] == 0:
            current = gc.get_threshold()
            if 0 < current[0] < RELAXED_THRESHOLD:
                gc.set_threshold(RELAXED_THRESHOLD, *current[1:])
                _relaxed["saved"] = current
            else:
                _relaxed["saved"] = None
        _relaxed["depth"] += 1
    try:
        yield
    finally:
        with _relaxed_lock:
            _relaxed["depth"] -= 1
            saved = _relaxed["saved"]
            if _relaxed["depth"] == 0 and saved is not None:
                if gc.get_threshold() == (RELAXED_THRESHOLD, *saved[1:]):
                    gc.set_threshold(*saved)
                _relaxed["saved"] = None
