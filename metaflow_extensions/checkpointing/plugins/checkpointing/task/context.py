"""What a process started by a ``@checkpoint`` task needs to save into that task's scope.

The task's session (``session.py``) exports it as one environment variable, so ``torchrun``
workers, ``subprocess`` children and framework callbacks without access to ``current`` can use
``from metaflow import Checkpoint`` exactly as the task does.  The variable is read back here,
checked field by field (a malformed one is a :class:`CheckpointConfigError` naming it), and a
context whose task has ended (its directory removed by the session's end) refuses to be used:
a process that outlives its task must not commit into a finished task.

The context carries the ``@parallel`` node index and node count of the task's step process; a
subprocess adds its own ``torchrun`` variables (``LOCAL_RANK``, ``RANK``, ``WORLD_SIZE``,
``TORCHELASTIC_RESTART_COUNT``) to know which writer and which participant of sharded saves it
is (:mod:`.ranks`).
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from ..core.position import MAX_INDEX
from ..core.scope import Scope
from ..errors import CheckpointConfigError

if TYPE_CHECKING:
    from .ranks import Ranks

#: JSON: checkpoint root, scope, directory, temp dir root and retention of the running task.
TASK_ENV = "METAFLOW_CHECKPOINT_TASK"
#: The running task's ``current.checkpoint.directory``, for tools that only want the directory.
DIRECTORY_ENV = "METAFLOW_CHECKPOINT_DIR"

_SCOPE_TEXT = ("namespace", "flow", "step", "foreach", "run", "task")


@dataclass(frozen=True)
class TaskContext:
    """The running task's checkpoint settings, as inherited by its child processes."""

    root: str
    scope: Scope
    directory: str
    temp_dir_root: Optional[str] = None
    retention: dict = field(default_factory=dict)
    #: The task's ``@parallel`` node index and node count (0 of 1 outside ``@parallel``).
    node: int = 0
    nodes: int = 1
    #: The step's ``@checkpoint(compression=...)``: a child's saves store blobs as the task's do.
    compression: Optional[str] = None
    #: The step's ``@checkpoint(upload=, upload_errors=)`` and its local tier's base directory:
    #: a child saves into the same tier (``upload_policy.py``).
    upload: str = "each"
    upload_errors: str = "fail"
    tier_base: Optional[str] = None

    def to_env(self) -> str:
        return json.dumps(
            {
                **({"compression": self.compression} if self.compression else {}),
                **(self._upload_fields() if self.tier_base else {}),
                "root": self.root,
                "scope": self.scope.to_dict(),
                "directory": self.directory,
                "temp_dir_root": self.temp_dir_root,
                "retention": self.retention,
                "node": self.node,
                "nodes": self.nodes,
            },
            sort_keys=True,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Optional[TaskContext]:
        """The context of the task this process belongs to, or None outside any task.

        Raises
        ------
        CheckpointConfigError
            ``METAFLOW_CHECKPOINT_TASK`` is malformed (not JSON, a missing field, a wrong type,
            an unknown or invalid retention rule, a node index not below the node count),
            naming the variable and what is wrong; or it names a task that has ended (see
            :meth:`check_running`).  A context without ``node``/``nodes`` (written by an
            earlier release) is node 0 of 1.
        """
        raw = environ.get(TASK_ENV)
        if not raw:
            return None
        try:
            d = json.loads(raw)
        except ValueError as exc:
            raise _malformed("it is not JSON (%s)" % exc) from None
        if not isinstance(d, dict):
            raise _malformed("it is a JSON %s, not an object" % type(d).__name__)
        context = cls(
            root=_text(d, "root"),
            scope=_scope(d.get("scope")),
            directory=_text(d, "directory"),
            temp_dir_root=_text(d, "temp_dir_root", optional=True),
            retention=_retention(d.get("retention")),
            **_nodes(d),
            compression=_compression(d.get("compression")),
            **_upload(d),
        )
        context.check_running()
        return context

    def check_running(self) -> None:
        """Refuse a context whose task has ended: the task's session removes its directory
        when it ends, so a process that outlives it cannot commit into a finished task.

        Raises
        ------
        CheckpointConfigError
            Naming the task, the directory and what to do instead.
        """
        if not os.path.isdir(self.directory):
            raise CheckpointConfigError(
                "%s names task %s, whose checkpoint directory %s no longer exists: that task "
                "has ended, and a finished task takes no more checkpoints. Unset %s in this "
                "process (it is inherited from the task), or use Checkpoint(root=...) to work "
                "with a store directly."
                % (TASK_ENV, self.scope.pathspec, self.directory, TASK_ENV),
                path=self.directory,
            )

    def ranks(self, environ: Mapping[str, str] = os.environ) -> Ranks:
        """This process among the task's writers: the task's node and its own ``torchrun``
        variables (:meth:`.ranks.Ranks.of_subprocess`).

        Raises
        ------
        CheckpointConfigError
            A ``torchrun`` variable with a malformed value, naming it.
        """
        from .ranks import Ranks

        return Ranks.of_subprocess(self.node, self.nodes, environ)

    def runtime(self, directory: Optional[str] = None, ranks: Optional[Ranks] = None):
        """A ``CheckpointRuntime`` on the task's scope (``current.checkpoint``'s twin), made by
        the task's own builder (``builder.build``) with the settings read here, once, saving
        as ``ranks`` (default :meth:`ranks`).  Its saves refuse once the task has ended
        (:meth:`check_running`)."""
        from ..common.settings import store_for_url
        from ..core import retention
        from .builder import build_runtime

        store = store_for_url(self.root)
        store.options = store.options.with_compression(self.compression)
        upload = None
        if self.tier_base is not None:
            from .upload_policy import UploadPolicy

            upload = UploadPolicy(
                store, mode=self.upload, errors=self.upload_errors, base=self.tier_base
            )
        return build_runtime(
            store,
            self.scope,
            directory or self.directory,
            retention=retention.build(**self.retention),
            ranks=ranks if ranks is not None else self.ranks(),
            guard=self.check_running,
            upload=upload,
        )

    def _upload_fields(self) -> dict:
        from .upload_policy import upload_fields  # (loaded already: this task has a policy)

        return upload_fields(self.upload, self.upload_errors, self.tier_base)


def _malformed(what: str) -> CheckpointConfigError:
    return CheckpointConfigError(
        "%s is malformed: %s. A @checkpoint task sets it for the processes it starts; unset it "
        "in a process that is not one of them." % (TASK_ENV, what)
    )


def _text(d: Mapping[str, Any], name: str, optional: bool = False) -> Optional[str]:
    value = d.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise _malformed(
            "field %r is %s, not a non-empty string"
            % (name, "missing" if name not in d else repr(value))
        )
    return value


def _scope(value: Any) -> Scope:
    if not isinstance(value, dict):
        raise _malformed("field 'scope' is %r, not an object" % (value,))
    for name in _SCOPE_TEXT:
        part = value.get(name)
        if not isinstance(part, str) or not part:
            raise _malformed(
                "scope field %r is %s, not a non-empty string"
                % (name, "missing" if name not in value else repr(part))
            )
    attempt = value.get("attempt")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise _malformed("scope field 'attempt' is %r, not a whole number >= 0" % (attempt,))
    return Scope.from_dict(value)


def _nodes(d: Mapping[str, Any]) -> dict:
    """``node`` and ``nodes`` of a context (absent: node 0 of 1)."""
    node, nodes = d.get("node", 0), d.get("nodes", 1)
    for name, value, low in (("node", node, 0), ("nodes", nodes, 1)):
        if type(value) is not int or not low <= value <= MAX_INDEX:
            raise _malformed("field %r is %r, not a whole number >= %d" % (name, value, low))
    if node >= nodes:
        raise _malformed("field 'node' is %d, not below field 'nodes' (%d)" % (node, nodes))
    return {"node": node, "nodes": nodes}


def _compression(value: Any) -> Optional[str]:
    """The task's codec (absent, as in contexts of earlier releases: plain)."""
    from ..core.codec import check_setting

    try:
        return check_setting(value)
    except CheckpointConfigError as exc:
        if isinstance(exc, ImportError):
            raise  # a missing package names its extra, not a malformed variable
        raise _malformed("field 'compression' is %r: %s" % (value, exc.message)) from None


def _retention(value: Any) -> dict:
    from ..core import retention

    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _malformed("field 'retention' is %r, not an object" % (value,))
    known = [
        p
        for p in inspect.signature(retention.build).parameters
        if p.startswith("keep_") or p == "expire_after_days"
    ]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise _malformed(
            "retention has unknown rule(s) %s (known: %s)" % (", ".join(unknown), ", ".join(known))
        )
    try:
        retention.build(**value)
    except CheckpointConfigError as exc:
        raise _malformed("retention: %s" % exc.message.rstrip(".")) from None
    return dict(value)


def _upload(d: Mapping[str, Any]) -> dict:
    """``upload``, ``upload_errors`` and ``tier_base`` of a context (absent: each, fail)."""
    from .attributes import UPLOAD_ERRORS, UPLOAD_MODES

    if d.get("tier_base") is None:
        return {}
    out = {"tier_base": _text(d, "tier_base")}
    for name, allowed in (("upload", UPLOAD_MODES), ("upload_errors", UPLOAD_ERRORS)):
        if d.get(name) not in allowed:
            raise _malformed("field %r is %r, not one of %s" % (name, d.get(name), allowed))
        out[name] = d[name]
    return out
