"""``@checkpoint``: the step decorator that installs ``current.checkpoint``.

Long module: Metaflow calls one decorator class per hook; its helpers already live elsewhere.

Thin by design: it validates attributes before any task runs (``step_init``, and
``runtime_init`` for the declared models); in the task, its hooks decide what only Metaflow
knows (the store of the flow's datastore, the task's scope across foreach, ``@parallel`` and
retries, which checkpoint the load policy picks across ``resume``, the paused exit) and
delegate the work to a :class:`~.session.TaskSession`.  This module is imported by every
``import metaflow``: it imports nothing heavy.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from metaflow.decorators import StepDecorator
from metaflow.metaflow_current import current

from ..core.codec import check_setting
from ..core.policies import validate_policy
from ..errors import CheckpointConfigError, CheckpointNotEnabled
from .attributes import (
    UPLOAD_ERRORS,
    UPLOAD_MODES,
    bool_attr,
    check_path_attributes,
    choice_attr,
    number_attr,
)
from .refused import UnknownDecoratorAttribute, split_unknown


def _checkpoint_not_enabled(cur) -> None:
    """``current.checkpoint`` until ``@checkpoint`` installs it: a clear error naming the step
    (an AttributeError as well, so ``hasattr(current, "checkpoint")`` is False there)."""
    step = getattr(cur, "step_name", None)
    if step:
        where = "step '%s' of %s has no @checkpoint" % (step, getattr(cur, "flow_name", "the flow"))
        fix = "add @checkpoint above @step (or run with --with checkpoint)"
    else:
        where = "this code does not run in a Metaflow step"
        fix = (
            "use it in a step decorated with @checkpoint; in a subprocess of such a step "
            "(e.g. a torchrun worker) use Checkpoint(init_dir=True)"
        )
    raise CheckpointNotEnabled(
        "current.checkpoint is only available in a step decorated with @checkpoint, and %s: "
        "%s." % (where, fix)
    )


# Installed before any task, so a step without the decorator meets the error above instead of
# Current's bare AttributeError; the decorator's current._update_env replaces it in its tasks.
if "checkpoint" not in type(current).__dict__:
    type(current).checkpoint = property(_checkpoint_not_enabled)


class CheckpointDecorator(StepDecorator):
    """Save and reload intermediate state of a step, e.g. across ``@retry`` attempts.

    Parameters
    ----------
    load_policy : str, default "fresh"
        What ``current.checkpoint.directory`` holds when the step's code starts:
        ``"fresh"``: nothing on the first attempt; on a retry, the latest checkpoint of this
        task's earlier attempts; on ``resume``, the latest checkpoint of the same step and
        foreach split in the origin run.  ``"eager"``: as ``"fresh"``, falling back to the latest
        checkpoint of this step and foreach split from any earlier run in the namespace.
        ``"none"``: nothing; use ``current.checkpoint.list()`` and ``load()``.
    temp_dir_root : str, optional
        Parent directory of ``current.checkpoint.directory`` (default: the system temp dir).
    root : str, optional
        Checkpoint store root (path or URL such as ``s3://bucket/ckpt``).  Default:
        ``METAFLOW_CHECKPOINT_ROOT`` if set where the task runs, else
        ``<datastore root>/mf.checkpointing``.  Unlike an environment variable, this attribute
        travels with the flow to remote tasks.
    models : list of str, optional
        Named checkpoints (models) the step needs, downloaded before its code runs:
        ``"resnet50"`` (the newest version published from the run's namespace or promoted to
        it), ``"resnet50@<version>"`` (that version, whoever published it), or
        ``"resnet50=./model.pt"`` (upload that file or directory first unless it is already the
        newest version).  ``run``/``resume`` fail before any task starts if one is missing or
        has no version trusted in the run's namespace.  Local paths are in
        ``current.checkpoint.models[name]`` and ``$METAFLOW_CHECKPOINT_MODEL_<NAME>``.
    keep_last : int, optional
        After each save, keep only the newest N checkpoints of that name in this task (all
        attempts), plus those kept by the other ``keep_*`` rules and pinned ones.
    keep_best : str or list of str, optional
        Also keep the best K by a metadata metric: ``"val_loss:min:2"``, ``"accuracy:max"``.
    keep_every_steps : int, optional
        Also keep the first checkpoint of every N training steps (metadata field ``step``).
    keep_every_minutes : float, optional
        Also keep the first checkpoint of every T minutes.
    expire_after_days : float, optional
        After each save, delete this task's checkpoints of that name older than N days (by
        the store's clock), whatever the ``keep_*`` rules keep, except pinned ones and the
        newest ``latest=True`` (docs/lifecycle.md).
    save_on_interrupt : bool, default False
        On SIGTERM or Ctrl+C, save :attr:`current.checkpoint.directory` as a final checkpoint
        (after the ``on_interrupt`` callbacks ran) before the task stops.  Pending background
        saves are always committed first.
    save_on_failure : bool, default False
        When the step's code raises, save ``current.checkpoint.directory`` before the task
        fails, so the retry starts from the state at the failure.
    preemption : str, optional
        ``"aws"`` (EC2 spot ``instance-action``), ``"gcp"`` (GCE ``instance/preempted``) or
        ``"azure"`` (Scheduled Events ``Preempt``): poll that cloud's preemption notice from a
        daemon thread and, on a notice, interrupt the task as SIGTERM does (``on_interrupt``
        callbacks, the ``save_on_interrupt`` save, then the attempt fails for ``@retry``).
        Default None: no watcher, no metadata request.
    show_card : bool, optional
        True: attach the ``checkpoint`` card (``@card(type="checkpoint", id="checkpoint")``)
        to the step, unless it already has one.  Default None, like False: no card, so no card
        subprocess per task unless asked (the reference extension's default is True).
    compression : str, optional
        ``"zstd"``: store each new blob zstd-compressed when that saves 1/32 of it or more
        (loads verify the uncompressed bytes); needs the ``zstd`` extra.  Default None.
    upload : str, default "each"
        ``"each"``: every ``save()`` commits to the flow's store.  ``"end"``: ``save()``
        commits to a local tier on the task's disk (status ``"local"``) and, when the task
        ends (success, exception, ``pause()``, SIGTERM/Ctrl+C, preemption), the newest
        ``latest=True`` checkpoint and the ``keep_best`` ones are uploaded, only they
        (docs/upload.md: a hard kill before the end loses the local-only ones).
    upload_errors : str, default "fail"
        ``"fail"``: an upload that still fails after the bounded retries fails the save.
        ``"warn"``: one warning, the checkpoint stays in the local tier with status
        ``"failed"``, and training continues.

    MF Add To Current
    -----------------
    checkpoint -> metaflow_extensions.checkpointing.plugins.checkpointing.task.runtime.CheckpointRuntime
        Save, list and load checkpoints of this task.

        @@ Returns
        -------
        CheckpointRuntime
            The task's checkpoint object.
    """

    name = "checkpoint"
    defaults = {
        "load_policy": "fresh",
        "temp_dir_root": None,
        "root": None,
        "models": None,
        "keep_last": None,
        "keep_best": None,
        "keep_every_steps": None,
        "keep_every_minutes": None,
        "expire_after_days": None,
        "save_on_interrupt": False,
        "save_on_failure": False,
        "preemption": None,
        "show_card": None,
        "compression": None,
        "upload": "each",
        "upload_errors": "fail",
    }

    def __init__(self, attributes=None, statically_defined=False, inserted_by=None):
        # An unknown attribute is kept aside and refused in step_init: Metaflow's own check
        # here would raise while the flow file is imported (a traceback); step_init fails the
        # run with one line that also names the closest supported attribute.
        self._unknown, attributes = split_unknown(attributes, self.defaults)
        super().__init__(attributes, statically_defined, inserted_by)

    def step_init(self, flow, graph, step_name, decorators, environment, flow_datastore, logger):
        # Runs in the launcher before any task: bad attributes fail the run here, with no I/O.
        if self._unknown:
            raise UnknownDecoratorAttribute(self.name, self._unknown[0], self.defaults, step_name)
        policy = self.attributes["load_policy"]
        try:
            validate_policy(policy)
        except CheckpointConfigError as exc:
            raise CheckpointConfigError("Step '%s': %s" % (step_name, exc.message)) from None
        check_path_attributes("checkpoint", self.attributes, step_name)
        from ..core import retention
        from .models import parse_specs

        self._models = parse_specs(self.attributes["models"], step_name)
        if any(spec.local_path for spec in self._models):
            from .models import deploy_command, deploy_warnings

            command = deploy_command()
            for warning in deploy_warnings(self._models, step_name, command) if command else ():
                print(warning, file=sys.stderr, flush=True)
        self._retention = {k: number_attr(self.attributes[k]) for k in _RETENTION_ATTRIBUTES}
        try:
            retention.build(**self._retention)  # validated here; the session builds the rules
        except CheckpointConfigError as exc:
            raise CheckpointConfigError("Step '%s': %s" % (step_name, exc.message)) from None
        self._step_name = step_name
        self._datastore = (flow_datastore.TYPE, flow_datastore.datastore_root)
        for attr in ("save_on_interrupt", "save_on_failure"):
            self.attributes[attr] = bool_attr(self.attributes[attr], attr, step_name)
        if self.attributes["show_card"] is not None:
            self.attributes["show_card"] = bool_attr(
                self.attributes["show_card"], "show_card", step_name
            )
        from .watchers import validate_preemption

        self.attributes["preemption"] = validate_preemption(
            self.attributes["preemption"], step_name
        )
        self.attributes["upload"] = choice_attr(
            self.attributes["upload"], "upload", UPLOAD_MODES, step_name
        )
        self.attributes["upload_errors"] = choice_attr(
            self.attributes["upload_errors"], "upload_errors", UPLOAD_ERRORS, step_name
        )
        codec = check_setting(self.attributes["compression"], "Step '%s': @checkpoint" % step_name)
        self.attributes["compression"] = codec
        self._session = None  # the running task's TaskSession (task_pre_step .. task_finished)
        if self.attributes["show_card"]:
            # Last: only a valid @checkpoint adds a card.
            from .card_attach import attach_checkpoint_card

            attach_checkpoint_card(flow, step_name, decorators, flow_datastore.TYPE)

    def runtime_init(self, flow, graph, package, run_id):
        # Launcher of a local run/resume, before any task: a missing model fails the run here.
        if not self._models:
            return
        from ..common.settings import build_store
        from .models import ensure_available

        store = build_store(*self._datastore, self.attributes["root"])
        origin = "%s/%s" % (flow.name, run_id)  # recorded as the publisher of uploads
        ensure_available(store, self._models, self._step_name, _log, origin=origin)

    def task_pre_step(
        self,
        step_name,
        task_datastore,
        metadata,
        run_id,
        task_id,
        flow,
        graph,
        retry_count,
        max_user_code_retries,
        ubf_context,
        inputs,
    ):
        if retry_count > max_user_code_retries:
            return  # the @catch fallback attempt runs no user code
        from .deps import require_task_packages

        require_task_packages(step_name)  # blake3, tenacity: a remote image may lack them
        from ..common.settings import build_store
        from ..core.scope import Scope, foreach_path
        from .builder import TaskSettings
        from .origins import origin_chain
        from .ranks import Ranks
        from .session import TaskSession
        from .upload_policy import TIER_METADATA as TIER
        from .upload_policy import policy_for

        settings = TaskSettings.read()  # once, before any I/O: a bad value fails here
        flow_datastore = task_datastore.parent_datastore
        store = build_store(
            flow_datastore.TYPE, flow_datastore.datastore_root, self.attributes["root"]
        )
        store.options = store.options.with_compression(self.attributes["compression"])
        _register_root(metadata, run_id, step_name, task_id, retry_count, store.url)
        upload = policy_for(self.attributes, store, settings, _log)
        if upload is not None:
            _register_root(
                metadata, run_id, step_name, task_id, retry_count, upload.metadata_value(), TIER
            )
        gang = _gang_of(ubf_context)
        indices = _foreach_indices(flow)
        # The step's process of node n of a gang is writer (n, 0) and node n of its sharded saves.
        ranks = Ranks.of_step(gang[0], _gang_size(flow), gang=True) if gang else Ranks()
        if gang:
            indices = indices[:-1]  # @parallel is a foreach over ranks: not a split of its own
        scope = Scope(
            namespace=current.namespace,
            flow=flow.name,
            step=step_name,
            foreach=foreach_path(indices),
            run=str(run_id),
            # Every rank of a @parallel gang shares the control task's scope.
            task=str(gang[1] or task_id) if gang else str(task_id),
            attempt=int(retry_count),
        )
        origin = current.origin_run_id
        resolution = store.resolve(
            self.attributes["load_policy"],
            scope,
            # Lazy: older origins are looked up only while no checkpoint has been found.
            origin_runs=lambda: origin_chain(flow.name, step_name, origin),
            position=ranks.position,
        )
        if upload is not None:  # a retry on this machine may load from the local tier
            from .tiered_store import with_tier

            resolution = with_tier(
                resolution, upload, self.attributes["load_policy"], scope, ranks.position
            )
        self._session = TaskSession.start(
            store,
            scope,
            resolution,
            step_name=step_name,
            temp_dir_root=self.attributes["temp_dir_root"],
            retention=self._retention,
            models=self._models,
            ranks=ranks,
            save_on_interrupt=self.attributes["save_on_interrupt"],
            save_on_failure=self.attributes["save_on_failure"],
            preemption=self.attributes["preemption"],
            settings=settings,
            log=_log,
            upload=upload,
        )
        current._update_env({"checkpoint": self._session.runtime})

    def task_post_step(self, step_name, flow, graph, retry_count, max_user_code_retries):
        # The step succeeded: it is done only once its background saves are committed, and a
        # failed one fails the task (before its artifacts are persisted as a success).
        if self._session is not None:
            self._session.step_succeeded()

    def task_exception(self, exception, step_name, flow, graph, retry_count, max_user_code_retries):
        if self._session is not None:
            self._session.step_failed(exception)
        return None  # never handles the exception: the task fails, @retry decides

    def task_finished(self, step_name, flow, graph, is_task_ok, retry_count, max_user_code_retries):
        session, self._session = self._session, None
        if session is None:
            return
        try:
            session.end()
        finally:
            if session.paused:
                _exit_as_paused()


_RETENTION_ATTRIBUTES = (
    "keep_last",
    "keep_best",
    "keep_every_steps",
    "keep_every_minutes",
    "expire_after_days",
)


def _gang_of(ubf_context) -> Optional[tuple[int, Optional[str]]]:
    """(rank, control task id) of a @parallel task, else None.

    The local control task (rank 0) runs this hook before @parallel sets its environment, so its
    control task id is its own (None here); ranks > 0 are started with MF_PARALLEL_* set.
    """
    from metaflow.unbounded_foreach import UBF_CONTROL, UBF_TASK

    if ubf_context == UBF_CONTROL:
        return 0, None
    if ubf_context == UBF_TASK:
        return int(os.environ.get("MF_PARALLEL_NODE_INDEX", "0")), os.environ.get(
            "MF_PARALLEL_CONTROL_TASK_ID"
        )
    return None


def _gang_size(flow) -> int:
    """The number of nodes of a @parallel gang: from the gang's foreach iterator (known to every
    node from the start, the local control task included), else from ``current.parallel``."""
    size = getattr(getattr(flow, "_parallel_ubf_iter", None), "num_parallel", None)
    return int(size if size is not None else current.parallel.num_nodes)


def _exit_as_paused() -> None:
    """Make the task process exit with Metaflow's "do not retry" code once Metaflow is done.

    The attempt is recorded as failed; the runtime does not retry it, the run stops when the
    other running tasks end, and ``resume`` re-runs the task from its last checkpoint.
    """
    import atexit

    from metaflow.exception import METAFLOW_EXIT_DISALLOW_RETRY

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(METAFLOW_EXIT_DISALLOW_RETRY)

    _log("[@checkpoint] Task paused; it will not be retried. Continue with `resume`.")
    atexit.register(leave)


def _register_root(metadata, run_id, step_name, task_id, attempt, url, field=None) -> None:
    """Record the store root (or another ``field``: the local tier) as task metadata so the
    client finds checkpoints of any root."""
    from metaflow.metadata_provider import MetaDatum

    from ..common.settings import ROOT_METADATA

    field = field or ROOT_METADATA

    metadata.register_metadata(
        run_id,
        step_name,
        task_id,
        [
            MetaDatum(
                field=field,
                value=url,
                type=field,
                tags=["attempt_id:%d" % attempt],
            )
        ],
    )


def _log(message: str) -> None:
    print(message, file=sys.stdout, flush=True)


def _foreach_indices(flow) -> list[int]:
    """Index of every enclosing foreach split, outermost first."""
    stack = getattr(flow, "_foreach_stack", None) or []
    return [int(frame.index) for frame in stack]
