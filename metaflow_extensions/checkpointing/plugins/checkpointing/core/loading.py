"""Load a checkpoint into a local directory: the one routine of the task and the client.

:func:`.download.download_tree` writes a checkpoint's files into a directory all or nothing
(temp names, renamed into place once every blob is verified; what was replaced is put back on a
failure; into a staging directory, final names, the directory renamed once). This module decides
what happens to the directory around it, in one of three ways (``existing``):

* ``"refuse"`` (``Checkpoint().load(ref, path)``): an existing directory must be empty (the
  leftovers of a killed load do not count);
* ``"merge"`` (``force=True``, ``current.checkpoint.load(ref, path)``): same-named files are
  replaced, others left;
* ``"replace"`` (``current.checkpoint.load(ref)`` into the task's managed directory): the
  directory ends up holding exactly the checkpoint; its previous contents are removed only
  after the download was verified, beside it.

Whatever the mode, a directory that does not exist yet appears only once complete: the
checkpoint is downloaded into a staging directory beside it (``.mfckpt-load-*``, see
:mod:`.tempnames`), which is renamed.  Staging directories of killed loads are removed by the
next load beside them (:func:`.download.remove_dead_staging`).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from typing import Optional

from ..errors import CheckpointConfigError
from .download import remove_dead_staging
from .manifest import Manifest
from .scan import holds_data
from .store import CheckpointStore
from .tempnames import STAGING_PREFIX
from .transfer import Progress
from .uninterrupted import deferred_signals

REFUSE, MERGE, REPLACE = "refuse", "merge", "replace"


def load(
    store: CheckpointStore,
    manifest: Manifest,
    path: str,
    *,
    existing: str = REFUSE,
    progress: Optional[Progress] = None,
) -> str:
    """Download ``manifest`` into the directory ``path``; return its absolute path.

    Parameters
    ----------
    store : CheckpointStore
        The store holding the checkpoint.
    manifest : Manifest
        The checkpoint.
    path : str
        Target directory; created (beside, then renamed) if absent.
    existing : str
        What to do with an existing directory: ``"refuse"`` it unless empty, ``"merge"`` into
        it, or ``"replace"`` its contents (see the module docstring).
    progress : callable, optional
        Called (from worker threads) with each number of bytes written.

    Raises
    ------
    CheckpointConfigError
        ``path`` exists and is not a directory; or is a non-empty directory with
        ``"refuse"``; or, merging, holds a file where the checkpoint has a directory (or the
        reverse), or a symbolic link out of ``path`` where the checkpoint has a file or a
        directory.  Nothing is written.
    StorageError
        Writing failed (disk full, quota, permissions); nothing was changed.
    """
    target = check_target(path, existing)
    if not os.path.isdir(target):
        _into_new(store, manifest, target, progress)
    elif existing == REPLACE:
        _replace(store, manifest, target, progress)
    else:
        check_links(manifest, target)
        store.load(manifest, target, progress)
    return target


def check_target(path: str, existing: str = REFUSE) -> str:
    """The absolute path of ``path`` if :func:`load` may load into it (callers check before
    they resolve a reference, so a wrong target fails before any read).

    Raises
    ------
    CheckpointConfigError
        As :func:`load` does for the target.
    """
    if existing not in (REFUSE, MERGE, REPLACE):
        raise ValueError("existing=%r: use 'refuse', 'merge' or 'replace'" % (existing,))
    # Imported here: `import metaflow` loads this module (Checkpoint), not its loads.
    from .user_dirs import user_path

    try:
        # A bytes path is decoded as the OS would (every name below is then a str); a leading
        # ~ is the home directory, as in a shell (not a directory named "~": review r14 R8).
        target = os.path.abspath(user_path(path))
    except TypeError:
        raise CheckpointConfigError(
            "Cannot load into %r: a target directory is a path (str, bytes or os.PathLike)."
            % (path,)
        ) from None
    if os.path.islink(target) and not os.path.exists(target):
        raise CheckpointConfigError(
            "Cannot load into %s: it is a symbolic link to %s, which does not exist; create "
            "that directory or remove the link." % (target, os.readlink(target))
        )
    if os.path.exists(target) and not os.path.isdir(target):
        raise CheckpointConfigError("Cannot load into %s: it is a file, not a directory." % target)
    # Leftovers of a killed load do not make a directory non-empty (the load removes them).
    if existing == REFUSE and os.path.isdir(target) and holds_data(target):
        raise CheckpointConfigError(
            "Cannot load into %s: the directory is not empty (use force=True, CLI --force, "
            "to overwrite files in it)." % target
        )
    return target


def check_links(manifest: Manifest, target: str) -> None:
    """Refuse to merge into ``target`` when, where the checkpoint has a file or a directory, it
    holds a symbolic link leading out of ``target`` (or nowhere): a load never writes through a
    link out of its directory, and this is the user's directory, not a damaged checkpoint.
    One ``lstat`` per path of the checkpoint that exists in ``target``; changes nothing.

    Raises
    ------
    CheckpointConfigError
        Naming the link, where it leads, and what to do.
    """
    root = os.path.realpath(target)
    exists: dict[str, bool] = {}
    for rel in [f.path for f in manifest.files] + list(manifest.dirs):
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub not in exists:
                full = os.path.join(target, *parts[:i])
                exists[sub] = os.path.lexists(full)
                if exists[sub] and os.path.islink(full):
                    real = os.path.realpath(full)
                    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
                        raise CheckpointConfigError(
                            "Cannot load into %s: %s is a symbolic link to %s, %s, where the "
                            "checkpoint has a %s; a load never writes through a link out of "
                            "its directory. Remove or rename the link, or load into an empty "
                            "directory. Nothing was changed."
                            % (
                                target,
                                full,
                                os.readlink(full),
                                "outside it" if os.path.exists(full) else "which does not exist",
                                "file"
                                if i == len(parts) and rel not in manifest.dirs
                                else "directory",
                            )
                        )
            if not exists[sub]:
                break  # nothing below a path that does not exist


def _staging(target: str) -> str:
    """A new staging directory beside ``target`` (in its parent), after removing those of
    killed loads.

    Created with the mode ``os.makedirs`` gives (``0o777`` less the umask), not
    ``tempfile.mkdtemp``'s ``0o700``: a load into a new directory renames this one into place,
    so its mode is the loaded directory's."""
    from .user_dirs import config_error  # at use: `import metaflow` loads this module

    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:  # the user's target: which, and why (not a raw traceback)
        raise config_error("Cannot load into %s" % target, parent, exc) from None
    remove_dead_staging(parent)
    while True:
        staging = os.path.join(parent, STAGING_PREFIX + secrets.token_hex(4))
        try:
            os.mkdir(staging)
            return staging
        except FileExistsError:  # a name another load drew: draw again
            continue
        except OSError as exc:  # no permission to write in the target's parent
            raise config_error("Cannot load into %s" % target, parent, exc) from None


def _into_new(
    store: CheckpointStore, manifest: Manifest, target: str, progress: Optional[Progress]
) -> None:
    """A new directory appears only once complete: download beside it, then rename."""
    staging = _staging(target)
    try:
        store.load(manifest, staging, progress, fresh=True)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(
    store: CheckpointStore, manifest: Manifest, target: str, progress: Optional[Progress]
) -> None:
    """Download beside ``target``, then swap its contents: a failed load leaves it unchanged."""
    staging = _staging(target)
    try:
        store.load(manifest, staging, progress, fresh=True)
        new = os.listdir(staging)
        # The old contents are moved into the staging directory (under a name no checkpoint
        # path can have) and removed with it afterwards, outside the swap.
        old = os.path.join(staging, STAGING_PREFIX + "replaced")
        os.mkdir(old)
        os.makedirs(target, exist_ok=True)
        # The swap is whole even when a signal arrives meanwhile: a task's SIGTERM handler
        # saves this directory on the way out, and must not find it half filled.  It only
        # renames: deleting 100,000 old files inside it held SIGTERM back for 12 s.
        with deferred_signals():
            _swap(target, old, staging, new)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap(target: str, old: str, staging: str, new: list[str]) -> None:
    """Move ``target``'s entries into ``old``, then ``new`` (entries of ``staging``) into
    ``target``; on a failure, put back what was moved.  Where the entries cannot be renamed
    away (``target`` a mount point), they are deleted instead."""
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for entry in os.listdir(target):
            try:
                os.replace(os.path.join(target, entry), os.path.join(old, entry))
            except OSError as exc:
                if exc.errno != errno.EXDEV or moved_old:
                    raise
                _empty_directory(target)  # another filesystem: nothing to put back after this
                break
            moved_old.append(entry)
        for entry in new:
            os.replace(os.path.join(staging, entry), os.path.join(target, entry))
            moved_new.append(entry)
    except OSError:
        for entry in reversed(moved_new):
            os.replace(os.path.join(target, entry), os.path.join(staging, entry))
        for entry in reversed(moved_old):
            os.replace(os.path.join(old, entry), os.path.join(target, entry))
        raise


def _empty_directory(path: str) -> None:
    """Remove the contents of ``path``, keeping it."""
    os.makedirs(path, exist_ok=True)
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
