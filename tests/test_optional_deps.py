"""Optional packages (issue 15 item 1): a feature whose package is missing or broken fails when
its object is created or its store opened, with a ``CheckpointDependencyError`` naming the
package and the extra to install, never a raw ``ModuleNotFoundError`` mid-training.

Each case runs in a child process whose ``PYTHONPATH`` starts with a directory of stand-in
packages that fail to import (as a missing or broken install does); this process and the
other tests keep the real packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import flow_environment
from integration.flowrun import run_flow

pytest.importorskip("torch")

#: A stand-in for a package that is not installed.
MISSING = 'raise ModuleNotFoundError("No module named %r" % __name__, name=__name__)\n'
#: A stand-in for a package that is installed but broken.
BROKEN = 'raise ImportError("libbroken.so: cannot open shared object file")\n'


def _shadow(tmp: Path, **packages: str) -> str:
    """A directory of packages (name -> body of its ``__init__.py``); returns its path."""
    root = tmp / "shadow"
    for name, body in packages.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "__init__.py").write_text(body)
    return str(root)


#: Runs ``CASE`` (a statement) and prints what it raised as JSON.
PROBE = """\
import json, metaflow
from metaflow import CheckpointCallback, CheckpointConfigError, TrainingState
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.factory import storage_for_url
out = {}
try:
    %s
    out["raised"] = None
except BaseException as exc:
    out = {"raised": type(exc).__name__, "message": str(exc),
           "is_import_error": isinstance(exc, ImportError),
           "is_config_error": isinstance(exc, CheckpointConfigError), "reason": exc.reason,
           "url": getattr(exc, "url", None)}
print("OUT:" + json.dumps(out))
"""


def _probe(tmp: Path, case: str, **packages: str) -> dict:
    env = dict(os.environ, PYTHONPATH=_shadow(tmp, **packages), USER="tester")
    done = subprocess.run(
        [sys.executable, "-c", PROBE % case],
        env=env,
        cwd=str(tmp),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("OUT:")][-1]
    return json.loads(line[4:])


@pytest.mark.parametrize(
    "case, packages, package, extra",
    [
        ("TrainingState(step=0)", {"safetensors": MISSING}, "safetensors", "torch"),
        ("TrainingState(step=0)", {"torch": MISSING}, "torch", "torch"),
        (
            "CheckpointCallback(monitor='val_loss')",
            {"lightning": MISSING, "pytorch_lightning": MISSING},
            "pytorch_lightning",
            "lightning",
        ),
        ('storage_for_url("s3://bucket/ckpt")', {"boto3": MISSING}, "boto3", "s3"),
    ],
    ids=["TrainingState-safetensors", "TrainingState-torch", "CheckpointCallback", "s3-root"],
)
def test_a_missing_package_fails_at_creation_naming_the_extra(
    tmp_path, case, packages, package, extra
):
    """Creating the object (or opening the store) raises, naming the package and the extra; the
    error is both a CheckpointConfigError and an ImportError."""
    out = _probe(tmp_path, case, **packages)
    assert out["raised"] == "CheckpointDependencyError", out
    assert repr(package) in out["message"], out
    assert 'pip install "metaflow-checkpointing[%s]"' % extra in out["message"], out
    assert out["is_import_error"] and out["is_config_error"]
    assert out["reason"].startswith("ModuleNotFoundError: No module named")
    if extra == "s3":
        assert out["url"] == "s3://bucket/ckpt"


def test_a_broken_install_says_what_the_import_said(tmp_path):
    """An installed but broken package (a failing native library) is reported with its own
    error text, not as missing."""
    out = _probe(tmp_path, "TrainingState(step=0)", safetensors=BROKEN)
    assert out["raised"] == "CheckpointDependencyError", out
    assert "libbroken.so: cannot open shared object file" in out["message"]
    assert out["reason"] == "ImportError: libbroken.so: cannot open shared object file"


def test_without_the_optional_packages_import_metaflow_and_the_decorator_work(tmp_path):
    """Nothing optional is imported before it is needed: with torch, safetensors, numpy,
    lightning and boto3 all unimportable, ``from metaflow import ...`` of every name works."""
    blocked = ("torch", "safetensors", "numpy", "lightning", "pytorch_lightning", "boto3")
    out = _probe(tmp_path, "pass", **{name: MISSING for name in blocked})
    assert out == {"raised": None}


FLOW = """\
from metaflow import FlowSpec, TrainingState, checkpoint, current, step


class NoSafetensorsFlow(FlowSpec):
    @checkpoint
    @step
    def start(self):
        import torch

        model = torch.nn.Linear(2, 1)
        state = TrainingState(model=model)
        print("training starts")
        state.save(current.checkpoint)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    NoSafetensorsFlow()
"""


@pytest.fixture
def _client_namespace():
    """Runner's Run objects are read in this process: keep its client out of a user namespace."""
    from metaflow import namespace

    namespace(None)
    yield


@pytest.mark.flow
@pytest.mark.usefixtures("_client_namespace")
def test_a_flow_without_safetensors_fails_before_training_naming_the_extra(tmp_path):
    """In a real flow whose tasks cannot import safetensors, the step fails where the
    TrainingState is created, before its training loop, with the one-line error and the extra
    to install (no traceback of a ModuleNotFoundError)."""
    (tmp_path / "home").mkdir()
    flow = tmp_path / "no_safetensors_flow.py"
    flow.write_text(FLOW)
    env = flow_environment(tmp_path, PYTHONPATH=_shadow(tmp_path, safetensors=MISSING))
    result = run_flow(flow, env, tmp_path, expect="failed")
    out = result.stdout + result.stderr
    assert "Missing optional package" in out, result.describe()
    assert (
        "TrainingState needs the package 'safetensors', which cannot be imported "
        "(ModuleNotFoundError: No module named 'safetensors'). Install it with: "
        'pip install "metaflow-checkpointing[torch]"'
    ) in out
    assert "training starts" not in out
    assert "Traceback" not in out


S3_ROOT_FLOW = """\
from metaflow import FlowSpec, checkpoint, step


class S3RootFlow(FlowSpec):
    @checkpoint(root="s3://bucket/ckpt")
    @step
    def start(self):
        print("step code ran")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    S3RootFlow()
"""


@pytest.mark.flow
@pytest.mark.usefixtures("_client_namespace")
def test_a_flow_with_an_s3_root_but_no_boto3_fails_as_its_task_starts(tmp_path):
    """A local flow whose @checkpoint(root="s3://...") cannot import boto3 fails when the task
    opens its store, before the step's code runs, naming the root and the s3 extra."""
    (tmp_path / "home").mkdir()
    flow = tmp_path / "s3_root_flow.py"
    flow.write_text(S3_ROOT_FLOW)
    env = flow_environment(tmp_path, PYTHONPATH=_shadow(tmp_path, boto3=MISSING))
    result = run_flow(flow, env, tmp_path, expect="failed")
    out = result.stdout + result.stderr
    assert (
        "Checkpoint root s3://bucket/ckpt (S3) needs the package 'boto3', which cannot be "
        "imported (ModuleNotFoundError: No module named 'boto3'). Install it with: "
        'pip install "metaflow-checkpointing[s3]"'
    ) in out, result.describe()
    assert "step code ran" not in out and "Traceback" not in out
