"""The one builder of a task's runtime and its parts, and the settings a task reads once.

``current.checkpoint`` (built by the task's session) and its twin in the task's subprocesses
(``TaskContext.runtime``, behind ``Checkpoint()`` in a ``torchrun`` worker) are both made by
:func:`build`: each part is handed what it needs through its constructor, and no part reads
settings or Metaflow globals itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from ..core.pause import PausePoller
from ..core.retention import Retention
from ..core.scope import Scope
from ..core.store import CheckpointStore
from .interrupts import Interrupts
from .ranks import Ranks
from .runtime import CheckpointRuntime
from .saves import TaskSaves

if TYPE_CHECKING:  # loaded when a task has an upload policy, not in every task
    from .upload_policy import UploadPolicy


@dataclass(frozen=True)
class TaskSettings:
    """The ``METAFLOW_CHECKPOINT_*`` values a task process uses, read once when it starts."""

    async_budget: int  #: bytes of snapshots background saves may hold (``ASYNC_BUDGET``)
    parallel_timeout: float  #: seconds a sharded save waits for the others (``PARALLEL_TIMEOUT``)
    pause_poll_seconds: float  #: seconds between two looks for a pause request
    #: base URL a preemption watcher polls (None: the cloud's link-local address)
    preemption_endpoint: Optional[str] = None
    preemption_poll_seconds: float = 5.0  #: seconds between two polls of a preemption watcher
    #: seconds from the first SIGTERM/SIGINT to the end of the task's checkpointing
    interrupt_seconds: float = 3.0
    #: base directory of the local tier (``LOCAL_TIER``; None: temp_dir_root or the temp dir)
    local_tier: Optional[str] = None

    @classmethod
    def read(cls) -> TaskSettings:
        """Read them from Metaflow's configuration (environment or config file).

        Raises
        ------
        CheckpointConfigError
            A value that is not a number, naming the setting.
        """
        from ..common import settings

        return cls(
            async_budget=settings.async_budget(),
            parallel_timeout=settings.parallel_timeout(),
            pause_poll_seconds=settings.pause_poll_seconds(),
            preemption_endpoint=settings.preemption_endpoint(),
            preemption_poll_seconds=settings.preemption_poll_seconds(),
            interrupt_seconds=settings.interrupt_seconds(),
            local_tier=settings.local_tier_base(),
        )


@dataclass(frozen=True)
class TaskParts:
    """A runtime and the parts it shares with the session (see :func:`build`)."""

    runtime: CheckpointRuntime
    saves: TaskSaves
    interrupts: Interrupts


def build(
    store: CheckpointStore,
    scope: Scope,
    directory: str,
    *,
    settings: Optional[TaskSettings] = None,
    log: Callable[[str], None] = print,
    retention: Optional[Retention] = None,
    ranks: Optional[Ranks] = None,
    models: Optional[Mapping[str, str]] = None,
    save_on_interrupt: bool = False,
    guard: Optional[Callable[[], None]] = None,
    upload: Optional[UploadPolicy] = None,
) -> TaskParts:
    """Build a task's runtime and its parts, each handed what it needs through its constructor.

    Parameters
    ----------
    store, scope, directory
        Where checkpoints go, the task's scope, its checkpoint directory.
    settings : TaskSettings, optional
        Default: :meth:`TaskSettings.read` (read here, once).
    log : callable
        Where one-line status messages go.
    retention : Retention, optional
        The step's ``keep_*`` rules.
    ranks : Ranks, optional
        Where this process stands among the task's writers (``Ranks.of_step`` for a step's
        process, ``Ranks.of_subprocess`` for a process it started); default rank 0, node 0 of 1.
    models : mapping, optional
        Local paths of the declared models, by name.
    save_on_interrupt : bool
        Save the directory when a signal arrives.
    guard : callable, optional
        Called before every save; raises to refuse it (a subprocess's context, once its task
        has ended: ``TaskContext.check_running``).
    upload : UploadPolicy, optional
        ``@checkpoint(upload=, upload_errors=)`` on ``store`` (default: each save commits to
        ``store``, a failure fails it).
    """
    if settings is None:
        settings = TaskSettings.read()
    interrupts = Interrupts(
        save_on_interrupt=save_on_interrupt, log=log, seconds=settings.interrupt_seconds
    )
    saves = TaskSaves(
        store,
        scope,
        directory,
        async_budget=settings.async_budget,
        log=log,
        retention=retention,
        ranks=ranks,
        sharded_timeout=settings.parallel_timeout,
        interrupts=interrupts,
        guard=guard,
        upload=upload,
    )
    runtime = CheckpointRuntime(
        saves,
        pause=PausePoller(store.storage, scope, settings.pause_poll_seconds),
        interrupts=interrupts,
        models=models,
    )
    return TaskParts(runtime=runtime, saves=saves, interrupts=interrupts)


def build_runtime(
    store: CheckpointStore, scope: Scope, directory: str, **kwargs
) -> CheckpointRuntime:
    """:func:`build`'s runtime alone (what a subprocess or a test needs)."""
    return build(store, scope, directory, **kwargs).runtime
