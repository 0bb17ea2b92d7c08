"""What every part of the ``Checkpoint`` client shares: construction, stores, the task it may
run in, and the view a reference is resolved with.

``class Checkpoint`` (:mod:`.checkpoint`) is assembled from one mixin per concern, each a
subclass of :class:`ClientBase`: :mod:`.listing` (list, best), :mod:`.single` (get, load,
open), :mod:`.named` (save, promote, unpromote), :mod:`.lifecycle` (delete, pin, unpin, prune,
gc, du, verify, pause).
"""

from __future__ import annotations

import shutil
import sys
import warnings
from typing import Any, Callable, Optional

from ..common import resolver
from ..core.manifest import Manifest, ManifestHeader
from ..core.store import CheckpointStore
from ..errors import CheckpointConfigError, CheckpointWarning
from ..task.context import TaskContext


class ClientBase:
    """State and helpers of a ``Checkpoint`` client (see ``Checkpoint`` for the parameters)."""

    #: Recorded as the origin of the named checkpoints this client publishes (the CLI's
    #: subclass says "cli").
    _origin = "client"

    #: Whether a client made in a task (or a process it started) acts for it; False: it
    #: answers as from a notebook (how a task lists another task, one code path).
    _sees_task = True

    def __init__(
        self,
        temp_dir_root: Optional[str] = None,
        init_dir: bool = False,
        *,
        root: Optional[str] = None,
    ):
        # The reference extension's Checkpoint(temp_dir_root, init_dir): a store root only by
        # keyword, so Checkpoint("/scratch") never sends a task's saves to another store.
        if temp_dir_root is not None and "://" in str(temp_dir_root):
            raise CheckpointConfigError(
                "Checkpoint(%r): the first argument is temp_dir_root, a local directory for "
                "init_dir=True. To read or write the store at that URL, pass "
                "Checkpoint(root=%r)." % (temp_dir_root, temp_dir_root)
            )
        # blake3/tenacity first: without them a save would leave a lease behind before failing
        # with a bare ImportError (an image with only Metaflow, a step with no decorator).
        from ..task.deps import require_client_packages

        require_client_packages(
            "metaflow checkpoint (the CLI)" if self._origin == "cli" else "Checkpoint()"
        )
        self._root = root
        self._stores: dict[str, CheckpointStore] = {}
        self._task = TaskContext.from_env() if root is None and self._sees_task else None
        self._own_dir: Optional[str] = None
        if init_dir:
            from ..core.user_dirs import make_temp_dir, user_path  # here: import metaflow loads us

            parent = temp_dir_root or (self._task.temp_dir_root if self._task else None)
            what = "Checkpoint(temp_dir_root=%r)" % (parent,)
            self._own_dir = make_temp_dir(parent and user_path(parent), "mfckpt-", what)
        # In a task's subprocess: its writer position and torchrun ranks, read once.
        self._ranks = self._task.ranks() if self._task else None
        if self._ranks is not None and self._ranks.warning is not None:
            _warn_once(self._ranks.warning)
        self._runtime = self._task.runtime(self.directory, self._ranks) if self._task else None

    @property
    def directory(self) -> Optional[str]:
        """The local directory :meth:`save` saves by default: the one ``init_dir=True``
        created, else the task's ``current.checkpoint.directory``; None outside a task."""
        if self._own_dir:
            return self._own_dir
        return self._task.directory if self._task else None

    def close(self) -> None:
        """Remove the directory ``init_dir=True`` created (a ``with`` block does this)."""
        if self._own_dir:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ stores
    def _store(self, url: Optional[str] = None) -> CheckpointStore:
        """The store at ``url``; default: this client's root, else the default root."""
        from ..common.settings import store_for_url

        url = url or self._root or _default_root()
        if url not in self._stores:
            self._stores[url] = store_for_url(url)
        return self._stores[url]

    # ------------------------------------------------------------------ resolution
    def _view(self) -> resolver.View:
        """What references resolve against: in a task (or a process it started), the task's
        store and namespace (:class:`..task.view.TaskView`; any store a reference names may be
        read); elsewhere the runs of the current Metaflow namespace (:class:`.view.ClientView`).
        """
        if self._task is not None and self._ranks is not None:
            from ..task.view import TaskView

            scope = self._task.scope
            store = self._store(self._task.root)
            return TaskView(
                store,
                scope,
                other_stores=True,
                reader=scope.namespace,
                position=self._ranks.position,
            )
        from .view import ClientView

        return ClientView(self)

    def _resolve(self, reference: Any) -> tuple[CheckpointStore, Manifest]:
        return resolver.resolve(reference, self._view())

    def _warn(self, message: str, stacklevel: int = 2) -> None:
        """Say what a result left out (a store that could not be read): a
        :class:`CheckpointListWarning` for code (``stacklevel`` counts from the caller of this
        method); in the CLI (``_origin == "cli"``) one ``Warning:`` line on stderr."""
        if self._origin == "cli":
            print("Warning: %s" % message, file=sys.stderr, flush=True)
        else:
            warnings.warn(message, CheckpointListWarning, stacklevel=stacklevel + 1)

    #: ``_headers(target, ...)``: the store and the headers of the committed checkpoints
    #: ``list`` returns for these arguments (keys only), newest first; defined by :mod:`.listing`.
    _headers: Callable[..., tuple[CheckpointStore, list[ManifestHeader]]]


class CheckpointListWarning(CheckpointWarning):
    """A store a listing should have read could not be read, or an operation covered one of
    several stores: the warning names the store and why (ADR 005, "listings")."""


#: Warnings already given by this process (one line each, however many objects are made).
_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print("[@checkpoint] Warning: %s" % message, file=sys.stderr)


def _default_root() -> str:
    from .locate import default_root

    return default_root()
