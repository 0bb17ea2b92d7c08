"""Directories at paths a user gave (``temp_dir_root=``, a load's ``path=``): made here, so an
OS error says which argument, which path and why, as a :class:`CheckpointConfigError`.

Without this, ``@checkpoint(temp_dir_root="/etc/passwd")`` failed the task as Metaflow's
"Internal error" with a raw ``FileExistsError`` traceback, and ``current.model.load(ref,
path="/proc/x/y")`` with a raw ``FileNotFoundError``.

A leading ``~`` (``~/ckpt``, ``~alice/ckpt``) is the user's home, as in a shell
(:func:`user_path`): Python's own calls do not expand it, so ``temp_dir_root="~/tmp"`` used
to create a directory literally named ``~`` in the task's working directory (review r14 R8),
a trap for whoever later runs ``rm -rf ~*`` there.  Expanded once, where a user's path enters
(a decorator's or ``Checkpoint``'s ``temp_dir_root``, a load's ``path=``, a save's source);
the functions below take paths already expanded.
"""

from __future__ import annotations

import errno
import os
import tempfile
from typing import Optional, Union

from ..errors import CheckpointConfigError


def user_path(path: Union[str, bytes, os.PathLike[str]]) -> str:
    """``path`` as a str with a leading ``~``/``~user`` expanded (``os.path.expanduser``; a
    bytes path decoded as the OS would).  Not made absolute: callers that need it do so.

    Raises
    ------
    TypeError
        ``path`` is not a path (str, bytes or ``os.PathLike``).
    """
    return os.path.expanduser(os.fsdecode(os.fspath(path)))


def reason(exc: OSError, path: str) -> str:
    """What is wrong with ``path``, in words (the OS's reason, made precise for the common
    cases: a file in the way, a parent that is a file, no permission)."""
    in_the_way = isinstance(exc, FileExistsError) or exc.errno == errno.EEXIST
    if in_the_way and os.path.lexists(path) and not os.path.isdir(path):
        return "it is a file, not a directory"
    if exc.errno == errno.ENOTDIR:
        return "a parent of it is a file, not a directory"
    text = exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename if exc.filename not in (None, path) else None
    return "%s%s" % (text, " (%s)" % where if where else "")


def config_error(what: str, path: str, exc: OSError) -> CheckpointConfigError:
    """The error for an :class:`OSError` ``exc`` met making ``path``, given as ``what``."""
    return CheckpointConfigError(
        "%s: cannot use %s as a directory: %s." % (what, path, reason(exc, path))
    )


def make_dirs(path: str, what: str) -> str:
    """``os.makedirs(path, exist_ok=True)``; return ``path``.

    Parameters
    ----------
    path : str
        The directory a user named (a ``~`` already expanded: :func:`user_path`).
    what : str
        How the user named it, for the message (``"Step 'train': @checkpoint(temp_dir_root=
        '/x')"``, ``"current.model.load(path=...)"``).

    Raises
    ------
    CheckpointConfigError
        ``path`` is a file, a parent is a file, cannot be created (permissions, a read-only
        or virtual file system such as ``/proc``): names ``what``, ``path`` and the reason.
    """
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise config_error(what, path, exc) from None
    return path


def make_temp_dir(parent: Optional[str], prefix: str, what: str) -> str:
    """A new private temporary directory under ``parent`` (created if absent; None: the
    system temp dir), OS errors as :func:`make_dirs` says them."""
    if parent:
        parent = make_dirs(parent, what)
    try:
        return tempfile.mkdtemp(prefix=prefix, dir=parent or None)
    except OSError as exc:
        raise config_error(what, parent or tempfile.gettempdir(), exc) from None


def check_not_a_file(path: str, what: str) -> None:
    """Refuse a ``path`` that exists and is not a directory (a check without side effects,
    for a decorator's ``step_init``: nothing is created before a task runs)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise CheckpointConfigError(
            "%s: cannot use %s as a directory: it is a file, not a directory." % (what, path)
        )
