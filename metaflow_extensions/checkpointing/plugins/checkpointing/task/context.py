"""What a process started by a ``@checkpoint`` task needs to save into that task's scope.

The task's session (``session.py``) exports it as one environment variable, so ``torchrun``
workers, ``subprocess`` children and framework callbacks without access to ``current`` can use
``from metaflow import Checkpoint`` exactly as the task does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

from ..core.scope import Scope

#: JSON: checkpoint root, scope, directory, temp dir root and retention of the running task.
TASK_ENV = "METAFLOW_CHECKPOINT_TASK"
#: The running task's ``current.checkpoint.directory``, for tools that only want the directory.
DIRECTORY_ENV = "METAFLOW_CHECKPOINT_DIR"


@dataclass(frozen=True)
class TaskContext:
    """The running task's checkpoint settings, as inherited by its child processes."""

    root: str
    scope: Scope
    directory: str
    temp_dir_root: Optional[str] = None
    retention: dict = field(default_factory=dict)

    def to_env(self) -> str:
        return json.dumps(
            {
                "root": self.root,
                "scope": self.scope.to_dict(),
                "directory": self.directory,
                "temp_dir_root": self.temp_dir_root,
                "retention": self.retention,
            },
            sort_keys=True,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Optional[TaskContext]:
        """The context of the task this process belongs to, or None outside any task."""
        raw = environ.get(TASK_ENV)
        if not raw:
            return None
        d = json.loads(raw)
        return cls(
            root=d["root"],
            scope=Scope.from_dict(d["scope"]),
            directory=d["directory"],
            temp_dir_root=d.get("temp_dir_root"),
            retention=dict(d.get("retention") or {}),
        )

    def runtime(self, directory: Optional[str] = None):
        """A ``CheckpointRuntime`` on the task's scope (``current.checkpoint``'s twin), made by
        the task's own builder (``builder.build``) with the settings read here, once."""
        from ..common.settings import store_for_url
        from ..core import retention
        from .builder import build_runtime

        return build_runtime(
            store_for_url(self.root),
            self.scope,
            directory or self.directory,
            retention=retention.build(**self.retention),
        )
