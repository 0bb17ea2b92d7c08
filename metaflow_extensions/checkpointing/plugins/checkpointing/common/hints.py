"""What a reference that designates nothing may have meant: the hints :mod:`.resolver` adds to
its ``CheckpointNotFound`` messages.  Each costs one more listing through the caller's view, on
the error path only.
"""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointConfigError, CheckpointNotFound, CheckpointScopeError
from .refspec import RefSpec, Target

#: What a view's listing may raise for a target the caller cannot list.
_UNLISTABLE = (CheckpointNotFound, CheckpointScopeError, CheckpointConfigError)


def misspelt(view: Any, target: Target) -> str:
    """Why a step or task ``target`` that lists no checkpoint may be misspelt: ``": there is
    no step 'x' with checkpoints in run F/1 (its steps with checkpoints: ...)"`` (or the tasks
    of the step that have some), else ``""`` (one listing of the run, on this path only)."""
    if target.run is None or target.step is None:
        return ""
    try:
        run = view.listing(Target(target.flow, target.run))[1]
    except _UNLISTABLE:
        return ""
    steps = sorted({h.scope.step for h in run})
    tasks = sorted({h.scope.task for h in run if h.scope.step == target.step})
    if run and target.step not in steps:
        return ": there is no step %r with checkpoints in run %s/%s (its steps with " % (
            target.step,
            target.flow,
            target.run,
        ) + "checkpoints: %s)" % ", ".join(steps)
    if tasks and target.task is not None and target.task not in tasks:
        return ": step %s/%s/%s has checkpoints in tasks %s only" % (
            target.flow,
            target.run,
            target.step,
            ", ".join(tasks),
        )
    return ""


def flow_hint(view: Any, spec: RefSpec) -> str:
    """For a name no checkpoint has (``Flow``, ``Flow@latest``, ``Flow@1a2b``) that is a flow
    with checkpoints the caller sees: how to spell one of that flow's checkpoints (``latest``
    and a bare name are for named checkpoints), else ``""``."""
    name = str(spec.name)
    if not _flow_has_checkpoints(view, name):
        return ""
    return (
        " %s is a flow with checkpoints: say which, e.g. '%s@last', '%s@best:<metric>', "
        "'%s@<field>=<value>' or '%s/<run_id>/<step>/<task_id>@<id>' ('latest' and a bare "
        "name are for named checkpoints)." % (name, name, name, name, name)
    )


def shadowed_flow(view: Any, spec: RefSpec) -> str:
    """For ``word@<alias>`` that no version of the named checkpoint ``word`` satisfies while a
    flow ``word`` has checkpoints (the name shadows the flow): how to spell the flow's
    (``word/@<alias>``), else ``""``."""
    name = str(spec.name)
    if not _flow_has_checkpoints(view, name):
        return ""
    return (
        " %r names the checkpoint called %s, which shadows the flow %s; that flow has "
        "checkpoints too: '%s/@%s' picks among them."
        % (spec.text(), name, name, name, spec.alias.text)
    )


def _flow_has_checkpoints(view: Any, name: str) -> bool:
    """Whether a flow ``name`` has checkpoints the caller sees (a listing that fails: no)."""
    try:
        return bool(view.listing(Target(name))[1])
    except _UNLISTABLE:
        return False
