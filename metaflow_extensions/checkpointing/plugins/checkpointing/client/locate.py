"""Find where a flow's checkpoints live and which of them the current namespace may see.

Used by the client and the CLI only (never inside a task): it asks Metaflow's client for runs,
their metadata (``checkpoint-root``, ``ds-type``/``ds-root``) and tags, and checks that a step
or task a listing names exists (:func:`check_step`, :func:`check_task`).
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


@dataclass
class RunRoots:
    """Where one run's checkpoints live, read from its tasks' metadata.

    Attributes
    ----------
    steps : list of str
        Every step of the run, oldest first.
    recorded : dict
        Step name -> the checkpoint root its ``@checkpoint`` tasks recorded (``checkpoint-root``).
    datastore : str, optional
        The checkpoint root of the run's datastore (``ds-type``/``ds-root``): where runs of
        releases that did not record a root wrote.
    """

    steps: list[str]
    recorded: dict[str, str]
    datastore: Optional[str] = None

    def roots(self, step: Optional[str] = None) -> list[str]:
        """The distinct roots of the run (of ``step`` only when given), in step order."""
        if step is not None:
            root = self.recorded.get(step) or self.datastore
            return [root] if root else []
        roots = list(dict.fromkeys(self.recorded.values()))
        return roots or ([self.datastore] if self.datastore else [])


#: Roots of runs that have finished (their ``end`` task recorded ``attempt_ok``): they never
#: change, so a process reads each run's metadata once.  Key: (metadata provider, pathspec).
_RUNS: dict[tuple[str, str], RunRoots] = {}


def _cache_key(run: Any) -> tuple[str, str]:
    from metaflow import get_metadata

    return (get_metadata(), run.pathspec)


def run_roots(run: Any, step: Optional[str] = None) -> RunRoots:
    """The roots of a client ``Run``: one metadata read per step (its newest task), only of
    ``step`` when given; cached for a finished run.
    """
    key = _cache_key(run)
    cached = _RUNS.get(key)
    if cached is not None:
        return cached
    steps, recorded, datastore, finished = [], {}, None, False
    for s in run:  # newest step first
        steps.append(s.id)
        if step is not None and s.id != step:
            continue
        for task in s:
            md = task.metadata_dict
            if md.get(ROOT_METADATA):
                recorded[s.id] = md[ROOT_METADATA]
            if datastore is None and md.get("ds-type") and md.get("ds-root"):
                datastore = checkpoint_root(md["ds-type"], md["ds-root"])
            finished = finished or (s.id == "end" and "attempt_ok" in md)
            break  # one task per step tells
    steps.reverse()
    recorded = {s: recorded[s] for s in steps if s in recorded}
    info = RunRoots(steps, recorded, datastore)
    if finished and step is None:
        _RUNS[key] = info
    return info


def check_step(run: Any, step: str) -> None:
    """Raise unless ``step`` is a step of ``run`` (a client ``Run``): one listing of its steps,
    none when :func:`run_roots` already cached them.  The resolver and the listings call it.

    Raises
    ------
    CheckpointNotFound
        The run has no step of that name; the message lists the steps it has.
    """
    cached = _RUNS.get(_cache_key(run))
    _check_step(run, step, cached.steps if cached else [s.id for s in reversed(list(run))])


def _check_step(run: Any, step: str, steps: list[str]) -> None:
    if step not in steps:
        raise CheckpointNotFound(
            "Step %r does not exist in run %s; its steps: %s."
            % (step, run.pathspec, ", ".join(steps) or "none")
        )


def check_task(target: Target) -> None:
    """Raise unless the task of ``target`` (``Flow/run/step/task``) exists.

    Raises
    ------
    CheckpointNotFound
        No such task in that step; the message lists the step's tasks.
    """
    from metaflow import Step, Task
    from metaflow.exception import MetaflowNotFound

    try:
        Task(target.pathspec, _namespace_check=False)
    except MetaflowNotFound:
        pathspec = "%s/%s/%s" % (target.flow, target.run, target.step)
        tasks = sorted((t.id for t in Step(pathspec, _namespace_check=False)), key=_natural)
        raise CheckpointNotFound(
            "Task %r does not exist in step %s; its tasks: %s."
            % (target.task, pathspec, ", ".join(tasks) or "none")
        ) from None


def _natural(text: str) -> tuple:
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


@dataclass
class Located:
    """Where to list: the store roots (newest run's first), key prefixes, and which runs are
    visible (None = all)."""

    roots: list[str]
    prefixes: list[str]
    runs: Optional[set] = None

    @property
    def root(self) -> str:
        """The first root: the newest run's (a run's own when it has one)."""
        return self.roots[0]


def locate(target: Target, root: Optional[str] = None, step: Optional[str] = None) -> Located:
    """Resolve a target against the current Metaflow namespace.

    Every root the target's visible runs recorded is listed (a flow run once on a local and
    once on an S3 datastore, a step with ``@checkpoint(root=...)``), unless ``root`` is given.
    ``step`` narrows a flow target to that step of its runs (their roots of that step only).

    Raises
    ------
    CheckpointNotFound
        Unknown flow, run or step (the step's message lists the steps there are).
    CheckpointScopeError
        The run exists but is not visible in the current namespace.
    """
    from metaflow import get_namespace

    ns = get_namespace()
    if target.run is not None:
        run = _run(target, check_namespace=ns is not None)
        if root:
            roots = [root]
            if target.step is not None:
                check_step(run, target.step)
        else:
            info = run_roots(run, target.step)
            if target.step is not None:
                _check_step(run, target.step, info.steps)
            roots = info.roots(target.step) or [default_root()]
        # Checkpoints live under their writer's namespace: the run's user/production tag.
        namespaces = sorted(t for t in run.system_tags if t.startswith(_IDENTITY_TAGS))
        if not namespaces:
            return Located(roots, [MANIFESTS_PREFIX], {target.run})
        if target.step is not None:
            prefixes = [step_prefix(n, target.flow, target.step) for n in namespaces]
        else:
            prefixes = [flow_prefix(n, target.flow) for n in namespaces]
        return Located(roots, prefixes, {target.run})
    from metaflow.exception import MetaflowNamespaceMismatch

    try:
        flow = _check_flow(target.flow)
        runs = list(flow)  # the runs visible in the current namespace, newest first
    except MetaflowNamespaceMismatch:
        runs = []
    if not runs and ns is not None:
        raise CheckpointScopeError(
            "Flow %s has no run in the current namespace %r; call namespace(None) (CLI: "
            "--all-namespaces) to see every namespace." % (target.flow, ns)
        )
    roots = [root] if root else flow_roots(target.flow, runs, step) or [default_root()]
    if ns is None:
        return Located(roots, [MANIFESTS_PREFIX])
    if ns.startswith(_IDENTITY_TAGS):
        return Located(roots, [flow_prefix(ns, target.flow)])
    # A tag namespace: checkpoints of every writer, restricted to the runs it makes visible.
    return Located(roots, [MANIFESTS_PREFIX], {r.id for r in runs})


def flow_roots(flow: str, runs: list, step: Optional[str] = None) -> list[str]:
    """The distinct roots of ``runs`` (of ``step`` only when given), newest run's first.

    Raises
    ------
    CheckpointNotFound
        ``step`` is a step of none of the runs; the message lists the steps they have.
    """
    roots: dict[str, None] = {}
    steps: dict[str, None] = {}
    for info in _each_run_roots(runs, step):
        steps.update(dict.fromkeys(info.steps))
        roots.update(dict.fromkeys(info.roots(step)))
    if step is not None and runs and step not in steps:
        raise CheckpointNotFound(
            "Step %r does not exist in any run of %s; its steps: %s."
            % (step, flow, ", ".join(steps) or "none")
        )
    return list(roots)


#: Runs whose metadata is read at once when a flow's roots are first gathered: the reads are
#: network round trips with a metadata service (a few per run), so a flow of 500 runs is not
#: 500 sequential waits.
_READERS = 8


def _each_run_roots(runs: list, step: Optional[str]) -> list[RunRoots]:
    """:func:`run_roots` of each run, in order; the uncached ones read concurrently."""
    pending = [r for r in runs if _cache_key(r) not in _RUNS]
    if len(pending) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(_READERS, len(pending))) as pool:
            read = dict(
                zip((r.pathspec for r in pending), pool.map(lambda r: run_roots(r, step), pending))
            )
        return [read.get(r.pathspec) or run_roots(r, step) for r in runs]
    return [run_roots(r, step) for r in runs]
