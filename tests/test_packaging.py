"""Installation, registration, import weight and the locked public API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = "metaflow_extensions.checkpointing.plugins.checkpointing"


def _python(code: str, env: dict | None = None, cwd: str | None = None) -> str:
    full_env = dict(os.environ, USER="tester", METAFLOW_USER="tester")
    full_env.update(env or {})
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def test_import_metaflow_stays_light(tmp_path):
    """`import metaflow` loads the decorator but never torch, boto3, botocore, safetensors or
    Lightning or transformers (the callbacks import them only when one is created), nor our
    modules used only when a TrainingState is written or saved, or a user's directory is
    made (``core/user_dirs.py``)."""
    code = (
        "import sys, metaflow\n"
        "from metaflow import checkpoint, Checkpoint, CheckpointCallback, TrainingState\n"
        "from metaflow import HFCheckpointCallback\n"
        "heavy = [m for m in ('torch', 'boto3', 'botocore', 's3transfer', 'safetensors', "
        "'numpy', 'fsspec', 'lightning', 'pytorch_lightning', 'transformers', 'accelerate', "
        "'%s.frameworks.state_files', '%s.frameworks.staged_state', '%s.core.user_dirs') "
        "if m in sys.modules]\n"
        "print(','.join(heavy) or 'none')\n" % (PKG, PKG, PKG)
    )
    assert _python(code, cwd=str(tmp_path)).strip() == "none"


def test_editable_install_registers_the_extension(tmp_path):
    """The development install (`pip install -e .`) is what Metaflow loads, from this checkout."""
    # A source checkout may also hold a metadata-only *.egg-info; look at every distribution.
    dists = [d for d in metadata.distributions() if d.metadata["Name"] == "metaflow-checkpointing"]
    directs = [json.loads(d.read_text("direct_url.json") or "{}") for d in dists]
    assert any(d.get("dir_info", {}).get("editable") is True for d in directs), directs
    code = (
        "import metaflow, inspect\n"
        "from metaflow import checkpoint\n"
        "from %s.task import decorator\n"
        "print(inspect.getfile(decorator))\n" % PKG
    )
    path = _python(code, cwd=str(tmp_path)).strip()
    assert path.startswith(str(REPO)), path


@pytest.mark.timeout(300)
def test_regular_install_registers_the_extension(tmp_path):
    """A normal (non-editable) install from a built wheel registers decorator and toplevel."""
    wheel_dir = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(wheel_dir.glob("metaflow_checkpointing-*.whl"))
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    code = (
        "import inspect, metaflow\n"
        "from metaflow import checkpoint, Checkpoint\n"
        "print(inspect.getfile(Checkpoint))\n"
    )
    # Only the wheel's copy may be considered, not the editable checkout.
    env = {"PYTHONPATH": str(target), "METAFLOW_EXTENSIONS_SEARCH_DIRS": str(target)}
    path = _python(code, env=env, cwd=str(tmp_path)).strip()
    assert path.startswith(str(target)), path


def test_public_api_is_locked():
    """The names users import and the attributes they call are exactly the declared ones."""
    import metaflow

    from metaflow_extensions.checkpointing.plugins.checkpointing import errors
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.decorator import (
        CheckpointDecorator,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.runtime import (
        CheckpointRuntime,
    )
    from metaflow_extensions.checkpointing.toplevel import checkpointing_toplevel as top

    assert top.__all__ == [
        "Checkpoint",
        "CheckpointReference",
        "TrainingState",
        "Every",
        "CheckpointCallback",
        "HFCheckpointCallback",
        "load_model",
        "delete_model",
        "CheckpointException",
        "CheckpointConfigError",
        "CheckpointMetadataError",
        "CheckpointDependencyError",
        "CheckpointNotEnabled",
        "CheckpointNotFound",
        "CheckpointScopeError",
        "CheckpointIncomplete",
        "CheckpointIntegrityError",
        "ManifestError",
        "StorageError",
        "CheckpointInterrupted",
        "CheckpointPaused",
        "TrainingStateError",
        "CheckpointMetadataWarning",
        "CheckpointListWarning",
        "artifact_store_from",
    ]
    for name in top.__all__:
        assert getattr(metaflow, name) is getattr(top, name)
    # Every error a user can meet is importable from metaflow (StorageNotFound is internal).
    assert set(errors.__all__) - set(top.__all__) == {"StorageNotFound"}
    assert CheckpointDecorator.name == "checkpoint"
    assert CheckpointDecorator.defaults == {
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
    public = sorted(n for n in dir(CheckpointRuntime) if not n.startswith("_"))
    assert public == [
        "cleanup",
        "directory",
        "flush",
        "info",
        "is_loaded",
        "list",
        "load",
        "load_initial",
        "models",
        "on_interrupt",
        "pause",
        "pending",
        "refresh_directory",
        "save",
        "scope",
        "should_pause",
        "task_identifier",
    ]
    public_client = sorted(n for n in dir(metaflow.Checkpoint) if not n.startswith("_"))
    assert public_client == [
        "best",
        "close",
        "delete",
        "directory",
        "du",
        "gc",
        "generate_key",
        "get",
        "list",
        "load",
        "open",
        "pause",
        "pin",
        "promote",
        "prune",
        "save",
        "unpin",
        "unpromote",
        "verify",
    ]
    assert sorted(errors.__all__) == [
        "CheckpointConfigError",
        "CheckpointDependencyError",
        "CheckpointException",
        "CheckpointIncomplete",
        "CheckpointIntegrityError",
        "CheckpointInterrupted",
        "CheckpointMetadataError",
        "CheckpointNotEnabled",
        "CheckpointNotFound",
        "CheckpointPaused",
        "CheckpointScopeError",
        "ManifestError",
        "StorageError",
        "StorageNotFound",
    ]
    from metaflow.exception import MetaflowException

    assert all(issubclass(getattr(errors, n), MetaflowException) for n in errors.__all__)


def test_invalid_load_policy_names_the_problem_before_any_task(tmp_path):
    """A bad attribute on the command line (`--with checkpoint:load_policy=x`) fails at start."""
    flow = tmp_path / "plain_flow.py"
    flow.write_text(
        "from metaflow import FlowSpec, step\n"
        "class PlainFlow(FlowSpec):\n"
        "    @step\n"
        "    def start(self):\n"
        "        self.next(self.end)\n"
        "    @step\n"
        "    def end(self):\n"
        "        pass\n"
        "if __name__ == '__main__':\n"
        "    PlainFlow()\n"
    )
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import flow_environment

    (tmp_path / "home").mkdir()
    env = dict(os.environ, **flow_environment(tmp_path))
    out = subprocess.run(
        [
            sys.executable,
            str(flow),
            "--no-pylint",
            "run",
            "--with",
            "checkpoint:load_policy=sometimes",
        ],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "load_policy='sometimes'" in out.stderr + out.stdout
    assert "'fresh', 'eager', 'none'" in out.stderr + out.stdout
    assert not (tmp_path / ".metaflow" / "PlainFlow").exists() or not any(
        (tmp_path / ".metaflow" / "PlainFlow").glob("*/start")
    )


def test_model_api_is_locked():
    """``@model`` takes the reference extension's attributes (plus ``root``); ``current.model``
    and its ``loaded`` mapping offer exactly the declared attributes."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.model_decorator import (
        ModelDecorator,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.model_loaded import (
        LoadedModels,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.model_runtime import (
        ModelRuntime,
    )

    assert ModelDecorator.name == "model"
    assert ModelDecorator.defaults == {
        "load": None,
        "best_effort_load": False,
        "temp_dir_root": None,
        "root": None,
    }
    public = sorted(n for n in dir(ModelRuntime) if not n.startswith("_"))
    assert public == [
        "close", "default_label", "load", "load_into", "loaded", "resolve", "save", "store_url",
    ]  # fmt: skip
    public = sorted(n for n in dir(LoadedModels) if not n.startswith("_"))
    assert public == [
        "add", "cleanup", "close", "directory", "discard", "get", "info", "items", "keys",
        "values",
    ]  # fmt: skip
