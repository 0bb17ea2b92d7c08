"""The counter example and ``resume`` on an S3 datastore (a local moto server)."""

from __future__ import annotations

import json

import pytest

from .flowrun import EXAMPLES, FLOWS, run_flow, run_subprocess, single_task

pytestmark = [pytest.mark.flow, pytest.mark.s3]

CLIENT_SCRIPT = """
import json, os, sys
from metaflow import Checkpoint
refs = Checkpoint().list(sys.argv[1])
dest = Checkpoint().load(refs[0], os.path.join(sys.argv[2], "newest"))
with open(os.path.join(dest, "counter.txt")) as f:
    counter = f.read()
print(json.dumps({"keys": [r.key for r in refs], "root": refs[0].root, "counter": counter}))
"""


def _manifest_keys(client, bucket: str) -> list[str]:
    paginator = client.get_paginator("list_objects_v2")
    keys = []
    for page in paginator.paginate(Bucket=bucket, Prefix="mf/mf.checkpointing/manifests/"):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys


def test_counter_example_on_s3(s3_flow_env, s3_server):
    env, tmp, bucket = s3_flow_env
    result = run_flow(EXAMPLES / "checkpoint_basic.py", env, tmp, datastore="s3")
    task = single_task(result.run, "count_values")
    assert result.run.data.counter == 18
    _, loaded = result.checkpoint_log("count_values")
    assert loaded.startswith(
        "[@checkpoint] Loaded checkpoint 'mfchckpt' (%s, attempt 0" % task.pathspec
    ), loaded

    root = "s3://%s/mf/mf.checkpointing" % bucket
    ref = task["final_checkpoint"].data
    assert ref.root == root
    assert ref.url == root + "/" + ref.key
    keys = _manifest_keys(s3_server["client"], bucket)
    assert len(keys) == 20
    assert "mf/mf.checkpointing/" + ref.key in keys
    assert not (tmp / ".metaflow" / "mf.checkpointing").exists()

    # The client finds the S3 store from the run's metadata and loads from it.
    proc = run_subprocess(["-c", CLIENT_SCRIPT, result.run.pathspec, tmp], env, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["root"] == root
    assert len(seen["keys"]) == 20 and seen["keys"][0] == ref.key
    assert seen["counter"] == "18"


def test_resume_on_s3(s3_flow_env, s3_server):
    env, tmp, bucket = s3_flow_env
    flow = FLOWS / "resume_flow.py"
    origin = run_flow(flow, dict(env, CKPT_TEST_FAIL="1"), tmp, expect="failed", datastore="s3")
    assert len(_manifest_keys(s3_server["client"], bucket)) == 1

    resumed = run_flow(flow, env, tmp, resume=origin.id, datastore="s3")
    task = single_task(resumed.run, "work")
    assert task.data.loaded_value == "saved-by-%s" % origin.id
    assert task.data.loaded_from_pathspec == single_task(origin.run, "work").pathspec
    (line,) = resumed.checkpoint_log("work")
    assert "origin run %s (resume)" % origin.id in line
    keys = _manifest_keys(s3_server["client"], bucket)
    assert len(keys) == 2
    assert {k.split("/")[-3] for k in keys} == {origin.id, resumed.id}
