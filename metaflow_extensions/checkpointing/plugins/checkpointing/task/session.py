"""One ``@checkpoint`` task attempt's checkpointing, from the step's start to the task's end.

The decorator decides *what*: the store, the task's scope (foreach split, ``@parallel`` rank,
retry attempt), the checkpoint the load policy picked, the attributes.  :class:`TaskSession`
does the work: it reads the settings once, makes the task's directories, downloads the
declared models, builds the runtime whole, loads the initial checkpoint, installs the signal
handlers and exports what subprocesses need; at the end it commits what is pending, saves after
a failure if asked, writes the attempt's summaries and cleans up.

The runtime and its parts are made by ``builder.build``, as for the task's subprocesses.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Callable, Optional

from ..core.scope import Scope
from ..core.store import CheckpointStore
from ..core.user_dirs import make_temp_dir, user_path
from ..errors import CheckpointInterrupted, CheckpointPaused, CheckpointWarning
from .builder import TaskParts, TaskSettings, build
from .context import DIRECTORY_ENV, TASK_ENV, TaskContext
from .runtime import CheckpointRuntime

if TYPE_CHECKING:
    from ..core.policies import Resolution
    from .card_live import LiveCard
    from .models import ModelSpec
    from .ranks import Ranks
    from .upload_policy import UploadPolicy
    from .watchers import PreemptionWatcher


class TaskSession:
    """The checkpointing of one task attempt; made by :meth:`start`, finished by :meth:`end`.

    The decorator's hooks delegate to it: ``task_pre_step`` -> :meth:`start`,
    ``task_post_step`` -> :meth:`step_succeeded`, ``task_exception`` -> :meth:`step_failed`,
    ``task_finished`` -> :meth:`end`.
    """

    def __init__(
        self,
        parts: TaskParts,
        directories: Sequence[str],
        save_on_failure: bool,
        log: Callable[[str], None],
    ):
        self._parts = parts
        self._directories = list(directories)
        self._save_on_failure = save_on_failure
        self._log = log
        self._paused = False
        self._ended: Optional[str] = None  # "succeeded" once the step's end was committed
        self._uploaded = False  # the end of the task's upload ran
        self._watcher: Optional[PreemptionWatcher] = None
        self._live: Optional[LiveCard] = None  # the step's live checkpoint card, if any

    @classmethod
    def start(
        cls,
        store: CheckpointStore,
        scope: Scope,
        resolution: Resolution,
        *,
        step_name: str,
        temp_dir_root: Optional[str] = None,
        retention: Optional[Mapping[str, object]] = None,
        models: Sequence[ModelSpec] = (),
        ranks: Optional[Ranks] = None,
        save_on_interrupt: bool = False,
        save_on_failure: bool = False,
        preemption: Optional[str] = None,
        settings: Optional[TaskSettings] = None,
        log: Callable[[str], None] = print,
        upload: Optional[UploadPolicy] = None,
    ) -> TaskSession:
        """Everything before the step's code runs.

        Parameters
        ----------
        store, scope
            The task's store and scope.
        resolution : Resolution
            The checkpoint the load policy picked (loaded into the directory) or why none.
        step_name : str
            Names the temporary directories.
        temp_dir_root : str, optional
            Their parent (created if needed; default: the system temp dir).
        retention : mapping, optional
            The validated ``keep_*`` attributes (also exported to subprocesses).
        models : list of ModelSpec
            The declared models, downloaded before the runtime is built.
        ranks, save_on_interrupt
            As for ``builder.build`` (``ranks``: the step's process, ``Ranks.of_step``; its
            node index and count are exported to subprocesses).
        save_on_failure : bool
            Save the directory when the step's code raises.
        preemption : str, optional
            ``"aws"``, ``"gcp"`` or ``"azure"``: poll that cloud's preemption notice and, on
            one, interrupt the task as SIGTERM does (``watchers.PreemptionWatcher``).
        settings : TaskSettings, optional
            Default: read once, here.
        log : callable
            Where one-line status messages go.
        upload : UploadPolicy, optional
            ``@checkpoint(upload=, upload_errors=)`` on ``store`` (``upload_policy.py``); its
            end-of-task upload runs when the step succeeded, else when the task ends.
        """
        from ..core import retention as retention_rules

        # Metaflow's task ignores every warning; ours (NaN metadata, unreadable stores, RNG
        # states not restored) must reach the user, one per event.
        warnings.filterwarnings("always", category=CheckpointWarning)
        settings = settings if settings is not None else TaskSettings.read()
        keep = dict(retention or {})
        # A bad temp_dir_root (a file, /proc, no permission) is the user's setting, named as such.
        what = "Step '%s': @checkpoint(temp_dir_root=%r)" % (step_name, temp_dir_root)
        # ~ is home, once here: the task's processes (TaskContext) get the same directory.
        temp_dir_root = user_path(temp_dir_root) if temp_dir_root else temp_dir_root
        directories = [make_temp_dir(temp_dir_root, "mfckpt-%s-" % step_name, what)]
        try:
            paths: dict[str, str] = {}
            if models:
                from .models import load_models

                directories.append(make_temp_dir(temp_dir_root, "mfckpt-models-", what))
                paths = load_models(store, list(models), directories[1], namespace=scope.namespace)
            parts = build(
                store,
                scope,
                directories[0],
                settings=settings,
                log=log,
                retention=retention_rules.build(**keep),
                models=paths,
                ranks=ranks,
                save_on_interrupt=save_on_interrupt,
                upload=upload,
            )
            info = parts.runtime.load_initial(resolution)
            if info is not None:
                parts.saves.note_loaded(info.key)
        except BaseException:
            _remove(directories)
            raise
        session = cls(parts, directories, save_on_failure, log)
        from .card_live import attach as attach_live_card

        session._live = attach_live_card(parts.saves, step_name)  # None: the step has no card
        if upload is not None:  # retention's prunes of the tier take their upload records along
            parts.saves.add_listener(upload.on_commit)
        installed = parts.interrupts.install(parts.saves)
        if preemption is not None and installed:
            # After the handlers: the watcher's SIGTERM must reach Interrupts, not kill us.
            from .watchers import PreemptionWatcher

            session._watcher = PreemptionWatcher(
                preemption,
                endpoint=settings.preemption_endpoint,
                poll_seconds=settings.preemption_poll_seconds,
                log=log,
                allow=parts.interrupts.allow,  # a notice gives more time than a Ctrl+C
            ).start()
        # Child processes and callbacks save into this task with `Checkpoint()`.
        os.environ[DIRECTORY_ENV] = directories[0]
        os.environ[TASK_ENV] = TaskContext(
            root=store.url,
            scope=scope,
            directory=directories[0],
            temp_dir_root=temp_dir_root,
            retention=keep,
            node=parts.saves.ranks.position.node,
            nodes=parts.saves.ranks.participant.world,
            compression=store.options.compression,
            **(upload.context() if upload is not None else {}),
        ).to_env()
        return session

    @property
    def runtime(self) -> CheckpointRuntime:
        """``current.checkpoint``."""
        return self._parts.runtime

    @property
    def paused(self) -> bool:
        """True once the step's code ended by ``current.checkpoint.pause()``."""
        return self._paused

    def step_succeeded(self) -> None:
        """The step's code returned: the task is done only once its background saves are
        committed, and a failed one fails the task (before its artifacts are persisted).

        With ``@checkpoint(upload="end")`` the chosen checkpoints are then uploaded (a
        signal meanwhile is handled once the upload stops, at the latest when the time allowed
        runs out; ``upload_errors="fail"``: a failed upload fails the task).

        Raises
        ------
        CheckpointException
            Naming every background save that failed, or the failed upload.
        """
        saves = self._parts.saves
        saves.flush()
        if saves.upload is not None:
            self._uploaded = True
            with self._parts.interrupts.blocking():
                saves.upload_at_end(raise_errors=True)
        self._ended = "succeeded"

    def step_failed(self, exception: BaseException) -> None:
        """The step's code raised ``exception``: in a ``@parallel`` gang, first publish that
        this node is gone (the other nodes' sharded saves stop waiting for it, naming it and
        the error); note a pause, save the directory if ``save_on_failure`` (not after a
        signal: that was handled), commit pending saves."""
        saves = self._parts.saves
        saves.leave("its step failed: %s" % _short(exception))
        if isinstance(exception, CheckpointPaused):
            self._paused = True
        elif self._save_on_failure and not isinstance(exception, CheckpointInterrupted):
            try:
                ref = saves.final_save(
                    {"reason": "failure", "error": _short(exception)},
                    why="after the step failed",
                )
                if ref is not None:
                    self._log("[@checkpoint] Saved checkpoint %s after the step failed." % ref.key)
            except Exception as exc:  # noqa: BLE001 - the step's own error matters more
                self._log("[@checkpoint] Saving after the failure failed too: %s" % exc)
        saves.flush(raise_errors=False)

    def end(self) -> None:
        """The task is finishing (whatever happened): mark a ``@parallel`` node gone (if its
        step's failure did not), commit pending saves, write the attempt's summaries, remove
        the directories and the subprocess environment, then put the signal handlers back.
        A signal meanwhile is logged and absorbed (``Interrupts.ending``): a late Ctrl+C must
        not leak the task's directory."""
        interrupts = self._parts.interrupts
        interrupts.ending()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()  # joined: no thread outlives the task
        saves = self._parts.saves
        try:
            # A @parallel node's sharded saves are over: the other nodes must not wait for
            # one it never makes (kept: a failure's marker, written first thing).
            saves.leave(
                "its step ended without making this save (every node must call "
                "save(sharded=True) the same number of times per name)"
            )
            saves.flush(raise_errors=False)
            if not self._uploaded:
                self._uploaded = True
                saves.upload_at_end()
            ended = "paused" if self._paused else (self._ended or "failed")
            saves.write_summaries(ended=ended)
            if self._live is not None:  # a paused/failed task's card says so (no final render)
                self._live.finish(ended, wait=interrupts.deadline is None)  # no wait after a signal
            if saves.upload is not None:  # keep the local tier from growing (never raises)
                rules = saves.retention
                saves.upload.finish(
                    saves.scope,
                    saves.ranks.position,
                    succeeded=ended == "succeeded",
                    pruned=rules is not None and not rules.empty,
                    hurry=interrupts.received is not None,
                )
        finally:
            try:
                _remove(self._directories)
                self._directories = []
                os.environ.pop(TASK_ENV, None)
                os.environ.pop(DIRECTORY_ENV, None)
            finally:
                interrupts.restore()


def _short(exception: BaseException) -> str:
    text = "%s: %s" % (type(exception).__name__, exception)
    return text if len(text) <= 300 else text[:297] + "..."


def _remove(directories: Sequence[str]) -> None:
    for d in directories:
        shutil.rmtree(d, ignore_errors=True)
