"""Browse and load checkpoints from outside a task: ``from metaflow import Checkpoint``.

Checkpoints are found through Metaflow's own objects: a pathspec (``"Flow"``, ``"Flow/run"``,
``"Flow/run/step"``, ``"Flow/run/step/task"``) or a client object locates the flow's datastore
(from the run's ``ds-type``/``ds-root`` metadata, else the configured default datastore), and
only checkpoints of the current Metaflow namespace are listed (``namespace(None)`` lists all).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from .core.scope import MANIFESTS, flow_prefix, step_prefix
from .core.store import CheckpointStore
from .errors import CheckpointConfigError, CheckpointNotFound
from .reference import CheckpointReference
from .settings import ROOT_METADATA


def _parse_target(target: Any) -> list[str]:
    pathspec = getattr(target, "pathspec", target)
    if not isinstance(pathspec, str) or not pathspec.strip("/"):
        raise CheckpointConfigError(
            "%r is not a pathspec: use 'Flow', 'Flow/run_id', 'Flow/run_id/step' or "
            "'Flow/run_id/step/task_id', or a Metaflow Flow/Run/Step/Task object." % (target,)
        )
    parts = pathspec.strip("/").split("/")
    if len(parts) > 4:
        raise CheckpointConfigError("%r has too many components for a task pathspec." % pathspec)
    return parts


def _root_of(parts: list[str]) -> str:
    """The checkpoint root of a run: the ``checkpoint-root`` its @checkpoint tasks registered,
    else derived from its datastore (``ds-type``/``ds-root`` metadata), else the default."""
    from .settings import checkpoint_root

    if len(parts) >= 2:
        from metaflow import Run

        try:
            run = Run("/".join(parts[:2]), _namespace_check=False)
            fallback = None
            for step in run:
                if len(parts) >= 3 and step.id != parts[2]:
                    continue
                for task in step:
                    md = task.metadata_dict
                    if md.get(ROOT_METADATA):
                        return md[ROOT_METADATA]
                    if fallback is None and md.get("ds-type") and md.get("ds-root"):
                        fallback = checkpoint_root(md["ds-type"], md["ds-root"])
                    break  # one task per step tells
            if fallback:
                return fallback
        except Exception as exc:  # noqa: BLE001 - re-raised as a one-line named error
            raise CheckpointNotFound(
                "Cannot find run %s: %s" % ("/".join(parts[:2]), exc)
            ) from None
    from metaflow.metaflow_config import DEFAULT_DATASTORE
    from metaflow.plugins import DATASTORES

    impl = next((d for d in DATASTORES if d.TYPE == DEFAULT_DATASTORE), None)
    if impl is None:
        raise CheckpointConfigError("Unknown default datastore %r." % DEFAULT_DATASTORE)
    root = impl.get_datastore_root_from_config(lambda *a, **k: None, create_on_absent=False)
    if not root:
        raise CheckpointConfigError(
            "No %s datastore found from %s: run a flow first or set "
            "METAFLOW_DATASTORE_SYSROOT_%s."
            % (DEFAULT_DATASTORE, os.getcwd(), DEFAULT_DATASTORE.upper())
        )
    return checkpoint_root(DEFAULT_DATASTORE, root)


class Checkpoint:
    """Checkpoints of flows, runs, steps and tasks, from a notebook or a script.

    Parameters
    ----------
    root : str, optional
        Checkpoint store root (path or URL).  Default: found from the flow's datastore.
    """

    def __init__(self, root: Optional[str] = None):
        self._root = root
        self._stores: dict[str, CheckpointStore] = {}

    def _store(self, parts: list[str]) -> CheckpointStore:
        from .settings import store_for_url

        url = self._root or _root_of(parts)
        if url not in self._stores:
            self._stores[url] = store_for_url(url)
        return self._stores[url]

    def list(
        self,
        target: Any,
        *,
        name: Optional[str] = None,
        attempt: Optional[int] = None,
        latest_only: bool = False,
    ) -> list[CheckpointReference]:
        """Committed checkpoints under ``target`` in the current namespace, newest first.

        Parameters
        ----------
        target : str or metaflow client object
            ``"Flow"``, ``"Flow/run"``, ``"Flow/run/step"``, ``"Flow/run/step/task"`` or a
            ``Flow``/``Run``/``Step``/``Task`` object.
        name : str, optional
            Only this checkpoint series.
        attempt : int, optional
            Only checkpoints written by this attempt.
        latest_only : bool
            Only checkpoints saved with ``latest=True``.
        """
        from metaflow import get_namespace

        parts = _parse_target(target)
        flow, run = parts[0], parts[1] if len(parts) > 1 else None
        step, task = (parts + [None] * 3)[2:4]
        store = self._store(parts)
        ns = get_namespace()
        if ns is None:
            prefixes = [MANIFESTS + "/"]  # namespace(None): every namespace
        elif step:
            prefixes = [step_prefix(ns, flow, step)]
        else:
            prefixes = [flow_prefix(ns, flow)]
        headers = []
        for prefix in prefixes:
            headers.extend(
                h
                for h in store.headers(
                    prefix, name=name, run=run, task=task, attempt=attempt, latest_only=latest_only
                )
                if h.scope.flow == flow and (step is None or h.scope.step == step)
            )
        headers.sort(key=lambda h: h.order, reverse=True)
        return [
            CheckpointReference.from_manifest(m, store.url, store.storage.full_url(m.key))
            for m in store.read_many([h.key for h in headers])
        ]

    def load(self, reference: Any, path: str) -> str:
        """Download a checkpoint (a reference from ``list()``/``save()``) into ``path``."""
        if not isinstance(reference, dict) or "key" not in reference:
            raise CheckpointConfigError(
                "Cannot load %r: pass a reference returned by Checkpoint().list() or by "
                "current.checkpoint.save()." % (reference,)
            )
        from .settings import store_for_url

        store = store_for_url(reference.get("root") or self._root or "")
        manifest = store.read(reference["key"])
        target = os.path.abspath(path)
        store.load(manifest, target)
        return target
