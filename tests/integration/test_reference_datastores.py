"""The reference extension's datastores ``s3-compatible`` and ``coreweave`` (task/datastores.py):
a configuration naming one keeps working, and checkpoints live in the same S3 store."""

from __future__ import annotations

import json
import uuid

import pytest

from .flowrun import EXAMPLES, run_flow, run_subprocess, single_task

pytestmark = [pytest.mark.s3]

CLIENT_SCRIPT = """
import json, os, sys
from metaflow import Checkpoint
refs = Checkpoint().list(sys.argv[1])
dest = Checkpoint().load(refs[0], os.path.join(sys.argv[2], "newest"))
with open(os.path.join(dest, "counter.txt")) as f:
    print(json.dumps({"root": refs[0].root, "counter": f.read()}))
"""


@pytest.fixture
def compat_env(s3_env, flow_env, monkeypatch):
    """(env, tmp, bucket): a flow environment whose S3 settings point at the moto server."""
    from metaflow import metaflow_config
    from metaflow.plugins.datatools.s3 import s3util

    monkeypatch.setattr(s3util, "DATATOOLS_CLIENT_PARAMS", metaflow_config.DATATOOLS_CLIENT_PARAMS)
    env, tmp = flow_env
    bucket = s3_env["new_bucket"]()
    env = dict(env, METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket, **s3_env["env"])
    return env, tmp, bucket


@pytest.mark.flow
def test_a_flow_on_the_s3_compatible_datastore_saves_and_loads_its_checkpoint_on_retry(
    compat_env, s3_server
):
    """``--datastore=s3-compatible`` (the reference's datastore name): the counter example's
    retry loads the checkpoint its first attempt saved, in ``<sysroot>/mf.checkpointing``."""
    env, tmp, bucket = compat_env
    result = run_flow(EXAMPLES / "checkpoint_basic.py", env, tmp, datastore="s3-compatible")
    task = single_task(result.run, "count_values")
    assert result.run.data.counter == 18
    _, loaded = result.checkpoint_log("count_values")
    assert loaded.startswith(
        "[@checkpoint] Loaded checkpoint 'mfchckpt' (%s, attempt 0" % task.pathspec
    ), loaded
    root = "s3://%s/mf/mf.checkpointing" % bucket
    assert task["final_checkpoint"].data.root == root
    listed = s3_server["client"].list_objects_v2(Bucket=bucket, Prefix="mf/mf.checkpointing/")
    assert listed["KeyCount"] > 0
    assert not (tmp / ".metaflow" / "mf.checkpointing").exists()  # nothing in a local store
    # A notebook finds the store from the run's metadata (ds-type "s3-compatible").
    proc = run_subprocess(["-c", CLIENT_SCRIPT, result.run.pathspec, tmp], env, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"root": root, "counter": "18"}


@pytest.mark.parametrize("ds_type", ["s3-compatible", "coreweave"])
def test_the_reference_datastores_store_artifacts_through_the_s3_settings(
    s3_env, ds_type, monkeypatch
):
    """Registered under the reference's names, rooted at METAFLOW_DATASTORE_SYSROOT_S3 and
    reaching the endpoint of METAFLOW_S3_ENDPOINT_URL; our checkpoint root sits below theirs."""
    from metaflow import plugins
    from metaflow.plugins.datastores import s3_storage

    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
        checkpoint_root,
    )

    bucket = s3_env["new_bucket"]()
    impl = {d.TYPE: d for d in plugins.DATASTORES}[ds_type]
    sysroot = "s3://%s/mf" % bucket
    monkeypatch.setattr(s3_storage, "DATASTORE_SYSROOT_S3", sysroot)  # the setting, read once
    assert impl.get_datastore_root_from_config(print) == sysroot
    storage = impl(sysroot)
    payload = uuid.uuid4().bytes
    storage.save_bytes(iter([("a/blob", payload)]), overwrite=True)
    assert storage.is_file(["a/blob", "a/none"]) == [True, False]
    with storage.load_bytes(["a/blob"]) as loaded:
        (key, path, _meta) = next(iter(loaded))
        with open(path, "rb") as f:
            assert (key, f.read()) == ("a/blob", payload)
    got = s3_env["client"].get_object(Bucket=bucket, Key="mf/a/blob")["Body"].read()
    assert got == payload
    assert checkpoint_root(ds_type, sysroot) == sysroot + "/mf.checkpointing"
