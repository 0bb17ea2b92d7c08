"""Find where a flow's checkpoints live and which of them the current namespace may see.

Used by the client and the CLI only (never inside a task): it asks Metaflow's client for runs,
their metadata (``checkpoint-root``, ``ds-type``/``ds-root``) and tags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from ..common.refspec import Target
from ..common.settings import ROOT_METADATA, checkpoint_root
from ..core.layout import MANIFESTS_PREFIX, flow_prefix, step_prefix
from ..errors import CheckpointConfigError, CheckpointNotFound, CheckpointScopeError

# Namespaces a task can write under: ``current.namespace`` is the writer's identity.
_IDENTITY_TAGS = ("user:", "production:")


def default_root() -> str:
    """``METAFLOW_CHECKPOINT_ROOT``, else the checkpoint root of the default datastore."""
    from metaflow.metaflow_config import DEFAULT_DATASTORE
    from metaflow.plugins import DATASTORES

    from ..common.settings import _setting

    override = _setting("CHECKPOINT_ROOT")
    if override:
        return override
    impl = next((d for d in DATASTORES if d.TYPE == DEFAULT_DATASTORE), None)
    if impl is None:
        raise CheckpointConfigError("Unknown default datastore %r." % DEFAULT_DATASTORE)
    root = impl.get_datastore_root_from_config(lambda *a, **k: None, create_on_absent=False)
    if not root:
        raise CheckpointConfigError(
            "No %s datastore found from %s: run a flow here first, or set "
            "METAFLOW_DATASTORE_SYSROOT_%s or METAFLOW_CHECKPOINT_ROOT."
            % (DEFAULT_DATASTORE, os.getcwd(), DEFAULT_DATASTORE.upper())
        )
    return checkpoint_root(DEFAULT_DATASTORE, root)


def _run(target: Target, check_namespace: bool):
    """The client ``Run`` of ``target``, with Metaflow's errors turned into ours."""
    from metaflow import Run
    from metaflow.exception import MetaflowNamespaceMismatch, MetaflowNotFound

    pathspec = "%s/%s" % (target.flow, target.run)
    try:
        return Run(pathspec, _namespace_check=check_namespace)
    except MetaflowNamespaceMismatch:
        from metaflow import get_namespace

        raise CheckpointScopeError(
            "Run %s is not in the current namespace %r; call namespace(None) (CLI: "
            "--all-namespaces) to see every namespace." % (pathspec, get_namespace())
        ) from None
    except MetaflowNotFound:
        raise CheckpointNotFound("Unknown run %s: no such flow or run." % pathspec) from None


def _check_flow(flow: str) -> Any:
    from metaflow import Flow
    from metaflow.exception import MetaflowNotFound

    try:
        return Flow(flow)
    except MetaflowNotFound:
        raise CheckpointNotFound("Unknown flow %r: no run of it is recorded." % flow) from None


def root_of_run(run: Any, step: Optional[str] = None) -> Optional[str]:
    """The checkpoint root a run's @checkpoint tasks registered, else its datastore's."""
    fallback = None
    for s in run:
        if step is not None and s.id != step:
            continue
        for task in s:
            md = task.metadata_dict
            if md.get(ROOT_METADATA):
                return md[ROOT_METADATA]
            if fallback is None and md.get("ds-type") and md.get("ds-root"):
                fallback = checkpoint_root(md["ds-type"], md["ds-root"])
            break  # one task per step tells
    return fallback


@dataclass
class Located:
    """Where to list: the store root, key prefixes, and which runs are visible (None = all)."""

    root: str
    prefixes: list[str]
    runs: Optional[set] = None


def locate(target: Target, root: Optional[str] = None) -> Located:
    """Resolve a target against the current Metaflow namespace.

    Raises
    ------
    CheckpointNotFound
        Unknown flow or run.
    CheckpointScopeError
        The run exists but is not visible in the current namespace.
    """
    from metaflow import get_namespace

    ns = get_namespace()
    if target.run is not None:
        run = _run(target, check_namespace=ns is not None)
        root = root or root_of_run(run, target.step) or default_root()
        # Checkpoints live under their writer's namespace: the run's user/production tag.
        namespaces = sorted(t for t in run.system_tags if t.startswith(_IDENTITY_TAGS))
        if not namespaces:
            return Located(root, [MANIFESTS_PREFIX], {target.run})
        if target.step is not None:
            prefixes = [step_prefix(n, target.flow, target.step) for n in namespaces]
        else:
            prefixes = [flow_prefix(n, target.flow) for n in namespaces]
        return Located(root, prefixes, {target.run})
    from metaflow.exception import MetaflowNamespaceMismatch

    try:
        flow = _check_flow(target.flow)
        latest = flow.latest_run  # the newest run visible in the current namespace
    except MetaflowNamespaceMismatch:
        latest = None
    if latest is None and ns is not None:
        raise CheckpointScopeError(
            "Flow %s has no run in the current namespace %r; call namespace(None) (CLI: "
            "--all-namespaces) to see every namespace." % (target.flow, ns)
        )
    if root is None:
        root = (latest and root_of_run(latest)) or default_root()
    if ns is None:
        return Located(root, [MANIFESTS_PREFIX])
    if ns.startswith(_IDENTITY_TAGS):
        return Located(root, [flow_prefix(ns, target.flow)])
    # A tag namespace: checkpoints of every writer, restricted to the runs it makes visible.
    return Located(root, [MANIFESTS_PREFIX], {r.id for r in flow.runs()})
