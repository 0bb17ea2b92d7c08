"""Client entry points without blake3/tenacity (an image with only Metaflow, a step with no
checkpointing decorator): ``Checkpoint()``, ``load_model``/``delete_model`` and the CLI name the
missing packages and the install command before they touch a store, as a ``@checkpoint`` task
does (task/deps.py), never a bare ``ImportError`` from inside a save, and a refused save leaves
nothing behind (no lease).

Each case runs in a child process whose ``PYTHONPATH`` starts with a stand-in package that fails
to import (as a missing install does); this process keeps the real packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MISSING = 'raise ModuleNotFoundError("No module named %r" % __name__, name=__name__)\n'

PROBE = """\
import json, os
from metaflow import Checkpoint, load_model, delete_model
out = {}
try:
    %s
    out["raised"] = None
except BaseException as exc:
    out = {"raised": type(exc).__name__, "message": str(exc),
           "is_import_error": isinstance(exc, ImportError)}
print("OUT:" + json.dumps(out))
"""


def _env(tmp: Path, *modules: str) -> dict:
    shadow = tmp / "shadow"
    for name in modules:
        (shadow / name).mkdir(parents=True, exist_ok=True)
        (shadow / name / "__init__.py").write_text(MISSING)
    return dict(
        os.environ,
        PYTHONPATH=str(shadow),
        USER="tester",
        METAFLOW_USER="tester",
        METAFLOW_HOME=str(tmp / "home"),
        METAFLOW_DEFAULT_METADATA="local",
        METAFLOW_DEFAULT_DATASTORE="local",
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp),
    )


def _probe(tmp: Path, case: str, *modules: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE % case],
        env=_env(tmp, *modules),
        cwd=str(tmp),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("OUT:")][-1]
    return json.loads(line[4:])


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "case, entry",
    [
        ("Checkpoint(root=os.path.abspath('store')).save('m', name='mymodel')", "Checkpoint()"),
        ("Checkpoint(root=os.path.abspath('store')).load('mymodel', 'out')", "Checkpoint()"),
        ("Checkpoint().list()", "Checkpoint()"),
        ("load_model('mymodel', 'out')", "load_model()"),
        ("delete_model('mymodel')", "delete_model()"),
    ],
)
@pytest.mark.parametrize("missing", [("blake3",), ("tenacity",), ("blake3", "tenacity")])
def test_a_client_entry_point_names_the_missing_packages_before_touching_a_store(
    tmp_path, case, entry, missing
):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(os.urandom(1000))
    (tmp_path / "store").mkdir()
    out = _probe(tmp_path, case, *missing)
    assert out["raised"] == "CheckpointDependencyError", out
    assert out["is_import_error"]  # code guarding with `except ImportError` keeps working
    message = out["message"]
    assert message.startswith("%s needs blake3>=1.0 and tenacity>=8.2" % entry), message
    for module in missing:
        assert "No module named '%s'" % module in message
    assert "pip install metaflow-checkpointing" in message
    # Nothing was written: no lease, no blob, no manifest, no download target.
    assert _files(tmp_path / "store") == []
    assert not (tmp_path / "out").exists()


def test_the_cli_names_the_missing_packages(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "metaflow.cmd.main_cli", "checkpoint", "list"],
        env=_env(tmp_path, "blake3"),
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    text = done.stdout + done.stderr
    assert "metaflow checkpoint (the CLI) needs blake3>=1.0 and tenacity>=8.2" in text, text
    assert "Traceback" not in text, text


def test_with_the_packages_a_client_save_and_load_work(tmp_path):
    """The check passes where both import: the same calls succeed (no false refusal)."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"weights")
    out = _probe(
        tmp_path,
        "Checkpoint(root=os.path.abspath('store')).save('m', name='mymodel'); "
        "Checkpoint(root=os.path.abspath('store')).load('mymodel', 'out')",
    )
    assert out["raised"] is None, out
    assert (tmp_path / "out" / "w.bin").read_bytes() == b"weights"
