"""Run test code as an unprivileged user, so permission tests mean the same as root (CI) and
as a normal user.

Root ignores file modes (CAP_DAC_OVERRIDE): ``chmod 000`` does not make a directory unreadable
to it.  :func:`run_unprivileged` runs a function in a forked child that, when the suite runs as
root, first drops to ``nobody`` (uid/gid 65534) and all supplementary groups; the result or the
exception comes back to the caller.  Paths the child uses must be reachable by that user: make
them under :func:`world_tmpdir`.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

NOBODY = 65534


def _child(conn, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        conn.send(("ok", fn(*args, **kwargs)))
    except BaseException as exc:  # report everything, including KeyboardInterrupt
        try:
            conn.send(("error", exc))
        except Exception:  # unpicklable exception: send its text
            conn.send(("error", RuntimeError(traceback.format_exc())))
    finally:
        conn.close()


def run_unprivileged(fn: Callable[..., Any], *args: Any, timeout: float = 120, **kwargs: Any):
    """Call ``fn(*args, **kwargs)`` in a child process without root's file-permission bypass.

    Returns what ``fn`` returned (it must pickle) or raises the exception it raised.
    """
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args, kwargs))
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            proc.kill()
            raise TimeoutError("unprivileged call of %r did not finish in %s s" % (fn, timeout))
        status, value = parent.recv()
    finally:
        proc.join(10)
        parent.close()
    if status == "error":
        raise value
    return value


@contextmanager
def world_tmpdir() -> Iterator[str]:
    """A temporary directory every user can enter and write (pytest's tmp_path is 0700)."""
    path = tempfile.mkdtemp(prefix="mfckpt-perm-")
    os.chmod(path, 0o777)
    try:
        yield path
    finally:
        for root, dirs, _files in os.walk(path):
            for d in dirs:
                try:
                    os.chmod(os.path.join(root, d), 0o777)
                except OSError:
                    pass
        shutil.rmtree(path, ignore_errors=True)
