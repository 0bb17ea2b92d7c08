"""Named checkpoints a step declares it needs: ``@checkpoint(models=["resnet50", ...])``.

A spec is ``"name"`` (newest version), ``"name@<version>"`` (a version id or its prefix) or
``"name=<local path>"`` (upload the file or directory first unless that content is already the
newest version, then use it).  The launcher checks every spec before any task starts; each task
downloads its models before the step's code runs and exposes their local paths as
``current.checkpoint.models[name]`` and environment variables, for subprocesses and non-Python
tools.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Callable, Optional

from .core.manifest import Manifest
from .core.scope import validate_name
from .core.store import CheckpointStore
from .errors import CheckpointConfigError, CheckpointNotFound
from .fmt import human_size

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
        name, sep, path = text.partition("=")
        name, _, version = name.partition("@")
        try:
            validate_name(name)
        except CheckpointConfigError as exc:
            raise CheckpointConfigError("Step '%s': %s" % (step_name, exc.message)) from None
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
        specs.append(ModelSpec(name, version, path or None))
    return specs


def ensure_available(
    store: CheckpointStore,
    specs: list[ModelSpec],
    step_name: str,
    log: Callable[[str], None],
) -> None:
    """Upload local sources that are not stored yet, then check every model exists.

    Raises
    ------
    CheckpointConfigError
        A local path that does not exist (nothing uploaded).
    CheckpointNotFound
        A model (or version) that is not in the store, naming the step.
    """
    for spec in specs:
        if spec.local_path and not os.path.exists(spec.local_path):
            raise CheckpointConfigError(
                "Step '%s': model %r should be uploaded from %s, which does not exist."
                % (step_name, spec.name, os.path.abspath(spec.local_path))
            )
    for spec in specs:
        if spec.local_path:
            from .core.scope import library_scope

            manifest = store.save(
                os.path.abspath(spec.local_path),
                library_scope(spec.name),
                name=spec.name,
                reuse_identical=True,
            )
            log(describe_upload(spec.name, manifest))
        try:
            store.named(spec.reference)
        except CheckpointNotFound as exc:
            raise CheckpointNotFound(
                "Step '%s' needs model %r: %s" % (step_name, spec.reference, exc.message)
            ) from None


def describe_upload(name: str, manifest: Manifest) -> str:
    """One line saying what an upload did (and that identical content moved no data)."""
    stats = manifest.stats
    if stats.get("reused"):
        return "[@checkpoint] Model %r is already stored as version %s (%s): 0 bytes uploaded." % (
            name,
            manifest.id,
            human_size(manifest.size),
        )
    return "[@checkpoint] Uploaded model %r version %s (%s, %s new)." % (
        name,
        manifest.id,
        human_size(manifest.size),
        human_size(int(stats.get("bytes_uploaded", 0))),
    )


def load_models(store: CheckpointStore, specs: list[ModelSpec], root: str) -> dict[str, str]:
    """Download every model under ``root``; return ``{name: local path}``.

    A model saved from a single file is exposed as the path of that file, a directory model as
    its directory.  Also sets the environment variables for subprocesses.
    """
    paths: dict[str, str] = {}
    for spec in specs:
        manifest = store.named(spec.reference)
        target = os.path.join(root, spec.name)
        store.load(manifest, target)
        if manifest.source.get("kind") == "file" and len(manifest.files) == 1:
            target = os.path.join(target, manifest.files[0].path)
        paths[spec.name] = target
        os.environ[spec.env_var] = target
    if paths:
        os.environ[MODELS_ENV] = json.dumps(paths)
    return paths
