"""What a running task may see when it resolves a reference (a :class:`..common.resolver.View`).

Used by ``current.checkpoint.load`` and by ``Checkpoint()`` in a process the task started.  A
task sees its own store and its own namespace there, and lists by key prefix without Metaflow's
client (a task may run where no metadata service is reachable): ``Flow/run@last`` is the newest
checkpoint of that run among the namespace's, ``Flow/@best:acc`` the best of the flow's (as is
``Flow@best:acc`` when the store holds no checkpoint named ``Flow``: the resolver's one rule).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Callable, Optional

from ..common.refspec import Target
from ..common.resolver import describe, other_store_error
from ..core.layout import MANIFESTS_PREFIX, flow_prefix, step_prefix
from ..core.manifest import ManifestHeader
from ..core.policies import sort_key
from ..core.position import RANK0, Position
from ..core.scope import Scope
from ..core.store import CheckpointStore
from ..errors import CheckpointConfigError, CheckpointScopeError
from ..storage.factory import same_root


class TaskView:
    """A task's view of the checkpoint stores.

    Parameters
    ----------
    store : CheckpointStore
        The task's store.
    scope : Scope
        The task's scope: its namespace is where names resolve and what it lists.
    other_stores : bool
        Whether a reference may name another store (``namespace_check=False``, or a
        ``Checkpoint()`` client, which reads any store it is given).
    reader : str or None
        The namespace names resolve in; None trusts every publisher
        (``namespace_check=False``).
    observe : callable, optional
        Called with the dates (``created_ms``) of the task's own checkpoints this view lists,
        so the task's clock never dates a save before one it has seen.
    position : Position
        The writer position of the process resolving (``"last"`` and ``"best:<metric>"``
        alone pick among what it would load on retry: ``policies.visible_to``).
    """

    def __init__(
        self,
        store: CheckpointStore,
        scope: Scope,
        *,
        other_stores: bool = False,
        reader: Optional[str] = None,
        observe: Optional[Callable[[Iterable[int]], None]] = None,
        position: Position = RANK0,
    ):
        self._store = store
        self.task_scope: Optional[Scope] = scope
        self.position: Optional[Position] = position
        self._other_stores = other_stores
        self._reader = reader
        self._observe = observe
        self._opened: dict[str, CheckpointStore] = {}

    def store(self, root: Optional[str], key: str) -> CheckpointStore:
        if root is None or same_root(root, self._store.url):
            return self._store
        if not self._other_stores:
            raise other_store_error(key, root, self._store.url)
        if root not in self._opened:
            from ..common.settings import store_for_url

            self._opened[root] = store_for_url(root)
        return self._opened[root]

    def reader(self) -> Optional[str]:
        return self._reader

    def listing(self, target: Target) -> tuple[CheckpointStore, list[ManifestHeader]]:
        """Checkpoints under ``target`` in the task's namespace and store (one prefix
        listing), newest first: as a retry orders them for a task, by date otherwise."""
        scope = self.task_scope
        assert scope is not None
        namespace = scope.namespace
        if target.step is not None:
            prefix = step_prefix(namespace, target.flow, target.step)
        else:
            prefix = flow_prefix(namespace, target.flow)
        headers = self._store.headers(prefix, run=target.run, task=target.task)
        if not headers and target.run is not None:
            headers = self._other_namespaces(target)
        if self._observe is not None:
            ours = scope.task_prefix()
            self._observe(h.created_ms for h in headers if h.scope.task_prefix() == ours)
        headers.sort(key=sort_key(within_task=target.task is not None), reverse=True)
        return self._store, headers

    def _other_namespaces(self, target: Target) -> list[ManifestHeader]:
        """The checkpoints of a run (step, task) saved in another namespace: listed when names
        resolve in any namespace (``namespace_check=False``), else a CheckpointScopeError
        saying whose they are.  One listing of every namespace, on this path only."""
        scope = self.task_scope
        assert scope is not None
        found = [
            h
            for h in self._store.headers(MANIFESTS_PREFIX, run=target.run, task=target.task)
            if h.scope.flow == target.flow and target.step in (None, h.scope.step)
        ]
        if found and self._reader is not None:
            raise CheckpointScopeError(
                "The checkpoints of %s belong to namespace %r but this task runs in %r; pass "
                "namespace_check=False to load them anyway."
                % (describe(target), found[0].scope.namespace, scope.namespace)
            )
        return found


class NamesView:
    """The view of a task's ``@checkpoint(models=[...])``: named checkpoints of the task's
    store, resolved in the run's namespace (no task checkpoint, no other store).

    Parameters
    ----------
    store : CheckpointStore
        The task's store.
    namespace : str or None
        The namespace names resolve in (None: every publisher is trusted).
    """

    task_scope: Optional[Scope] = None
    position: Optional[Position] = None

    def __init__(self, store: CheckpointStore, namespace: Optional[str]):
        self._store = store
        self._namespace = namespace

    def store(self, root: Optional[str], key: str) -> CheckpointStore:
        if root is not None and not same_root(root, self._store.url):
            raise other_store_error(key, root, self._store.url)
        return self._store

    def reader(self) -> Optional[str]:
        return self._namespace

    def listing(self, target: Target) -> tuple[CheckpointStore, list[ManifestHeader]]:
        raise CheckpointConfigError(
            "@checkpoint(models=[...]) takes named checkpoints ('name' or 'name@<version>'), "
            "not %r: load a run's checkpoint with current.checkpoint.load()." % target.pathspec
        )
