"""Remote-like tasks: no ``METAFLOW_CHECKPOINT_*`` settings reach them (design.md section 7).

A pod gets the datastore root on its command line (``--datastore-root``) but none of the
launcher's ``METAFLOW_CHECKPOINT_*`` variables: the checkpoint root must follow from the
datastore alone, for the task, its retry and the client.
"""

from __future__ import annotations

import json

import pytest

from .flowrun import FLOWS, local_store, run_flow, run_subprocess, single_task, stored_headers

pytestmark = pytest.mark.flow

LIST_SCRIPT = """
import json, sys
from metaflow import Checkpoint
refs = Checkpoint().list(sys.argv[1])
print(json.dumps([{"key": r.key, "root": r.root, "attempt": r.attempt} for r in refs]))
"""


def test_root_derives_from_the_datastore_without_checkpoint_settings(flow_env, monkeypatch):
    base_env, tmp_path = flow_env
    # Even if the launching shell had checkpoint settings, the task must not depend on them:
    # run_flow hides this process's METAFLOW_* variables and the flow env sets none.
    monkeypatch.setenv("METAFLOW_CHECKPOINT_ROOT", str(tmp_path / "launcher-only"))
    # The datastore lives under <tmp>/pod; the pod receives its root as --datastore-root (the
    # sysroot is set to match so that local metadata, which lives beside it, is found too).
    ds_root = tmp_path / "pod" / ".metaflow"
    env = dict(base_env, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(ds_root.parent))
    assert not [k for k in env if k.startswith("METAFLOW_CHECKPOINT_")]

    result = run_flow(FLOWS / "env_dir_flow.py", env, tmp_path, datastore_root=str(ds_root))
    task = single_task(result.run, "work")
    ckpt_root = ds_root / "mf.checkpointing"

    # Attempt 0 saved into <datastore root>/mf.checkpointing and the retry loaded it from there.
    assert task.data.checkpoint_settings_seen == []
    assert task.current_attempt == 1
    assert task.data.was_loaded is True
    assert task.data.loaded_attempt == 0
    assert task.data.loaded_root == str(ckpt_root)
    headers = stored_headers(local_store(ckpt_root), "user:tester", "EnvDirFlow", "work")
    assert [(h.scope.run, h.scope.attempt) for h in headers] == [(result.id, 0)]
    assert not (tmp_path / "launcher-only").exists()
    assert not (tmp_path / ".metaflow" / "mf.checkpointing").exists()

    # The client finds the same root from the run's ds-type/ds-root metadata.
    proc = run_subprocess(["-c", LIST_SCRIPT, "EnvDirFlow/%s" % result.id], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert listed == [{"key": headers[0].key, "root": str(ckpt_root), "attempt": 0}]


def test_root_attribute_travels_with_the_flow_and_the_client_finds_it(flow_env):
    """@checkpoint(root=...) puts checkpoints there for every attempt; the client finds that
    root from the task metadata the decorator registers, without being told."""
    base_env, tmp_path = flow_env
    elsewhere = tmp_path / "elsewhere" / "ckpts"
    env = dict(base_env, CKPT_TEST_ROOT=str(elsewhere))

    result = run_flow(FLOWS / "env_dir_flow.py", env, tmp_path)
    task = single_task(result.run, "work")
    assert task.current_attempt == 1
    assert task.data.was_loaded is True
    assert task.data.loaded_root == str(elsewhere)
    headers = stored_headers(local_store(elsewhere), "user:tester", "EnvDirFlow", "work")
    assert [h.scope.attempt for h in headers] == [0]
    assert not (tmp_path / ".metaflow" / "mf.checkpointing").exists()

    proc = run_subprocess(["-c", LIST_SCRIPT, "EnvDirFlow/%s" % result.id], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert listed == [{"key": headers[0].key, "root": str(elsewhere), "attempt": 0}]
