"""Every registration string the extension declares names the right object, resolved as
Metaflow resolves it (relative to the package of the ``mfextinit_*`` module declaring it).

A string that no longer resolves (a module moved, a group renamed) would otherwise only show as a
missing decorator or command at run time; these tests fail at once and name the string.
``tests/cli/test_cli.py::test_both_entry_points_offer_the_checkpoint_commands`` runs the
commands themselves (``metaflow checkpoint --help`` and ``python flow.py checkpoint --help``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest
from metaflow._vendor import click
from metaflow.extension_support import cmd as mf_cmd
from metaflow.extension_support import plugins as mf_plugins

EXT = "metaflow_extensions.checkpointing"
IMPL = EXT + ".plugins.checkpointing"

#: Every command of the ``checkpoint`` group, as ``checkpoint --help`` lists them (sorted).
COMMANDS = [
    "delete", "download", "du", "gc", "list", "load", "pause", "pin", "promote", "prune",
    "show", "unpin", "unpromote", "upload", "verify",
]  # fmt: skip

#: (declaring module, category, plugin name) -> the object the string must name.
EXPECTED = {
    ("plugins", "step_decorator", "checkpoint"): IMPL + ".task.decorator.CheckpointDecorator",
    ("plugins", "step_decorator", "model"): IMPL + ".task.model_decorator.ModelDecorator",
    ("plugins", "step_decorator", "huggingface_hub"): IMPL
    + ".frameworks.hub_decorator.HuggingfaceHubDecorator",
    ("plugins", "cli", "checkpoint"): IMPL + ".cli.cli",
    # The reference extension's flow decorator, refused before any task (task/refused.py).
    ("plugins", "flow_decorator", "with_artifact_store"): IMPL
    + ".task.refused.WithArtifactStoreDecorator",
    ("cmd", "cmd", "checkpoint"): IMPL + ".cli.cli",
    # The reference extension's datastores: Metaflow's S3 datastore under their names.
    ("plugins", "datastore", "s3-compatible"): IMPL + ".task.datastores.S3CompatibleStorage",
    ("plugins", "datastore", "coreweave"): IMPL + ".task.datastores.CoreweaveStorage",
}


def _declaring(point: str) -> ModuleType:
    return importlib.import_module("%s.%s.mfextinit_checkpointing" % (EXT, point))


def _declared() -> dict[tuple[str, str, str], str]:
    """Every (module, category, name) -> absolute path the extension declares, resolved by
    Metaflow's own ``_resolve_relative_paths`` on a copy of the declaring module's globals."""
    out = {}
    plugin_globals = dict(vars(_declaring("plugins")))
    mf_plugins._resolve_relative_paths(plugin_globals)
    for category in mf_plugins._plugin_categories:
        for name, path in plugin_globals.get("%sS_DESC" % category.upper(), []):
            out[("plugins", category, name)] = path
    for name, path in plugin_globals.get("TRAMPOLINE_CLIS_DESC", []):
        out[("plugins", "trampoline_cli", name)] = path
    cmd_globals = dict(vars(_declaring("cmd")))
    mf_cmd._resolve_relative_paths(cmd_globals)
    for name, path in cmd_globals.get("CMDS_DESC", []):
        out[("cmd", "cmd", name)] = path
    return out


def _load(path: str) -> Any:
    module, attr = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), attr)


def test_the_declarations_are_exactly_the_expected_ones():
    """A new or removed registration must be added here (and so checked below)."""
    assert sorted(_declared()) == sorted(EXPECTED)


@pytest.mark.parametrize("declaration", sorted(EXPECTED), ids=lambda d: "%s:%s:%s" % d)
def test_each_registration_string_names_the_right_object(declaration):
    point, category, name = declaration
    path = _declared()[declaration]
    assert path == EXPECTED[declaration], "%s declares %r" % (point, path)
    target = _load(path)
    assert target is _load(EXPECTED[declaration])
    if category == "step_decorator":
        from metaflow.decorators import StepDecorator

        assert issubclass(target, StepDecorator)
        assert mf_plugins.get_plugin_name(category, target) == name
        return
    if category == "datastore":
        from metaflow.plugins.datastores.s3_storage import S3Storage

        assert issubclass(target, S3Storage)
        assert mf_plugins.get_plugin_name(category, target) == name
        return
    if category == "flow_decorator":
        from metaflow.decorators import FlowDecorator

        assert issubclass(target, FlowDecorator)
        assert mf_plugins.get_plugin_name(category, target) == name
        return
    # A CLI plugin or command is a click group holding exactly one group, named `name`, the
    # name Metaflow extracts (its check for both cli plugins and commands).
    assert isinstance(target, click.Group)
    assert list(target.commands) == [name]
    if category == "cli":
        assert mf_plugins.get_plugin_name(category, target) == name
    group = target.commands[name]
    assert isinstance(group, click.Group)
    assert sorted(group.commands) == COMMANDS


def test_metaflow_registers_them_on_import():
    """What ``import metaflow`` actually resolved: our decorator and our CLI group."""
    from metaflow import plugins

    from metaflow_extensions.checkpointing.plugins.checkpointing import cli
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.decorator import (
        CheckpointDecorator,
    )

    assert [d for d in plugins.STEP_DECORATORS if d.name == "checkpoint"] == [CheckpointDecorator]
    assert plugins.get_plugin_cli_path()["checkpoint"] == EXPECTED[("plugins", "cli", "checkpoint")]
    assert cli.cli in plugins.get_plugin_cli()


def test_the_toplevel_module_exports_the_public_names():
    """``toplevel/mfextinit_checkpointing.toplevel`` names a module of ``toplevel/`` whose
    ``__all__`` is what ``from metaflow import ...`` offers."""
    import metaflow

    name = _declaring("toplevel").toplevel
    module = importlib.import_module("%s.toplevel.%s" % (EXT, name))
    # The full list (classes and errors) is locked in tests/test_packaging.py.
    assert module.__all__[:6] == [
        "Checkpoint",
        "CheckpointReference",
        "TrainingState",
        "Every",
        "CheckpointCallback",
        "HFCheckpointCallback",
    ]
    for public in module.__all__:
        assert getattr(metaflow, public) is getattr(module, public)
