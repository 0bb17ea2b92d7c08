"""``@huggingface_hub``: the step decorator that installs ``current.huggingface_hub``.

Validates its attributes in the launcher (no I/O); in the task, builds the store (the step's
``root``, else ``@checkpoint(root=)`` of the step, else the flow's store), loads the
``load=[...]`` entries before the step's code and removes temporary directories when the task
ends.  Imported by every ``import metaflow``: ``huggingface_hub`` is imported only in a task
that uses it (:mod:`.hub_remote`).
"""

from __future__ import annotations

import sys

from metaflow.decorators import StepDecorator
from metaflow.metaflow_current import current

from ..errors import CheckpointConfigError, CheckpointNotEnabled
from ..task.attributes import check_path_attributes, checkpoint_root


def _hub_not_enabled(cur) -> None:
    """``current.huggingface_hub`` in a step without the decorator: say how to enable it."""
    step = getattr(cur, "step_name", None)
    raise CheckpointNotEnabled(
        "current.huggingface_hub is only available in a step decorated with @huggingface_hub%s: "
        "add @huggingface_hub above @step." % (" (step '%s' has none)" % step if step else "")
    )


if "huggingface_hub" not in type(current).__dict__:
    type(current).huggingface_hub = property(_hub_not_enabled)


class HuggingfaceHubDecorator(StepDecorator):
    """Store Hugging Face Hub snapshots once in the checkpoint store; load them for the step.

    Installs ``current.huggingface_hub`` (:class:`~.hub.HuggingfaceHub`):
    ``snapshot_download(repo_id=..., revision=..., allow_patterns=...)`` returns a reference to
    the stored snapshot (downloaded from the Hub only when the store does not hold that
    revision's commit), ``load(repo_id, path=None)`` puts it on local disk, ``loaded[repo_id]``
    is what ``load=[...]`` loaded before the step's code.

    Parameters
    ----------
    load : list, optional
        Snapshots to load before the step runs: ``"repo_id"``, ``("repo_id", "/local/path")``,
        ``{"repo_id": ..., "revision": ..., "allow_patterns": [...]}`` or ``({...}, path)``.
    temp_dir_root : str, optional
        Parent of the temporary directories (downloads, loads without a path).
    cache_scope : str, default "checkpoint"
        Whose stored snapshots this step reuses: ``"checkpoint"`` those stored by this step of
        this flow in this namespace; ``"flow"`` by any run of this flow, any namespace;
        ``"global"`` by anyone using the store (most reuse, widest trust).
    root : str, optional
        The checkpoint store (as ``@checkpoint(root=)``); default: the step's ``@checkpoint``
        root, else the flow's store.
    """

    name = "huggingface_hub"
    defaults = {"load": None, "temp_dir_root": None, "cache_scope": "checkpoint", "root": None}

    def step_init(self, flow, graph, step_name, decorators, environment, flow_datastore, logger):
        from .hub import CACHE_SCOPES, parse_load

        scope = self.attributes["cache_scope"]
        if scope not in CACHE_SCOPES:
            raise CheckpointConfigError(
                "Step '%s': @huggingface_hub(cache_scope=%r) must be one of %s."
                % (step_name, scope, ", ".join(repr(s) for s in CACHE_SCOPES))
            )
        check_path_attributes("huggingface_hub", self.attributes, step_name)
        self._load = parse_load(self.attributes["load"], step_name)
        if self.attributes["root"] is None:  # the step's @checkpoint(root=...) if it has one
            self.attributes["root"] = checkpoint_root(decorators)
        self._registry = None

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
        from ..task.deps import require_task_packages

        require_task_packages(step_name, "@huggingface_hub")  # a remote image may lack them
        from ..common.settings import build_store
        from .hub import HuggingfaceHub

        flow_datastore = task_datastore.parent_datastore
        store = build_store(
            flow_datastore.TYPE, flow_datastore.datastore_root, self.attributes["root"]
        )
        self._registry = HuggingfaceHub(
            store,
            namespace=current.namespace,
            flow=flow.name,
            step=step_name,
            pathspec="%s/%s/%s/%s" % (flow.name, run_id, step_name, task_id),
            user=current.username,
            cache_scope=self.attributes["cache_scope"],
            temp_dir_root=self.attributes["temp_dir_root"],
            log=_log,
        )
        current._update_env({"huggingface_hub": self._registry})
        self._registry.load_entries(self._load)

    def task_finished(self, step_name, flow, graph, is_task_ok, retry_count, max_user_code_retries):
        registry, self._registry = self._registry, None
        if registry is not None:
            registry.close()


def _log(message: str) -> None:
    print(message, file=sys.stdout, flush=True)
