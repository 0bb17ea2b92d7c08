"""Building many small objects at once: a listing of 100,000 checkpoints.

Python's cyclic garbage collector runs a pass every few hundred allocations, and the older
generations are rescanned as the objects a listing keeps pile up: a third of a local listing
of 100,000 checkpoints went to it, none of whose objects are garbage (headers, scopes and
references form no cycles).  :func:`paused_gc` turns the collector off for such a build.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


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
