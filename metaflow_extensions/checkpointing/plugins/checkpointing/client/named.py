"""Named checkpoints from the client: ``Checkpoint().save`` (a new version outside any task),
``promote`` and ``unpromote`` (which namespaces trust a version by name, see
:mod:`..core.promotions`)."""

from __future__ import annotations

import os
from typing import Any, Optional

from ..common import refspec
from ..common.reference import FILES, CheckpointReference, check_storage_format, reference_of
from ..core import promotions
from ..core.manifest import Manifest
from ..core.scope import DEFAULT_NAME, library_scope
from ..core.store import CheckpointStore
from ..core.transfer import Progress
from ..errors import CheckpointConfigError
from .base import ClientBase


class Named(ClientBase):
    """``save``, ``promote`` and ``unpromote`` of :class:`~.checkpoint.Checkpoint`."""

    def save(
        self,
        path: Optional[str] = None,
        metadata: Optional[dict] = None,
        latest: bool = True,
        name: Optional[str] = None,
        storage_format: str = FILES,
        *,
        progress: Optional[Progress] = None,
        sharded: bool = False,
        reuse_identical: bool = False,
    ) -> CheckpointReference:
        """Save a file or directory as a checkpoint and return its reference once committed.

        In a task (or a process it started): a checkpoint of that task, as
        ``current.checkpoint.save()`` makes (the same call, ``sharded`` included); ``path``
        defaults to :attr:`directory` and ``name`` to ``"mfchckpt"``.  The checkpoint records
        its writer: the task's ``@parallel`` node and this process's ``LOCAL_RANK``.  With
        ``sharded=True``, in a ``torchrun`` worker (``RANK`` and ``WORLD_SIZE`` set), every
        rank's ``path`` is its part of one checkpoint committed once all parts are stored
        (each rank loads its own part back); in a process without ``RANK``, its part of its
        node's in a ``@parallel`` gang.  Elsewhere: a new version of the named checkpoint
        ``name`` (required, as is ``path``); every call is its own version, even for content
        identical to a stored one (only bytes not stored yet are uploaded: ``stats
        ["bytes_uploaded"]``), so deleting one version never breaks another's reference.
        With ``reuse_identical=True`` (what ``metaflow checkpoint upload`` does, and says)
        content identical to your namespace's newest version returns that version instead
        (``stats["reused"]`` true): both are then one version, deleted together.
        Flow steps load it with ``current.checkpoint.load(name)`` or
        ``@checkpoint(models=[name])``.  The version records its publisher (your user and
        namespace, ``ref["publisher"]``): a bare name resolves to it only in that namespace,
        elsewhere after :meth:`promote` or pinned as ``name@<version>``.  ``storage_format``
        (``"files"`` or ``"tar"``, other ``@checkpoint`` extensions' spelling) changes nothing:
        files are always stored one by one and verified when loaded.

        The positional order is the reference extension's, ``save(path, metadata, latest,
        name, storage_format)``; a str second (``save(path, "best")``, the order of
        ``current.checkpoint.save``) is the name.

        Raises
        ------
        CheckpointConfigError
            ``path`` does not exist, a required argument is missing, or ``name``/``metadata``
            are invalid, or ``storage_format`` is not ``"files"``/``"tar"`` (nothing uploaded);
            ``sharded=True`` outside a task (a named
            checkpoint has a single writer).
        CheckpointIncomplete
            ``sharded=True``: nothing was committed (a participant is gone or never saved).
        """
        check_storage_format(storage_format)  # before anything is read
        if isinstance(metadata, str) and name is None:  # save(path, "best"): the name
            name, metadata = metadata, None
        if self._runtime is not None:
            return self._runtime.save(
                path, metadata=metadata, name=name or DEFAULT_NAME, latest=latest, sharded=sharded
            )
        if sharded:
            raise CheckpointConfigError(
                "save(sharded=True) combines the parts of the processes of a running task "
                "(@parallel nodes, torchrun ranks); outside a task, a named checkpoint has one "
                "writer: save it without sharded=True, from one process."
            )
        if path is None or name is None:
            raise CheckpointConfigError(
                "Outside a @checkpoint task, save() makes a named checkpoint: pass both a path "
                "and a name, e.g. Checkpoint().save('./model.pt', name='resnet50')."
            )
        from ..core.user_dirs import user_path  # here: `import metaflow` loads this module

        src = os.path.abspath(user_path(path))  # ~ is home, as in a shell
        if not os.path.exists(src):
            raise CheckpointConfigError("Cannot save %s: no such file or directory." % src)
        from ..task.models import publisher_here

        store = self._store()
        manifest = store.save(
            src,
            library_scope(name),
            name=name,
            metadata=metadata,
            latest=latest,
            # By default its own version, never another save's (issue 14 F5): a shared version
            # is deleted for every holder by delete() of either.
            reuse_identical=reuse_identical,
            progress=progress,
            publisher=publisher_here(self._origin),
        )
        return reference_of(store, manifest)

    def generate_key(self, name: str, version_id: Any = None) -> str:
        """Not supported: a key exists once a checkpoint is committed.

        Raises
        ------
        CheckpointConfigError
            Always, naming the equivalent: ``save()`` returns the reference, ``ref["key"]``.
        """
        raise CheckpointConfigError(
            "Checkpoint.generate_key(%r) is not supported: a checkpoint's key exists only once it "
            "is committed. save() returns its reference; use ref['key'] (or the reference "
            "itself) to load it later." % (name,)
        )

    def promote(self, reference: Any, to: str) -> CheckpointReference:
        """Let the namespace ``to`` use one version of a named checkpoint by its name.

        A bare name (``"resnet50"``, ``@checkpoint(models=["resnet50"])``) resolves, for a run
        or client in namespace N, to the newest version published from N or promoted to N.
        Promoting is how a version published elsewhere (e.g. uploaded by a user) reaches a
        production namespace.  The promotion is logged (who, when, from which namespace;
        ``metaflow checkpoint show`` prints the log) and pins the version, so retention and
        :meth:`delete` keep it.

        Parameters
        ----------
        reference : str or CheckpointReference
            One exact version: ``"resnet50@<version id or unique prefix>"``, a reference or its
            key.  A bare name is refused: say which version.
        to : str
            The whole namespace, ``"kind:value"``: ``"production:<token>"``, ``"user:bob"``.

        Returns
        -------
        CheckpointReference
            The promoted version.

        Raises
        ------
        CheckpointConfigError
            A bare name, a task's checkpoint (only named checkpoints are promoted) or a
            malformed namespace; nothing is written.

        Examples
        --------
        ::

            Checkpoint().promote("resnet50@1f0c2a", to="production:TrainFlow-0-abcd")
        """
        promotions.validate_namespace(to)
        store, manifest = self._exact_version(reference, "promote", to)
        promotions.promote(store.storage, manifest, to, by=self._actor())
        store.pin(manifest.key)
        return reference_of(store, store.read(manifest.key))

    def unpromote(self, reference: Any, to: str) -> CheckpointReference:
        """Withdraw a promotion made with :meth:`promote` (logged as well).

        The namespace ``to`` then resolves the name to its next trusted version.  The pin that
        :meth:`promote` set is left in place (:meth:`unpin` removes it).

        Raises
        ------
        CheckpointNotFound
            The version is not promoted to ``to``.
        CheckpointConfigError
            As for :meth:`promote`.
        """
        promotions.validate_namespace(to)
        store, manifest = self._exact_version(reference, "unpromote", to)
        promotions.unpromote(store.storage, manifest, to, by=self._actor())
        return reference_of(store, store.read(manifest.key))

    def _exact_version(
        self, reference: Any, verb: str, namespace: str
    ) -> tuple[CheckpointStore, Manifest]:
        """The one version of a named checkpoint ``reference`` designates explicitly: a bare
        name (or ``name@latest``, ``name@last``) means whichever version the asker trusts."""
        spec = refspec.parse(reference)
        unpinned_name = spec.kind == refspec.NAMED and not spec.version
        if unpinned_name or (
            spec.kind == refspec.ALIAS and spec.name is not None and spec.alias.metric is None
        ):
            name = spec.name
            raise CheckpointConfigError(
                "%s needs one exact version, not the name %r (which version it means depends "
                "on who asks): `metaflow checkpoint %s %s@<version> --to %s`; `metaflow "
                "checkpoint list --named --name %s` lists the versions and their publishers."
                % (verb, reference, verb, name, namespace, name)
            )
        store, manifest = self._resolve(spec)
        if not manifest.scope.is_library:
            raise CheckpointConfigError(
                "Only versions of named checkpoints can be %sd; %s is a checkpoint of the task "
                "%s." % (verb, manifest.key, manifest.scope.pathspec)
            )
        return store, manifest

    def _actor(self) -> dict:
        """Who promotes: this process's user and namespace."""
        from ..task.models import identity

        user, namespace = identity()
        return {"user": user, "namespace": namespace}

    def _promotion_story(self, ref: CheckpointReference) -> dict:
        """Where a version of a named checkpoint is promoted now, and its promotion log."""
        if ref.pathspec is not None:
            return {"promoted_to": [], "promotions": []}
        storage = self._store(ref.root).storage
        return {
            "promoted_to": promotions.promotions_of(storage, ref.name).get(ref.version, []),
            "promotions": promotions.history(storage, ref.name, ref.version),
        }
