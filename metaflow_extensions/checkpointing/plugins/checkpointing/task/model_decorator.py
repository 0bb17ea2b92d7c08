"""``@model``: the step decorator that installs ``current.model`` and loads models first.

Accepted as the reference extension's ``@model(load=..., best_effort_load=..., temp_dir_root=...)``
(plus ``root``).  ``step_init`` validates the attributes in the launcher (no I/O); in the task,
``task_pre_step`` builds the store (as ``@checkpoint`` picks it), loads every ``load`` entry
before the step's code runs, and ``task_finished`` removes the temporary directories.  Imported
by every ``import metaflow``: it imports nothing heavy.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Optional

from metaflow.decorators import StepDecorator
from metaflow.metaflow_current import current

from ..errors import CheckpointConfigError, CheckpointNotEnabled, CheckpointNotFound
from .attributes import check_path_attributes, checkpoint_root

_FORMS = (
    "'artifact_name', ('artifact_name', '/local/path' or None), 'model_name' or "
    "'model_name@<version>', or a list of those"
)


def _model_not_enabled(cur) -> None:
    """``current.model`` in a step without ``@model``: a clear error (an AttributeError too)."""
    step = getattr(cur, "step_name", None)
    where = ("step '%s' has no @model" % step) if step else "this code does not run in a step"
    raise CheckpointNotEnabled(
        "current.model is only available in a step decorated with @model, and %s: add @model "
        "above @step (or run with --with model)." % where
    )


if "model" not in type(current).__dict__:
    type(current).model = property(_model_not_enabled)


def parse_load(value: object, step_name: str) -> list[tuple[str, Optional[str]]]:
    """``[(name, path or None), ...]`` of the ``load`` attribute.

    Raises
    ------
    CheckpointConfigError
        Any other form, naming the step, the entry and the accepted forms.
    """
    if value is None or value == [] or value == "":
        return []
    items = [value] if isinstance(value, (str, tuple)) else value
    if not isinstance(items, list):
        raise CheckpointConfigError(
            "Step '%s': @model(load=%r) is not accepted: use %s." % (step_name, value, _FORMS)
        )
    entries: list[tuple[str, Optional[str]]] = []
    for item in items:
        # A (name, path) pair; a 2-item list is the same pair given on the command line as JSON.
        pair = item if isinstance(item, (tuple, list)) else (item, None)
        if (
            len(pair) != 2
            or not isinstance(pair[0], str)
            or not pair[0].strip()
            or not (pair[1] is None or (isinstance(pair[1], str) and pair[1]))
        ):
            raise CheckpointConfigError(
                "Step '%s': @model(load=...) entry %r is not accepted: use %s."
                % (step_name, item, _FORMS)
            )
        name = pair[0].strip()
        if any(n == name for n, _ in entries):
            raise CheckpointConfigError(
                "Step '%s': @model(load=...) names %r twice." % (step_name, name)
            )
        entries.append((name, pair[1]))
    return entries


class ModelDecorator(StepDecorator):
    """Save models from a step and load models (or checkpoints) before it runs.

    Parameters
    ----------
    load : str or list, optional
        What to load before the step's code runs, each as ``current.model.loaded[<name>]``:
        ``"artifact_name"`` (``self.artifact_name`` holds a reference, e.g. what
        ``current.model.save`` or ``current.checkpoint.save`` returned, or its key) into a new
        temporary directory; ``("artifact_name", "/local/path")`` into that directory
        (``None``: a temporary one); ``"model_name"`` or ``"model_name@<version>"`` when the
        flow has no artifact of that name at all: a named checkpoint (``model_name`` is its
        newest version published from this run's namespace or promoted to it).  An artifact
        holding None or no reference (in a join: inputs holding different values) is an
        error naming it, never a fallback to the named checkpoint.
    best_effort_load : bool, default False
        An entry with nothing to load only warns (``loaded[name]`` is None) instead of failing
        the task before the step runs.
    temp_dir_root : str, optional
        Parent of the temporary directories (removed when the task ends).
    root : str, optional
        Checkpoint store root (path or URL): default the step's ``@checkpoint(root=...)``, else
        the store ``@checkpoint`` uses (``METAFLOW_CHECKPOINT_ROOT``, else
        ``<datastore root>/mf.checkpointing``).

    MF Add To Current
    -----------------
    model -> metaflow_extensions.checkpointing.plugins.checkpointing.task.model_runtime.ModelRuntime
        Save models (``save``), load them (``load``) and see what was loaded (``loaded``).

        @@ Returns
        -------
        ModelRuntime
            The task's model object.
    """

    name = "model"
    defaults = {"load": None, "best_effort_load": False, "temp_dir_root": None, "root": None}

    def step_init(self, flow, graph, step_name, decorators, environment, flow_datastore, logger):
        # Launcher and every task process: validate, no I/O.
        self._entries = parse_load(self.attributes["load"], step_name)
        check_path_attributes("model", self.attributes, step_name)
        best = self.attributes["best_effort_load"]
        if isinstance(best, str) and best.strip().lower() in ("true", "false"):
            best = best.strip().lower() == "true"  # --with model:best_effort_load=true
        if not isinstance(best, bool):
            raise CheckpointConfigError(
                "Step '%s': @model(best_effort_load=%r) must be True or False." % (step_name, best)
            )
        self._best_effort = best
        root = self.attributes["root"]
        self._root = checkpoint_root(decorators) if root is None else root
        self._step_name = step_name
        self._runtime = None

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

        require_task_packages(step_name, "@model")  # a remote image may lack them
        from ..common.settings import build_store
        from ..core.scope import Scope, foreach_path
        from .model_loaded import LoadedModels
        from .model_runtime import ModelRuntime

        flow_datastore = task_datastore.parent_datastore
        store = build_store(flow_datastore.TYPE, flow_datastore.datastore_root, self._root)
        stack = getattr(flow, "_foreach_stack", None) or []
        scope = Scope(
            namespace=current.namespace,
            flow=flow.name,
            step=step_name,
            foreach=foreach_path([int(f.index) for f in stack]),
            run=str(run_id),
            task=str(task_id),
            attempt=int(retry_count),
        )
        loaded = LoadedModels(self.attributes["temp_dir_root"])
        runtime = ModelRuntime(store, scope, current.username, loaded, _log)
        try:
            is_join = graph[step_name].type == "join"
            for name, path in self._entries:
                self._load_entry(runtime, flow, name, path, inputs if is_join else None)
        except BaseException:
            runtime.close()  # the task fails here: leave no temporary directory behind
            raise
        self._runtime = runtime
        current._update_env({"model": runtime})

    def _load_entry(self, runtime, flow, name: str, path: Optional[str], join_inputs) -> None:
        """Load one ``load`` entry: the artifact ``name`` if the flow has it, else (the flow
        has no artifact of that name at all) the named checkpoint ``name``."""
        where = "Step '%s': @model(load=[%r])" % (self._step_name, name)
        try:
            found, artifact = _artifact(flow, name, join_inputs)
            reference = artifact if found else name
            store, manifest = runtime.resolve(reference)
        except (CheckpointNotFound, CheckpointConfigError) as exc:
            if isinstance(exc, _Unusable):
                message, error = "%s: %s" % (where, exc.message), CheckpointConfigError
            else:
                why = _why_not(name, found, artifact, runtime.store_url, exc.message)
                message, error = "%s: %s" % (where, why), CheckpointNotFound
            if not self._best_effort:
                raise error(message) from None
            _log(
                "[@model] Warning: %s; best_effort_load=True: loaded[%r] is None." % (message, name)
            )
            runtime.loaded.add(name, None, {"key": None})
            return
        target = runtime.load_into(name, store, manifest, path, reference)
        spelling = runtime.loaded.info[name].get("spelling") or manifest.key
        _log("[@model] Loaded %r (%s) into %s" % (name, spelling, target))

    def task_finished(self, step_name, flow, graph, is_task_ok, retry_count, max_user_code_retries):
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.close()


class _Unusable(CheckpointConfigError):
    """The flow has an artifact of the entry's name, but it holds no loadable reference."""


#: What a load entry's artifact may hold: a reference (a mapping) or its key/name string.
_HOLDS = (
    "a reference (what current.model.save, current.checkpoint.save or "
    "current.huggingface_hub.snapshot_download returned) or its key"
)


def _artifact(flow, name: str, join_inputs) -> tuple[bool, object]:
    """``(True, value)`` of the flow's artifact ``name``, ``(False, None)`` when the flow has no
    artifact of that name at all (then the entry is a named checkpoint).

    A method or step of the flow is no artifact.  In a join step (``join_inputs``: its inputs'
    datastores) an artifact of the inputs is the value they all hold alike.  An artifact
    holding None or anything but a reference, one that cannot be read, and a join's inputs
    holding different values raise :class:`_Unusable` saying which: falling back to a named
    checkpoint of that name would load another model than the flow's.

    Raises
    ------
    _Unusable
        The flow has the artifact, but it designates no single reference.
    """
    if "@" in name or not name.isidentifier():
        return False, None
    try:
        value = getattr(flow, name)
    except AttributeError:
        if not join_inputs:
            return False, None
        holders = [i for i, ds in enumerate(join_inputs) if _holds(ds, name)]
        if not holders:
            return False, None
        value = _joined(name, join_inputs, holders)
    except Exception as exc:  # an artifact that cannot be unpickled or read
        raise _Unusable(
            "the artifact self.%s cannot be read (%s: %s); nothing was loaded"
            % (name, type(exc).__name__, exc)
        ) from None
    if callable(value) and not isinstance(value, Mapping):
        return False, None  # a step or method of the flow is no artifact
    if value is None:
        raise _Unusable(
            "the artifact self.%s is None: it holds no model to load. Set it to %s, or remove "
            "%r from load= (a named checkpoint %r is only loaded when the flow has no artifact "
            "of that name)" % (name, _HOLDS, name, name)
        )
    if not isinstance(value, (str, Mapping)):
        raise _Unusable(
            "the artifact self.%s holds a %s (%s), not %s"
            % (name, type(value).__name__, _short(value), _HOLDS)
        )
    return True, value


def _joined(name: str, inputs, holders: list) -> object:
    """The value of ``name`` in a join step, before ``merge_artifacts``: the one every input
    holds alike (set before the split), else :class:`_Unusable` (which input's would it be?)."""
    try:
        values = [inputs[i][name] for i in holders]
    except Exception as exc:
        raise _Unusable(
            "the artifact %r of this join step's inputs cannot be read (%s: %s); nothing was "
            "loaded" % (name, type(exc).__name__, exc)
        ) from None
    if len(holders) == len(inputs) and all(v == values[0] for v in values[1:]):
        return values[0]
    raise _Unusable(
        "this join step's inputs hold different values of self.%s (%d of %d inputs hold it, "
        "not all alike), and which one to load is not said; load each input's model in the "
        "step: current.model.load(inp.%s) for inp in inputs, or set self.%s before the split"
        % (name, len(holders), len(inputs), name, name)
    )


def _holds(datastore, name: str) -> bool:
    """Whether a join input's datastore has the artifact ``name``."""
    try:
        return name in datastore
    except Exception:  # a datastore that cannot tell: not a holder
        return False


def _why_not(name: str, found: bool, artifact, store_url: str, error: str) -> str:
    """Why a ``load`` entry has nothing to load: its artifact's reference does not resolve, or
    the flow has no such artifact and the store no such named checkpoint."""
    from ..core.scope import validate_name

    if found:
        return "self.%s = %s cannot be loaded: %s" % (name, _short(artifact), error)
    try:
        validate_name(name.partition("@")[0])
        looked = "no named checkpoint %r in %s: %s" % (name, store_url, error)
    except CheckpointConfigError:
        looked = "%r is no model name either" % name
    return "the flow has no artifact %r (self.%s was never set before this step) and %s" % (
        name,
        name,
        looked,
    )


def _short(value) -> str:
    """A reference as the user knows it: its key, or the string (shortened)."""
    text = str(value.get("key")) if isinstance(value, Mapping) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _log(message: str) -> None:
    print(message, file=sys.stdout, flush=True)
