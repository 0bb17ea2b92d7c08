"""Named checkpoints a step declares it needs: ``@checkpoint(models=["resnet50", ...])``.

A spec is ``"name"`` (the newest version published from the run's namespace or promoted to
it), ``"name@<version>"`` (a version id or its prefix, whoever published it) or
``"name=<local path>"`` (upload the file or directory first unless that content is already the
newest version, then use it).  The launcher checks every spec before any task starts; each task
downloads its models before the step's code runs and exposes their local paths as
``current.checkpoint.models[name]`` and environment variables, for subprocesses and non-Python
tools.

This module also says who publishes and who reads named checkpoints (:func:`identity`,
:func:`publisher_here`, :func:`reader_namespace`): the Metaflow side of
:mod:`.core.promotions`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Callable, Optional

from ..core.manifest import Manifest
from ..core.promotions import describe_publisher, publisher_record
from ..core.store import CheckpointStore
from ..errors import CheckpointConfigError, CheckpointNotFound, CheckpointScopeError
from ..fmt import human_size

#: JSON object ``{name: local path}`` of every model of the running task.
MODELS_ENV = "METAFLOW_CHECKPOINT_MODELS"
#: Prefix of one variable per model: ``METAFLOW_CHECKPOINT_MODEL_RESNET50=/tmp/.../resnet50.pt``.
MODEL_ENV_PREFIX = "METAFLOW_CHECKPOINT_MODEL_"


@dataclass(frozen=True)
class ModelSpec:
    """One declared model: its name, an optional version and an optional local source."""

    name: str
    version: str = ""
    local_path: Optional[str] = None

    @property
    def reference(self) -> str:
        return "%s@%s" % (self.name, self.version) if self.version else self.name

    @property
    def env_var(self) -> str:
        return env_var(self.name)


def env_var(name: str) -> str:
    """The environment variable holding the local path of model ``name``."""
    return MODEL_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", name.upper())


def parse_specs(value: object, step_name: str) -> list[ModelSpec]:
    """Validate the ``models`` attribute (a list of specs, or one spec string).

    Raises
    ------
    CheckpointConfigError
        On any malformed spec, naming the step and the spec.
    """
    if value is None or value == [] or value == "":
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise CheckpointConfigError(
            "Step '%s': @checkpoint(models=%r) must be a list of names such as "
            "['resnet50', 'bert@1a2b', 'tiny=./tiny.pt']." % (step_name, value)
        )
    specs: list[ModelSpec] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise CheckpointConfigError(
                "Step '%s': model spec %r must be a string 'name', 'name@version' or "
                "'name=local/path'." % (step_name, item)
            )
        text = item.strip()
        named, sep, path = text.partition("=")
        name, version = _named_spec(named, text, step_name)
        if sep and not path:
            raise CheckpointConfigError(
                "Step '%s': model spec %r has an empty local path." % (step_name, text)
            )
        if sep and version:
            raise CheckpointConfigError(
                "Step '%s': model spec %r gives both a version and a local path; a local "
                "path always becomes the newest version." % (step_name, text)
            )
        if any(s.name == name for s in specs):
            raise CheckpointConfigError(
                "Step '%s': model %r is declared twice." % (step_name, name)
            )
        # Each model's path is exported as one variable: two names spelling the same variable
        # (differing only in case, '-', '_' or '.') would silently share it.
        clash = next((s for s in specs if s.env_var == env_var(name)), None)
        if clash is not None:
            raise CheckpointConfigError(
                "Step '%s': models %r and %r would share the environment variable %s (names "
                "differing only in case, '-', '_' or '.' map to the same variable); rename one."
                % (step_name, clash.name, name, env_var(name))
            )
        specs.append(ModelSpec(name, version, path or None))
    return specs


def _named_spec(named: str, text: str, step_name: str) -> tuple[str, str]:
    """``(name, version)`` of the ``name[@version]`` part of a model spec (parsed as every
    reference is: :func:`..common.refspec.parse`); ``name@latest`` and ``name@last`` are the
    unpinned name.

    Raises
    ------
    CheckpointConfigError
        Not a name or ``name@<version>``, naming the step and the spec.
    """
    from ..common import refspec

    try:
        spec = refspec.parse(named)
    except CheckpointConfigError as exc:
        raise CheckpointConfigError(
            "Step '%s': model spec %r: %s" % (step_name, text, exc.message)
        ) from None
    if spec.kind == refspec.ALIAS and spec.name is not None and spec.alias.metric is None:
        return spec.name, ""  # name@last: the newest trusted version, as name@latest
    if spec.kind != refspec.NAMED:
        raise CheckpointConfigError(
            "Step '%s': model spec %r must be 'name', 'name@version' or 'name=local/path' "
            "(a name of a checkpoint saved outside any task; aliases such as '@best:<metric>' "
            "choose at load time: use current.checkpoint.load() in the step)." % (step_name, text)
        )
    return str(spec.name), spec.version


# ------------------------------------------------------------------------------ identities
def identity() -> tuple[Optional[str], Optional[str]]:
    """``(user, namespace)`` of this process as Metaflow sees it: the namespace is
    ``resolve_identity()`` (``production:<token>`` when ``METAFLOW_PRODUCTION_TOKEN`` is set,
    else ``user:<user>``), the namespace a run started here gets; None when unknown (root
    without ``USER``/``METAFLOW_USER``)."""
    from metaflow.exception import MetaflowUnknownUser
    from metaflow.util import get_username, resolve_identity

    try:
        namespace: Optional[str] = resolve_identity()
    except MetaflowUnknownUser:
        namespace = None
    return get_username(), namespace


def publisher_here(origin: str) -> dict:
    """The publisher record of a version saved by this process (``origin``: ``"cli"``,
    ``"client"`` or a run pathspec)."""
    user, namespace = identity()
    return publisher_record(user, namespace, origin)


def reader_namespace() -> Optional[str]:
    """The namespace whose versions a client resolves names among: the current client
    namespace (``metaflow.namespace(...)``); None after ``namespace(None)`` (any publisher).

    Raises
    ------
    CheckpointScopeError
        The namespace cannot be told (root without a user name): trusting every publisher then
        would defeat the point, so the message says how to choose.
    """
    from metaflow import get_namespace
    from metaflow.exception import MetaflowUnknownUser

    try:
        return get_namespace()
    except MetaflowUnknownUser:
        raise CheckpointScopeError(
            "Cannot tell which namespace to resolve named checkpoints in: Metaflow does not know "
            "your user name. Set METAFLOW_USER (or USER), choose one with "
            "metaflow.namespace('user:alice'), accept any publisher with namespace(None), or "
            "pin a version: 'name@<version>'."
        ) from None


# ------------------------------------------------------------------------------ launcher, task
#: ``<command> create``: the Metaflow commands that deploy a flow to a scheduler.  A deploy runs no
#: ``runtime_init`` (nothing is uploaded) and deployed runs read in the production namespace.
DEPLOY_COMMANDS = ("argo-workflows", "step-functions", "airflow")


def deploy_command() -> Optional[str]:
    """``"argo-workflows create"`` (etc.) when this process is deploying the flow, else None.

    Read from the arguments Metaflow's top-level command kept for its subcommand
    (``saved_args``, which it reads the same way for ``resume``): ``step_init`` runs in every
    process, and only this tells a deploy from a run, a task or a trampoline.
    """
    try:
        from metaflow._vendor import click

        ctx = click.get_current_context(silent=True)
    except Exception:  # not under Metaflow's CLI (a notebook, a Runner in-process hook)
        return None
    args = list(getattr(ctx.find_root(), "saved_args", None) or []) if ctx else []
    if len(args) >= 2 and args[0] in DEPLOY_COMMANDS and args[1] == "create":
        return "%s create" % args[0]
    return None


def deploy_warnings(specs: list[ModelSpec], step_name: str, command: str) -> list[str]:
    """One warning per ``"name=<local path>"`` model of ``step_name``: ``command`` (a deploy)
    uploads nothing, and the deployed runs resolve ``name`` in the production namespace."""
    return [
        "Warning: step '%s' declares @checkpoint(models=[\"%s=%s\"]), but `%s` does not "
        "upload local paths: the deployed runs look %r up in the production namespace and fail "
        "if no version was published there. Upload it first (a local run of the flow, or "
        "Checkpoint().save(%r, name=%r)), then promote that version: "
        "`metaflow checkpoint promote %s@<version> --to production:<token>`."
        % (
            step_name,
            spec.name,
            spec.local_path,
            command,
            spec.name,
            spec.local_path,
            spec.name,
            spec.name,
        )
        for spec in specs
        if spec.local_path
    ]


def ensure_available(
    store: CheckpointStore,
    specs: list[ModelSpec],
    step_name: str,
    log: Callable[[str], None],
    origin: str = "launcher",
) -> None:
    """Upload local sources (``"name=<local path>"``), then check every model resolves in the
    namespace of the run (this process's :func:`identity`).

    ``origin`` (the run's pathspec ``Flow/run_id``) is recorded as the publisher of uploads.
    Each run's upload is its own version, as ``current.model.save``'s: deleting one run's never
    breaks another's; its files are content-addressed, so bytes already stored are not uploaded
    again (an unchanged directory writes one small manifest).

    Raises
    ------
    CheckpointConfigError
        A local path that does not exist (nothing uploaded).
    CheckpointNotFound
        A model (or version) that is not in the store, naming the step.
    CheckpointScopeError
        An unpinned model none of whose versions was published from the run's namespace or
        promoted to it, naming the step, the version to pin and the promote command.
    """
    for spec in specs:
        if spec.local_path and not os.path.exists(spec.local_path):
            raise CheckpointConfigError(
                "Step '%s': model %r should be uploaded from %s, which does not exist."
                % (step_name, spec.name, os.path.abspath(spec.local_path))
            )
    user, namespace = identity()
    for spec in specs:
        if spec.local_path:
            from ..core.scope import library_scope

            manifest = store.save(
                os.path.abspath(spec.local_path),
                library_scope(spec.name),
                name=spec.name,
                # No reuse_identical: a version shared by two runs would be deleted for both
                # by delete_model() of either (review rv1 1.6, issue 14 F5); bytes are shared.
                publisher=publisher_record(user, namespace, origin),
            )
            log(describe_upload(spec.name, manifest))
        try:
            if namespace is None and not spec.version:
                raise CheckpointScopeError(
                    "the run's namespace is unknown (no user name), so no unpinned model is "
                    "trusted; set METAFLOW_USER or pin a version ('%s@<version>')." % spec.name
                )
            resolved = store.resolve_named(spec.reference, namespace)
        except (CheckpointNotFound, CheckpointScopeError) as exc:
            raise type(exc)(
                "Step '%s' needs model %r: %s" % (step_name, spec.reference, exc.message)
            ) from None
        note = describe_resolution(spec.name, resolved, namespace)
        if note:
            log(note)


def describe_resolution(name: str, resolved, namespace: Optional[str]) -> str:
    """A line naming newer versions a name did not resolve to (other publishers), or ""."""
    others = [(h, p) for h, p, reason in resolved.passed_over if reason.startswith("published")]
    if not others:
        return ""
    h, publisher = others[0]
    return (
        "[@checkpoint] Model %r: using version %s (%s in %s); %d newer version(s) from other "
        "namespaces are not used, the newest %s@%s by %s (pin it or promote it to %s to use it)."
        % (
            name,
            resolved.manifest.id,
            "promoted" if resolved.trust == "promoted" else "published",
            namespace,
            len(others),
            name,
            h.id,
            describe_publisher(publisher),
            namespace,
        )
    )


def describe_upload(name: str, manifest: Manifest) -> str:
    """One line saying what an upload did (``0 B new``: identical content moved no data)."""
    return "[@checkpoint] Uploaded model %r version %s (%s, %s new)." % (
        name,
        manifest.id,
        human_size(manifest.size),
        human_size(int(manifest.stats.get("bytes_uploaded", 0))),
    )


def load_models(
    store: CheckpointStore, specs: list[ModelSpec], root: str, namespace: str
) -> dict[str, str]:
    """Download every model under ``root``; return ``{name: local path}``.

    Unpinned names resolve among the versions published from the task's ``namespace`` or
    promoted to it.  A model saved from a single file is exposed as the path of that file, a
    directory model as its directory.  Also sets the environment variables for subprocesses.
    """
    from ..common import refspec
    from ..common.resolver import resolve
    from ..core import loading
    from .view import NamesView

    view = NamesView(store, namespace)
    paths: dict[str, str] = {}
    for spec in specs:
        _, manifest = resolve(
            refspec.RefSpec(refspec.NAMED, name=spec.name, version=spec.version), view
        )
        target = os.path.join(root, spec.name)
        loading.load(store, manifest, target, existing=loading.MERGE)
        if manifest.source.get("kind") == "file" and len(manifest.files) == 1:
            target = os.path.join(target, manifest.files[0].path)
        paths[spec.name] = target
        os.environ[spec.env_var] = target
    if paths:
        os.environ[MODELS_ENV] = json.dumps(paths)
    return paths
