"""One checkpoint from the client: ``Checkpoint().get``, ``load`` and ``open``.

Every spelling of a reference is resolved by :func:`..common.resolver.resolve` against the
client's view (:meth:`.base.ClientBase._view`), and a load goes through the one load routine
(:func:`..core.loading.load`) the task uses too.
"""

from __future__ import annotations

from typing import IO, Any, Optional

from ..common.local_tier import TierStore, status_in
from ..common.reference import UPLOADED, CheckpointReference, reference_of
from ..core import loading
from ..core.manifest import Manifest
from ..core.summary import attempts_ended
from ..core.transfer import Progress
from ..errors import CheckpointConfigError
from .base import ClientBase


class Single(ClientBase):
    """``get``, ``load`` and ``open`` of :class:`~.checkpoint.Checkpoint`."""

    def get(self, reference: Any) -> CheckpointReference:
        """A fresh reference from any spelling of one: a reference or its ``key``/``url``, a
        task (pathspec or object; its latest checkpoint), a name (``"resnet50"``, or
        ``"resnet50@<version id>"``) saved outside any task, or an alias of a target:
        ``"Flow/run@last"``, ``"Flow/run/step@best:val_loss"``, ``"Flow@best:accuracy:max"``,
        ``"resnet50@best:top1:max"``.  In a task (or a process it started) ``"last"`` and
        ``"best:<metric>"`` alone pick among the task's checkpoints.  Its ``task_status``
        says how the attempt that saved it ended (``"paused"``, ``"failed"``, ...).

        A checkpoint of ``@checkpoint(upload="end")`` not uploaded is found on the machine
        whose local tier holds it (its ``status`` says so: ``"local"``, ...); ``load`` and
        ``open`` read it from there.

        Raises
        ------
        CheckpointNotFound
            If there is no such checkpoint; for one saved with ``upload="end"`` and not
            uploaded, read elsewhere than on the machine holding it, the message says so,
            on which host and where it is, and what to do.
        CheckpointConfigError
            If ``reference`` is not a reference in any of these forms (or is an alias of the
            running task's checkpoints, outside a task).
        """
        store, manifest = self._resolve(reference)
        status, stores = UPLOADED, [store]
        if isinstance(store, TierStore):  # not uploaded: read from this machine's local tier
            status, store = status_in(store, manifest.key), store.remote
            stores.insert(0, store)
        ended = None
        if not manifest.scope.is_library:  # how its attempt ended (its task_status)
            scope = manifest.scope
            for where in stores:  # the flow's store, else what the tier recorded
                ended = ended or attempts_ended(where.storage, scope.task_prefix()).get(
                    scope.attempt
                )
        return reference_of(store, manifest, status=status, task_status=ended)

    def _manifest(self, reference: Any) -> Manifest:
        """The full manifest of a checkpoint (every file with its blobs; for tools)."""
        return self._resolve(reference)[1]

    def load(
        self,
        reference: Any,
        path: Optional[str] = None,
        *,
        force: bool = False,
        progress: Optional[Progress] = None,
    ) -> str:
        """Download a checkpoint into the directory ``path``; return its absolute path.

        In a task (or a process it started), this is ``current.checkpoint.load()``: ``path``
        defaults to :attr:`directory`, which then holds exactly the checkpoint, and
        ``reference`` may also be an alias (``"last"``, ``"best:val_loss"``).

        Parameters
        ----------
        reference : any
            Any form accepted by :meth:`get`.
        path : str
            Target directory.  Created if absent; if it exists it must be empty unless
            ``force``, in which case same-named files are replaced and others left.  Either
            way the load applies completely or not at all.
        force : bool
            Allow a non-empty target.
        progress : callable, optional
            Called with each number of bytes written.

        Raises
        ------
        CheckpointConfigError
            ``path`` is a file, or a non-empty directory without ``force``, or (with
            ``force``) holds a file where the checkpoint has a directory or the reverse:
            every such path is named and nothing is written.
        StorageError
            Writing ``path`` failed (disk full, quota, permissions); nothing was changed.
        """
        if self._runtime is not None:
            return self._runtime.load(reference, path)
        if path is None:
            raise CheckpointConfigError(
                "load() outside a task needs a target directory: Checkpoint().load(ref, path)."
            )
        existing = loading.MERGE if force else loading.REFUSE
        loading.check_target(path, existing)  # before any read: a wrong target fails first
        store, manifest = self._resolve(reference)
        return loading.load(store, manifest, path, existing=existing, progress=progress)

    def open(self, reference: Any, file: str) -> IO[bytes]:
        """A binary stream over one file of a checkpoint, verified as it is read.

        Only that file's bytes are fetched (a small file is one ranged read).

        Raises
        ------
        CheckpointNotFound
            If the checkpoint has no such file.
        """
        store, manifest = self._resolve(reference)
        return store.open(manifest, file)
