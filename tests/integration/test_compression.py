"""``@checkpoint(compression="zstd")`` in real flows (local and S3 datastores): the retry loads
attempt 0's compressed checkpoint byte for byte, text is stored compressed and random weights
plain, a child process of the task saves compressed too, and the client loads it all back."""

from __future__ import annotations

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
    storage_for_url,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core import manifest as mf
from metaflow_extensions.checkpointing.plugins.checkpointing.core import verify

from .flowrun import FLOWS, PROBE_PRELUDE, run_flow, run_probe, run_subprocess, single_task

pytestmark = pytest.mark.flow

PROBE = (
    PROBE_PRELUDE
    + """
import hashlib
refs = Checkpoint().list(sys.argv[1], attempt=0)
for ref in refs:
    dest = Checkpoint().load(ref, os.path.join(sys.argv[2], ref.key.rsplit("/", 1)[1]))
    for d, _, fs in os.walk(dest):
        for f in fs:
            with open(os.path.join(d, f), "rb") as fh:
                data = fh.read()
            out[os.path.relpath(os.path.join(d, f), dest)] = hashlib.sha256(data).hexdigest()
print("PROBE" + json.dumps(out))
"""
)


def _check(result, root_url: str, env: dict, tmp) -> None:
    assert result.run["start"].task.data.loaded is True
    task = single_task(result.run, "start")
    storage = storage_for_url(root_url)
    manifests = [mf.loads(storage.get_bytes(o.key), o.key) for o in storage.list("manifests/")]
    by_name = {m.name: m for m in manifests}
    assert set(by_name) == {"mfchckpt", "child"}
    blobs = {f.path: [c.blob for c in f.chunks] for m in manifests for f in m.files}
    assert all(b.endswith(".zst") for b in blobs["logs/train.jsonl"])
    assert not any("." in b for b in blobs["weights.bin"])  # random: stored as is
    assert all(b.endswith(".zst") for b in blobs["child.log"])  # the child compressed too
    stats = by_name["mfchckpt"].stats
    assert stats["bytes_stored"] < stats["bytes_uploaded"]
    assert verify.verify(storage, deep=True).ok
    loaded, _ = run_probe(PROBE, env, tmp, task.pathspec, tmp / "probe")
    assert set(loaded) == {"logs/train.jsonl", "weights.bin", "child.log"}


def test_a_compressed_checkpoint_resumes_the_retry_locally(flow_env):
    env, tmp = flow_env
    result = run_flow(FLOWS / "compression_flow.py", env, tmp)
    _check(result, str(tmp / ".metaflow" / "mf.checkpointing"), env, tmp)


@pytest.mark.s3
def test_a_compressed_checkpoint_resumes_the_retry_on_s3(s3_env, flow_env, monkeypatch):
    from metaflow import metaflow_config
    from metaflow.plugins.datatools.s3 import s3util

    monkeypatch.setattr(s3util, "DATATOOLS_CLIENT_PARAMS", metaflow_config.DATATOOLS_CLIENT_PARAMS)
    env, tmp = flow_env
    bucket = s3_env["new_bucket"]()
    env = dict(env, METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket, **s3_env["env"])
    result = run_flow(FLOWS / "compression_flow.py", env, tmp, datastore="s3")
    _check(result, "s3://%s/mf/mf.checkpointing" % bucket, env, tmp)


def _refused_before_any_task(proc, tmp) -> str:
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Task is starting" not in output, output
    assert "Traceback" not in output, output  # a named one-line error
    assert not (tmp / ".metaflow" / "mf.checkpointing").exists()
    return output


def test_an_unknown_compression_fails_the_run_before_any_task(flow_env):
    env, tmp = flow_env
    args = ["--no-pylint", "--with", "checkpoint:compression=lz4", "run"]
    proc = run_subprocess([FLOWS / "show_card_plain_flow.py", *args], env, tmp)
    output = _refused_before_any_task(proc, tmp)
    assert "@checkpoint(compression='lz4') is not a known compression: use 'zstd'" in output


def test_a_missing_zstandard_fails_the_run_before_any_task_naming_the_extra(flow_env):
    """The launcher cannot import zstandard (a module that raises ImportError shadows it)."""
    env, tmp = flow_env
    blocker = tmp / "no_zstd"
    blocker.mkdir()
    (blocker / "zstandard.py").write_text("raise ImportError('zstandard is not installed')\n")
    env = dict(env, PYTHONPATH=str(blocker))
    proc = run_subprocess([FLOWS / "compression_flow.py", "--no-pylint", "run"], env, tmp)
    output = _refused_before_any_task(proc, tmp)
    assert 'pip install "metaflow-checkpointing[zstd]"' in output, output
