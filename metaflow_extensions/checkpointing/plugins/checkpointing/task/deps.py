"""The packages a ``@checkpoint`` task needs beyond Metaflow, checked before it touches a store.

Metaflow ships this extension's modules to remote tasks in the code package, but not the
packages it depends on: an image with only Metaflow and boto3 (what a ``@kubernetes`` or
``@batch`` task gets by default) has no ``blake3`` or ``tenacity``.  ``import metaflow`` never
imports them (so steps without ``@checkpoint`` run there, and so do Metaflow's own helpers in
the pod); a ``@checkpoint`` task checks for them first and fails with one message naming what
is missing and how to install it, instead of an ImportError from deep inside a save (so do
``@model`` and ``@huggingface_hub`` tasks, and the client entry points: ``Checkpoint()``,
``load_model``/``delete_model`` and the CLI, wherever they run).
``fsspec`` is needed only for ``az://``/``gs://`` stores, which name it when opened.
"""

from __future__ import annotations

import importlib
import sys

from ..errors import CheckpointDependencyError

#: (module, requirement) a task imports; the requirements match setup.py's install_requires
#: (tests/integration/test_code_package.py checks it).
TASK_PACKAGES = (("blake3", "blake3>=1.0"), ("tenacity", "tenacity>=8.2"))


def _missing() -> list[tuple[str, str]]:
    """(requirement, why) of each package of :data:`TASK_PACKAGES` this Python cannot import."""
    missing = []
    for module, requirement in TASK_PACKAGES:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing.append((requirement, "%s: %s" % (type(exc).__name__, exc)))
    return missing


def require_task_packages(step_name: str, decorator: str = "@checkpoint") -> None:
    """Raise :class:`CheckpointDependencyError` if a package of :data:`TASK_PACKAGES` cannot be
    imported by this task's Python; it names ``decorator``, each package, the reason and the
    install command."""
    missing = _missing()
    if missing:
        _raise("%s in step '%s'" % (decorator, step_name), missing)


def require_client_packages(entry: str) -> None:
    """Raise :class:`CheckpointDependencyError` if a package of :data:`TASK_PACKAGES` cannot be
    imported where a client entry point runs (``Checkpoint()``, ``load_model``, the CLI: in a
    notebook, a script, or a step with no checkpointing decorator), before it touches a store;
    it names ``entry``, each package, the reason and the install command."""
    missing = _missing()
    if missing:
        _raise(entry, missing)


def _raise(who: str, missing: list[tuple[str, str]]) -> None:
    reason = "; ".join("%s (%s)" % item for item in missing)
    raise CheckpointDependencyError(
        "%s needs %s where it runs, and this Python (%s) cannot import %s. Metaflow's code "
        "package carries metaflow-checkpointing's own code to remote tasks but not the packages "
        "it depends on: install them where this runs, e.g. in the task's image "
        "(pip install metaflow-checkpointing, or pip install %s)."
        % (
            who,
            " and ".join(r for _, r in TASK_PACKAGES),
            sys.executable,
            reason,
            " ".join('"%s"' % r for r, _ in missing),
        ),
        reason=reason,
    )
