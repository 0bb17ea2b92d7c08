"""``@checkpoint(upload="each"|"end", upload_errors="fail"|"warn")`` in real flows (docs/upload.md).

The flow's store is always a different root than the local tier (``METAFLOW_CHECKPOINT_LOCAL_TIER``
under ``tmp/tierbase``), so what was uploaded and what stayed local are told apart on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core.tier import tier_dir, tier_root

from .flowrun import (
    FLOWS,
    hidden_metaflow_environ,
    local_root,
    local_store,
    run_flow,
    run_subprocess,
    single_task,
    stored_headers,
)

pytestmark = pytest.mark.flow


@pytest.mark.parametrize(
    "attr, value, allowed",
    [("upload", "sometimes", "'each', 'end'"), ("upload_errors", "ignore", "'fail', 'warn'")],
)
def test_a_bad_upload_attribute_fails_the_run_before_any_task(flow_env, attr, value, allowed):
    env, tmp = flow_env
    with_ = "checkpoint:%s=%s" % (attr, value)
    proc = run_subprocess(
        [FLOWS / "plain_flow.py", "--no-pylint", "run", "--with", with_], env, tmp
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (
        "@checkpoint(%s=%r) is not supported: use one of %s." % (attr, value, allowed) in output
    ), output
    assert "Traceback" not in output
    assert "Task is starting" not in output


def _env(flow_env, **extra):
    env, tmp = flow_env
    notes = tmp / "notes"
    notes.mkdir(exist_ok=True)
    tier = tmp / "tierbase"
    env = dict(env, METAFLOW_CHECKPOINT_LOCAL_TIER=str(tier), UPLOAD_NOTES=str(notes), **extra)
    return env, tmp, notes, tier


def _note(notes, name):
    return json.loads((notes / name).read_text())


def _attempt_headers(store, attempt=None):
    headers = stored_headers(store, "user:tester", "UploadEndFlow", "start")
    return [h for h in headers if attempt is None or h.scope.attempt == attempt]


def test_upload_end_uploads_only_the_last_save_of_a_failed_attempt_and_the_retry_resumes(
    flow_env,
):
    env, tmp, notes, tier = _env(flow_env, UPLOAD_HOW="raise")
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp)
    store = local_store(local_root(tmp))
    saved = _note(notes, "saved")
    assert len(saved) == 20
    # Every save committed locally: status "local", and its reference names the flow's store.
    assert {s["status"] for s in saved} == {"local"}
    assert {s["root"] for s in saved} == {store.url}
    listed = _note(notes, "listed")
    assert [k for k, _ in listed][0] == saved[-1]["key"]
    assert {st for _, st in listed} == {"local"}
    assert _note(notes, "reloaded") == "save 20"  # load() by key, from the tier
    assert _note(notes, "reloaded_last") == "save 20"  # load("last") sees the tier too
    # Exactly one checkpoint of attempt 0 reached the flow's store: the 20th.
    assert [h.key for h in _attempt_headers(store, 0)] == [saved[-1]["key"]]
    log = result.checkpoint_log("start")
    uploaded = [m for m in log if m.startswith("[@checkpoint] Uploaded checkpoint")]
    assert len(uploaded) == 1 and saved[-1]["key"] in uploaded[0], log
    # The retry (same machine) resumed from the 20th save.
    assert single_task(result.run, "start").data.loaded == "save 20"
    # The tier is elsewhere than the flow's store, and the task's metadata names it with the
    # host, so a client on this machine finds its local checkpoints.
    assert (tier / tier_dir()).is_dir()
    recorded = json.loads(single_task(result.run, "start").metadata_dict["checkpoint-tier"])
    assert recorded == {"host": socket.gethostname(), "path": tier_root(store.url, str(tier))}


def _uploaded_lines(result):
    return [m for m in result.checkpoint_log("start") if "Uploaded checkpoint" in m]


def test_with_keep_best_the_end_uploads_the_best_and_the_last(flow_env):
    env, tmp, notes, _ = _env(flow_env, UPLOAD_HOW="raise", KEEP_BEST="loss:min")
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp)
    store = local_store(local_root(tmp))
    saved = _note(notes, "saved")
    # save 7 has the lowest loss; save 20 is the last: exactly these two are uploaded.
    assert sorted(h.key for h in _attempt_headers(store, 0)) == sorted(
        [saved[6]["key"], saved[19]["key"]]
    )
    assert len(_uploaded_lines(result)) == 2
    assert single_task(result.run, "start").data.loaded == "save 20"


def test_sigterm_uploads_the_last_save_and_the_retry_resumes(flow_env):
    env, tmp, notes, _ = _env(flow_env, UPLOAD_HOW="sigterm")
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp)
    store = local_store(local_root(tmp))
    saved = _note(notes, "saved")
    assert [h.key for h in _attempt_headers(store, 0)] == [saved[-1]["key"]]
    assert any("Received SIGTERM" in m for m in result.checkpoint_log("start"))
    assert single_task(result.run, "start").data.loaded == "save 20"


def test_pause_uploads_the_last_save(flow_env):
    env, tmp, notes, _ = _env(flow_env, UPLOAD_HOW="pause")
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp, expect="failed")
    store = local_store(local_root(tmp))
    saved = _note(notes, "saved")
    assert [h.key for h in _attempt_headers(store, 0)] == [saved[-1]["key"]]
    assert len(_uploaded_lines(result)) == 1
    assert any("Task paused" in m for m in result.checkpoint_log("start"))


def test_nothing_saved_nothing_uploaded(flow_env):
    env, tmp, notes, _ = _env(flow_env, UPLOAD_HOW="nothing")
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp)
    assert _note(notes, "saved") == []
    assert _attempt_headers(local_store(local_root(tmp))) == []
    assert _uploaded_lines(result) == []
    assert single_task(result.run, "start").data.loaded is None


def test_a_retry_on_another_machine_loads_the_uploaded_checkpoint(flow_env):
    env, tmp, notes, _ = _env(flow_env, UPLOAD_HOW="raise", KEEP_BEST="loss:min")
    env["TIER_BY_ATTEMPT"] = str(tmp / "machines")
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp)
    # Attempt 1 ran with a tier of its own (empty): it loaded the uploaded 20th save.
    assert single_task(result.run, "start").data.loaded == "save 20"
    assert not any("local tier" in m for m in result.checkpoint_log("start"))
    assert (tmp / "machines" / "0" / tier_dir()).is_dir()


def test_upload_errors_fail_fails_the_step_naming_the_error_and_the_retry_loads_the_tier(
    flow_env,
):
    env, tmp, notes, _ = _env(flow_env, UPLOAD_HOW="succeed", FAIL_STORE="1")
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp)
    saved = _note(notes, "saved")
    # Attempt 0's end failed to upload it; attempt 1's end did (what it resumed from).
    assert [h.key for h in _attempt_headers(local_store(local_root(tmp)), 0)] == [saved[-1]["key"]]
    assert "injected: the flow's store refuses writes" in result.stdout + result.stderr
    failed = [m for m in result.checkpoint_log("start") if "failed; it stays local at" in m]
    assert len(failed) == 1 and saved[-1]["key"] in failed[0], result.checkpoint_log("start")
    # Attempt 1 (same machine) loaded the 20th save from the local tier: nothing was lost.
    assert single_task(result.run, "start").data.loaded == "save 20"
    loaded = [m for m in result.checkpoint_log("start") if m.startswith("[@checkpoint] Loaded")]
    assert "from the local tier" in loaded[-1], loaded


@pytest.mark.parametrize("mode", ["end", "each"])
def test_upload_errors_warn_logs_one_warning_records_failed_and_the_step_succeeds(flow_env, mode):
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.tier import tier_root
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.upload_status import (
        UploadRecords,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import (
        LocalStorage,
    )

    env, tmp, notes, tier = _env(
        flow_env, UPLOAD_HOW="succeed", FAIL_STORE="1", UPLOAD_ERRORS="warn", UPLOAD_MODE=mode
    )
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp)
    store = local_store(local_root(tmp))
    saved = _note(notes, "saved")
    assert len(saved) == 20
    assert {s["status"] for s in saved} == ({"local"} if mode == "end" else {"failed"})
    # Nothing reached the flow's store; one warning says what failed, where the checkpoint is
    # kept and that training continues.
    assert _attempt_headers(store) == []
    log = result.checkpoint_log("start")
    warnings = [m for m in log if "upload_errors='warn'" in m]
    assert len(warnings) == 1, log
    root = tier_root(store.url, str(tier))
    assert "kept locally at %s" % root in warnings[0]
    assert "training continues" in warnings[0]
    assert "injected: the flow's store refuses writes" in warnings[0]
    record = UploadRecords(LocalStorage(root)).get(saved[-1]["key"])
    assert record is not None and record.status == "failed"
    assert "injected" in record.error
    # The step succeeded with its attempt 0.
    assert single_task(result.run, "start").data.saved[-1]["key"] == saved[-1]["key"]


async def _run_and_ctrl_c(env: dict, cwd, ready) -> tuple[str, str, int]:
    """Start the flow with metaflow.Runner, Ctrl+C its process group once the task is ready
    (as a terminal does: the runtime and the task at once), wait for the run to end."""
    from metaflow import Runner

    with hidden_metaflow_environ():
        runner = Runner(
            str(FLOWS / "upload_end_flow.py"),
            show_output=False,
            env=env,
            cwd=str(cwd),
            pylint=False,
        )
    with runner:
        executing = await runner.async_run()
        pid = executing.command_obj.process.pid
        end = time.monotonic() + 180
        while not (ready / "train").exists():
            assert executing.returncode is None, executing.stdout[-3000:]
            assert time.monotonic() < end, "the task never got ready"
            await asyncio.sleep(0.1)
        assert os.getpgid(pid) == pid
        os.killpg(pid, signal.SIGINT)
        await executing.wait(timeout=120)
        return executing.stdout, executing.stderr, executing.returncode


def test_ctrl_c_uploads_the_last_save_within_metaflows_limit_and_resume_continues(flow_env):
    env, tmp, notes, _ = _env(flow_env, UPLOAD_HOW="ready", SIGINT_OWN_GROUP="1")
    ready = tmp / "ready"
    ready.mkdir()
    env["READY_DIR"] = str(ready)
    stdout, stderr, returncode = asyncio.run(_run_and_ctrl_c(env, tmp, ready))
    output = stdout + stderr
    assert returncode != 0
    assert "Killing" not in output, output[-4000:]  # the task ended by itself, in time
    saved = _note(notes, "saved")
    store = local_store(local_root(tmp))
    assert [h.key for h in _attempt_headers(store, 0)] == [saved[-1]["key"]]
    assert "Uploaded checkpoint %s" % saved[-1]["key"] in output
    # `resume` (any machine: it reads the flow's store) continues from the 20th save.
    env = {k: v for k, v in env.items() if k != "SIGINT_OWN_GROUP"}
    resumed = run_flow(FLOWS / "upload_end_flow.py", env, tmp, resume=_note(notes, "run"))
    assert single_task(resumed.run, "start").data.loaded == "save 20"


@pytest.mark.s3
def test_upload_end_on_s3_uploads_the_best_and_the_last_and_the_retry_resumes(
    s3_env, flow_env, monkeypatch
):
    from metaflow import metaflow_config
    from metaflow.plugins.datatools.s3 import s3util

    from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import parse_key

    monkeypatch.setattr(s3util, "DATATOOLS_CLIENT_PARAMS", metaflow_config.DATATOOLS_CLIENT_PARAMS)
    env, tmp, notes, tier = _env(flow_env, UPLOAD_HOW="raise", KEEP_BEST="loss:min")
    bucket = s3_env["new_bucket"]()
    env = dict(env, METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket, **s3_env["env"])
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp, datastore="s3")
    saved = _note(notes, "saved")
    assert {s["root"] for s in saved} == {"s3://%s/mf/mf.checkpointing" % bucket}
    prefix = "mf/mf.checkpointing/"
    pages = (
        s3_env["client"]
        .get_paginator("list_objects_v2")
        .paginate(Bucket=bucket, Prefix=prefix + "manifests/")
    )
    keys = [o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", [])]
    attempt0 = [k for k in keys if parse_key(k).scope.attempt == 0]
    assert sorted(attempt0) == sorted([saved[6]["key"], saved[19]["key"]])
    assert single_task(result.run, "start").data.loaded == "save 20"
    assert (tier / tier_dir()).is_dir()


@pytest.mark.s3
def test_on_s3_a_retry_uploads_the_checkpoint_it_resumed_from_when_the_first_upload_failed(
    s3_env, flow_env, monkeypatch
):
    """Moto S3: attempt 0's end upload fails (every write refused), the step fails; attempt 1
    loads save 20 from the tier and succeeds without saving: its end uploads save 20, whole."""
    from metaflow import metaflow_config
    from metaflow.plugins.datatools.s3 import s3util

    monkeypatch.setattr(s3util, "DATATOOLS_CLIENT_PARAMS", metaflow_config.DATATOOLS_CLIENT_PARAMS)
    env, tmp, notes, tier = _env(flow_env, UPLOAD_HOW="succeed", FAIL_STORE="1")
    bucket = s3_env["new_bucket"]()
    env = dict(env, METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket, **s3_env["env"])
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp, datastore="s3")
    saved = _note(notes, "saved")
    assert single_task(result.run, "start").data.loaded == "save 20"
    prefix = "mf/mf.checkpointing/"
    client = s3_env["client"]
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "manifests/"
    )
    keys = [o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", [])]
    assert keys == [saved[-1]["key"]]
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import blob_key
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import loads

    body = client.get_object(Bucket=bucket, Key=prefix + keys[0])["Body"].read()
    manifest = loads(body, keys[0])
    for blob in {c.blob for f in manifest.files for c in f.chunks}:  # every blob is there
        client.head_object(Bucket=bucket, Key=prefix + blob_key(blob))


def test_an_upload_that_cannot_finish_in_the_time_allowed_stays_local_and_the_log_says_where(
    flow_env,
):
    env, tmp, notes, tier = _env(
        flow_env, UPLOAD_HOW="sigterm", SLOW_STORE="2.5", METAFLOW_CHECKPOINT_INTERRUPT_SECONDS="1"
    )
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp)
    store = local_store(local_root(tmp))
    saved = _note(notes, "saved")
    log = result.checkpoint_log("start")
    stayed = [m for m in log if "stayed local at" in m]
    root = tier_root(store.url, str(tier))
    assert len(stayed) == 1, result.checkpoint_log("start")
    assert stayed[0].startswith(
        "[@checkpoint] Checkpoint %s stayed local at %s" % (saved[-1]["key"], root)
    )
    assert "within 1 s of SIGTERM" in stayed[0]
    # The retry on this machine loads it from the tier, and its end uploads it (the abandoned
    # upload committed nothing; this one the whole checkpoint, which loads).
    assert single_task(result.run, "start").data.loaded == "save 20"
    after = log[log.index(stayed[0]) :]
    assert any("Uploaded checkpoint %s" % saved[-1]["key"] in m for m in after), log
    assert [h.key for h in _attempt_headers(store, 0)] == [saved[-1]["key"]]
    store.load(store.read(saved[-1]["key"]), str(tmp / "loaded"))
    assert (tmp / "loaded" / "state.txt").read_text() == "save 20"


def test_a_child_process_saves_into_the_tier_and_the_end_uploads_its_checkpoint(flow_env):
    env, tmp, notes, _ = _env(flow_env, UPLOAD_HOW="child")
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp)
    child = _note(notes, "child")
    assert child["status"] == "local"
    # The child's save is the newest: the one uploaded, and the one the retry loads.
    assert [h.key for h in _attempt_headers(local_store(local_root(tmp)), 0)] == [child["key"]]
    assert single_task(result.run, "start").data.loaded == "child save"


# ------------------------------------------------------------------------------ tier cleanup
def _tier_state(store, base) -> dict:
    """What the tier holds on disk: manifests, upload records, and the bytes of its blobs."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import (
        split_manifest_key,
    )

    root = tier_root(store.url, str(base))
    out = {"manifests": [], "records": [], "blob_bytes": 0}
    for directory, _dirs, files in os.walk(root):
        rel = os.path.relpath(directory, root).split(os.sep)[0]
        for name in files:
            key = os.path.relpath(os.path.join(directory, name), root)
            if rel == "manifests" and split_manifest_key(key) is not None:
                out["manifests"].append(key)
            elif rel == "uploads":
                out["records"].append(key)
            elif rel == "blobs":
                out["blob_bytes"] += os.path.getsize(os.path.join(directory, name))
    return out


def test_a_successful_task_leaves_nothing_in_the_tier_once_its_checkpoint_is_uploaded(flow_env):
    env, tmp, notes, tier = _env(flow_env, UPLOAD_HOW="succeed")
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp)
    store = local_store(local_root(tmp))
    saved = _note(notes, "saved")
    assert _note(notes, "reloaded") == "save 20"  # the tier held them while the step ran
    # The 20th is in the flow's store and loads; the tier kept none of the 20 saves, no
    # record, and no blob byte (before this cleanup: every save's blobs stayed).
    assert [h.key for h in _attempt_headers(store)] == [saved[-1]["key"]]
    assert _tier_state(store, tier) == {"manifests": [], "records": [], "blob_bytes": 0}
    assert single_task(result.run, "start").data.saved[-1]["key"] == saved[-1]["key"]
    assert not any("Warning" in m for m in result.checkpoint_log("start"))


def test_a_failed_attempt_keeps_the_tier_for_its_retry_and_the_retrys_success_cleans_it(
    flow_env,
):
    env, tmp, notes, tier = _env(flow_env, UPLOAD_HOW="raise")
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp)
    store = local_store(local_root(tmp))
    # Attempt 0 failed after uploading its 20th save; the retry (same machine) loaded it, the
    # tier's copy being kept by the failed attempt, and succeeded: then the tier was emptied.
    assert single_task(result.run, "start").data.loaded == "save 20"
    assert _tier_state(store, tier) == {"manifests": [], "records": [], "blob_bytes": 0}


def test_a_retry_uploads_the_checkpoint_it_resumed_from_when_the_failed_attempts_upload_failed(
    flow_env,
):
    """Default ``upload_errors="fail"``: attempt 0 trains to the end but its end upload fails (a
    store outage), so the step fails; attempt 1 (same machine) loads save 20 from the tier and
    has nothing left to save.  Its end uploads that checkpoint: a run that ends "Done" never
    leaves its only checkpoint in the tier (before: the flow's store held nothing)."""
    env, tmp, notes, tier = _env(flow_env, UPLOAD_HOW="succeed", FAIL_STORE="1")
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp)
    store = local_store(local_root(tmp))
    saved = _note(notes, "saved")
    assert single_task(result.run, "start").data.loaded == "save 20"
    assert [h.key for h in _attempt_headers(store)] == [saved[-1]["key"]]
    dest = tmp / "loaded"
    store.load(store.read(saved[-1]["key"]), str(dest))
    assert (dest / "state.txt").read_text() == "save 20"
    uploaded = [m for m in result.checkpoint_log("start") if "Uploaded checkpoint" in m]
    assert len(uploaded) == 1 and saved[-1]["key"] in uploaded[0], uploaded
    # Now confirmed in the flow's store, it (and the 19 it superseded) left the tier.
    assert _tier_state(store, tier) == {"manifests": [], "records": [], "blob_bytes": 0}


def test_a_checkpoint_whose_upload_failed_survives_the_cleanup_and_the_log_says_where(flow_env):
    """``upload_errors="warn"``: the step succeeds though its end upload failed; the cleanup
    removes only what is confirmed in the flow's store (or superseded there), so the failed
    one, the only copy, stays, and the warning names the tier."""
    env, tmp, notes, tier = _env(
        flow_env, UPLOAD_HOW="succeed", FAIL_STORE="1", UPLOAD_ERRORS="warn"
    )
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp)
    store = local_store(local_root(tmp))
    saved = _note(notes, "saved")
    assert _attempt_headers(store) == []
    state = _tier_state(store, tier)
    assert os.path.relpath(saved[-1]["key"]) in state["manifests"]
    tier_store = local_store(tier_root(store.url, str(tier)))
    dest = tmp / "from-tier"
    tier_store.load(tier_store.read(saved[-1]["key"]), str(dest))
    assert (dest / "state.txt").read_text() == "save 20"
    warned = [m for m in result.checkpoint_log("start") if "upload_errors='warn'" in m]
    assert len(warned) == 1 and "kept locally at %s" % tier_root(store.url, str(tier)) in warned[0]


def test_the_end_uploads_the_newest_of_every_series_and_logs_the_latest_false_ones_left_local(
    flow_env,
):
    """``save(name="best", latest=False)`` kept as an artifact loads in the next step: the end
    uploads the newest checkpoint of every series this task saved besides the retry's pick; the
    ``latest=False`` saves it does not upload are counted in one log line naming the tier."""
    env, tmp, _, tier = _env(flow_env)
    result = run_flow(FLOWS / "upload_series_flow.py", env, tmp)
    store = local_store(local_root(tmp))
    data = result.run["start"].task.data
    uploaded = stored_headers(store, "user:tester", "UploadSeriesFlow", "start")
    assert sorted(h.key for h in uploaded) == sorted([data.last, data.best.key])
    assert result.run["evaluate"].task.data.evaluated == "epoch 2"
    log = result.checkpoint_log("start")
    stay = [m for m in log if "saved with latest=False stay only in the local tier" in m]
    assert len(stay) == 1, log
    assert stay[0].startswith("[@checkpoint] 2 checkpoint(s)")
    assert tier_root(store.url, str(tier)) in stay[0]
    # The two left local (the draft and the older "best") still load on this machine.
    state = _tier_state(store, tier)
    assert os.path.relpath(data.draft) in state["manifests"] and len(state["manifests"]) == 2


def test_each_warn_keeps_the_tier_bounded_by_keep_last_and_drops_failed_ones_once_superseded(
    flow_env,
):
    """``upload="each"``, ``upload_errors="warn"``, ``keep_last=2``: saves 3-7 fail (outage) and
    are committed into the tier, where retention prunes them like the flow's store; once save 12
    is uploaded the failed ones are moot, and the successful end removes them: the task lists
    the 2 that keep_last keeps, nothing "failed"."""
    env, tmp, _, tier = _env(flow_env, OUTAGE="1")
    result = run_flow(FLOWS / "upload_series_flow.py", env, tmp)
    store = local_store(local_root(tmp))
    statuses = result.run["start"].task.data.statuses
    assert statuses == ["uploaded"] * 2 + ["failed"] * 5 + ["uploaded"] * 5
    assert result.run["start"].task.data.tier_during == 2  # keep_last bounded the tier (not 5)
    uploaded = stored_headers(store, "user:tester", "UploadSeriesFlow", "start")
    assert len(uploaded) == 2
    state = _tier_state(store, tier)
    assert state == {"manifests": [], "records": [], "blob_bytes": 0}, state
    log = result.checkpoint_log("start")
    pruned_in_tier = [m for m in log if "Warning: pruning" in m]
    assert pruned_in_tier == [], log


def _other_task_in_tier(store, base, task, text, tmp):
    """A checkpoint of another flow's task committed into this machine's tier."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.tier import open_tier

    src = tmp / ("other-%s" % task)
    src.mkdir()
    (src / "state.txt").write_text(text)
    scope = Scope("user:tester", "OtherFlow", "train", "_", "1", task, 0)
    tier = open_tier(store, str(base))
    try:
        return tier.save(str(src), scope).key
    finally:
        tier.close()  # its writer's lease ended: it keeps no blob from the task's collection


def test_a_task_start_sweeps_tier_checkpoints_older_than_the_setting_but_failed_ones(flow_env):
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.upload_status import (
        FAILED,
        UPLOADED,
        UploadRecords,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import (
        LocalStorage,
    )

    env, tmp, notes, tier = _env(
        flow_env, UPLOAD_HOW="succeed", METAFLOW_CHECKPOINT_LOCAL_TIER_DAYS="2"
    )
    store = local_store(local_root(tmp))
    root = tier_root(store.url, str(tier))
    old = _other_task_in_tier(store, tier, "1", "old", tmp)
    old_failed = _other_task_in_tier(store, tier, "2", "old, upload failed", tmp)
    recent = _other_task_in_tier(store, tier, "3", "recent", tmp)
    records = UploadRecords(LocalStorage(root))
    records.set(old, UPLOADED)
    records.set(old_failed, FAILED, "the store refused")
    for key, days in ((old, 3), (old_failed, 3), (recent, 1)):
        then = time.time() - days * 86400
        os.utime(os.path.join(root, key), (then, then))
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp)
    state = _tier_state(store, tier)
    # The 3-day-old one went with its record; the failed one stayed (logged with the tier's
    # path); the 1-day-old one (of a task that may still need it) stayed; this task's own saves
    # were removed at its successful end.
    assert sorted(state["manifests"]) == sorted([old_failed, recent])
    assert [k.split("/", 1)[1] for k in state["records"]] == [old_failed.split("/", 1)[1]]
    # Its blobs were collected: the blobs left are exactly those the two kept ones reference.
    kept_store = CheckpointStore(LocalStorage(root))
    needed = {
        c.blob for k in (old_failed, recent) for f in kept_store.read(k).files for c in f.chunks
    }
    assert {o.key.rsplit("/", 1)[1] for o in kept_store.storage.list("blobs/")} == needed
    kept = [m for m in result.checkpoint_log("start") if m.startswith("[@checkpoint] Kept 1")]
    assert len(kept) == 1 and root in kept[0] and old_failed in kept[0], kept


def test_two_tasks_sharing_a_tier_at_once_each_upload_and_clean_without_losing_the_others(
    flow_env,
):
    env, tmp, _, tier = _env(flow_env, SAVES="12")
    result = run_flow(FLOWS / "upload_foreach_flow.py", env, tmp)
    store = local_store(local_root(tmp))
    # Both tasks ran at once (a foreach of two), each uploaded its last save, which loads whole.
    lasts = result.run["join"].task.data.lasts
    assert len(set(lasts)) == 2
    for i, key in enumerate(lasts):
        dest = tmp / ("loaded%d" % i)
        store.load(store.read(key), str(dest))
        assert (dest / "shared.bin").stat().st_size == 3 << 20
    # And the tier is empty once the second one ended: nothing leaked, nothing kept.
    state = _tier_state(store, tier)
    assert state["manifests"] == [] and state["blob_bytes"] == 0, state


@pytest.mark.parametrize("mode", ["each", "end"])
def test_in_task_list_in_a_retry_says_how_each_attempt_ended(flow_env, mode):
    """``current.checkpoint.list()`` fills ``task_status`` as ``Checkpoint().list()`` does:
    attempt 0's checkpoint says its attempt "failed", the running attempt's says None."""
    env, tmp, _, _ = _env(flow_env, UPLOAD_MODE=mode)
    result = run_flow(FLOWS / "list_retry_flow.py", env, tmp)
    listed = result.run["start"].task.data.listed
    # With upload="end" attempt 0's save was uploaded at its end; attempt 1's is still local.
    assert listed == [
        [1, None, "local" if mode == "end" else "uploaded"],
        [0, "failed", "uploaded"],
    ]


@pytest.mark.parametrize("keep_last", [None, 1])
def test_retention_pruning_a_tier_checkpoint_removes_its_upload_record(flow_env, keep_last):
    """Attempt 0 of an ``upload="end"`` task saves, fails, and its end uploads that save (a
    record ``uploaded`` in the tier).  Attempt 1 saves once: with ``keep_last=1`` retention
    prunes attempt 0's checkpoint from the tier, and its record goes at once."""
    extra = {"KEEP_LAST": str(keep_last)} if keep_last else {}
    env, tmp, _, _ = _env(flow_env, UPLOAD_MODE="end", **extra)
    result = run_flow(FLOWS / "list_retry_flow.py", env, tmp)
    data = result.run["start"].task.data
    attempt0 = [
        h.key
        for h in stored_headers(
            local_store(local_root(tmp)), "user:tester", "ListRetryFlow", "start", attempt=0
        )
    ]
    assert len(attempt0) == 1
    assert data.records == ([] if keep_last else attempt0)


@pytest.mark.parametrize("corrupt", ["blob", "manifest"])
def test_a_damaged_tier_copy_is_read_from_the_flow_store_with_one_warning(flow_env, corrupt):
    """Attempt 0's last save is uploaded, then its tier copy is damaged (a flipped blob byte, a
    truncated manifest): the retry on this machine loads the flow's store's intact copy, and
    one warning names the tier's bad copy (before: every retry there failed)."""
    env, tmp, notes, tier = _env(flow_env, CORRUPT=corrupt)
    result = run_flow(FLOWS / "upload_corrupt_flow.py", env, tmp)
    store = local_store(local_root(tmp))
    data = single_task(result.run, "start").data
    assert data.corrupted_first, "the helper did not damage the tier before the retry"
    assert data.loaded == "save 3"
    root = tier_root(store.url, str(tier))
    warned = [m for m in result.checkpoint_log("start") if "local tier's copy" in m]
    assert len(warned) == 1, result.checkpoint_log("start")
    assert "is damaged" in warned[0] and root in warned[0]
    assert _note(notes, "saved")[-1] in warned[0]


def test_a_damaged_tier_copy_the_flow_store_lacks_fails_naming_the_tier_copy(flow_env):
    """The flow's store refused attempt 0's upload, then the tier's copy was damaged: the retry
    fails, and its error says the local tier's copy is the bad one and where it is."""
    env, tmp, notes, tier = _env(flow_env, CORRUPT="blob", FAIL_STORE="1")
    result = run_flow(FLOWS / "upload_corrupt_flow.py", env, tmp, expect="failed")
    output = result.stdout + result.stderr
    store = local_store(local_root(tmp))
    assert (notes / "corrupted").exists()
    assert "The local tier's copy of checkpoint %s is damaged" % _note(notes, "saved")[-1] in (
        output.replace("\n", " ")
    ), output[-3000:]
    assert "in the local tier %s" % tier_root(store.url, str(tier)) in output.replace("\n", " ")


def test_a_tier_another_user_could_reach_fails_the_task_before_any_save(flow_env):
    """The per-user tier directory left group/other-writable (as another user sharing the base
    could have made it, then planting checkpoints in it): the task refuses it at its start,
    naming the path, the mode found and the setting, and saves nothing."""
    env, tmp, notes, tier = _env(flow_env, UPLOAD_HOW="succeed")
    parent = tier / tier_dir()
    parent.mkdir(parents=True)
    os.chmod(parent, 0o777)
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp, expect="failed")
    output = (result.stdout + result.stderr).replace("\n", " ")
    assert "Refusing the local checkpoint tier" in output, output[-3000:]
    assert (
        "%s is accessible by group or others (owner uid %d, mode 0o777)"
        % (
            parent,
            os.geteuid(),
        )
        in output
    )
    assert "METAFLOW_CHECKPOINT_LOCAL_TIER" in output
    assert not (notes / "saved").exists()
    assert os.listdir(parent) == []


def test_a_paused_task_whose_upload_failed_is_shown_paused(flow_env):
    """``upload_errors="warn"``: the end upload of a task that called ``pause()`` fails (blob
    writes refused), so none of its checkpoints reach the flow's store; the attempt's ending is
    still recorded there (a summary with no entries), and the CLI shows its checkpoints'
    ``task_status`` "paused" (before: None, as for a running task)."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.summary import (
        attempts_ended,
    )

    env, tmp, notes, _ = _env(
        flow_env, UPLOAD_HOW="pause", UPLOAD_ERRORS="warn", FAIL_STORE="blobs"
    )
    result = run_flow(FLOWS / "upload_end_flow.py", env, tmp, expect="failed")
    store = local_store(local_root(tmp))
    assert any("Task paused" in m for m in result.checkpoint_log("start"))
    assert _attempt_headers(store) == []  # nothing uploaded
    key = _note(notes, "saved")[-1]["key"]
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import parse_key

    assert attempts_ended(store.storage, parse_key(key).scope.task_prefix()) == {0: "paused"}
    proc = run_subprocess(
        [FLOWS / "upload_end_flow.py", "--no-pylint", "checkpoint", "list", "--json"], env, tmp
    )
    listed = json.loads(proc.stdout)
    mine = [r for r in listed if r["key"] == key]
    assert mine and mine[0]["status"] == "failed" and mine[0]["task_status"] == "paused", listed


@pytest.mark.parametrize("mode", ["end", "each"])
def test_a_nodes_failed_upload_survives_another_nodes_newer_upload_of_the_same_name(flow_env, mode):
    """``@parallel``, ``upload_errors="warn"``: node 0's upload fails, node 1's newer checkpoint
    of the same name is uploaded.  Another writer's upload never supersedes node 0's: its only
    copy stays in the tier and is listed ``failed``; node 1's is listed ``uploaded``."""
    env, tmp, notes, tier = _env(flow_env, UPLOAD_MODE=mode)
    result = run_flow(FLOWS / "upload_parallel_warn_flow.py", env, tmp)
    store = local_store(local_root(tmp))
    control, worker = _note(notes, "node-0")["key"], _note(notes, "node-1")["key"]
    tier_store = local_store(tier_root(store.url, str(tier)))
    dest = tmp / "from-tier"
    tier_store.load(tier_store.read(control), str(dest))
    assert (dest / "state.txt").read_text() == "node 0"
    assert [
        h.key for h in stored_headers(store, "user:tester", "UploadParallelWarnFlow", "train")
    ] == [worker]
    proc = run_subprocess(
        [FLOWS / "upload_parallel_warn_flow.py", "--no-pylint", "checkpoint", "list", "--json"],
        env,
        tmp,
    )
    listed = {r["key"]: r["status"] for r in json.loads(proc.stdout)}
    assert listed == {control: "failed", worker: "uploaded"}, listed
    assert result.run.successful


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_local_tier_fails_the_save_naming_the_tier_and_how_to_move_it(flow_env):
    """The tier's disk is full (an 8 KiB tmpfs): the save's error says it is the local tier,
    where it is, and that METAFLOW_CHECKPOINT_LOCAL_TIER moves it (before: only the OS error
    on a blob path)."""
    import subprocess

    env, tmp, notes, _ = _env(flow_env, UPLOAD_HOW="succeed")
    full = tmp / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(full)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        env["METAFLOW_CHECKPOINT_LOCAL_TIER"] = str(full)
        result = run_flow(FLOWS / "upload_end_flow.py", env, tmp, expect=None)
    finally:
        subprocess.run(["umount", "-l", str(full)])
    out = result.stdout + result.stderr
    assert "the local checkpoint tier %s/mfckpt-tier-0/" % full in out, out[-3000:]
    assert "is full" in out and "METAFLOW_CHECKPOINT_LOCAL_TIER" in out


def _start_live(env: dict, tmp, sync) -> subprocess.Popen:
    """Run UploadSweepLiveFlow in the background until its task saved (SYNC/saved)."""
    from .flowrun import subprocess_env

    sync.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(FLOWS / "upload_sweep_live_flow.py"), "--no-pylint", "run"],
        env=subprocess_env(dict(env, SYNC=str(sync))),
        cwd=str(tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (sync / "saved").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.1)
    return proc


def test_a_start_sweep_leaves_a_live_tasks_old_checkpoint_and_logs_what_it_removed(flow_env):
    """Task A saved, then waits; task B starts with METAFLOW_CHECKPOINT_LOCAL_TIER_DAYS shorter
    than A's wait.  B's sweep removes an old checkpoint of a task that ended (one log line: how
    many, of how many tasks, the tier) but never A's, whose writer is alive: A's end uploads it
    (before: it was deleted and A ended "successfully" with nothing uploaded)."""
    env, tmp, _notes, tier = _env(flow_env)
    first = run_flow(FLOWS / "upload_sweep_live_flow.py", env, tmp)  # leaves a record, dead pid
    store = local_store(local_root(tmp))
    root = tier_root(store.url, str(tier))
    left = os.path.join(root, first.run["start"].task.data.key)
    os.makedirs(os.path.dirname(left), exist_ok=True)
    tier_store = local_store(root)
    # A copy the first task's cleanup removed, put back as an old, abandoned tier checkpoint.
    with open(left, "wb") as f:
        f.write(store.storage.get_bytes(first.run["start"].task.data.key))
    del tier_store
    sync = tmp / "sync"
    proc = _start_live(env, tmp, sync)
    live_key = (sync / "saved").read_text()
    time.sleep(1.5)
    try:
        second = run_flow(
            FLOWS / "upload_sweep_live_flow.py",
            dict(env, METAFLOW_CHECKPOINT_LOCAL_TIER_DAYS="0.00001"),
            tmp,
        )
    finally:
        (sync / "go").write_text("")
        out = proc.communicate(timeout=180)[0]
    assert proc.returncode == 0, out[-3000:]
    assert os.path.exists(os.path.join(root, live_key)) or store.storage.exists(live_key)
    assert store.storage.exists(live_key), out[-3000:]
    removed = [m for m in second.checkpoint_log("start") if m.startswith("[@checkpoint] Removed")]
    assert len(removed) == 1 and "1 checkpoint(s) of 1 task(s)" in removed[0], removed
    assert root in removed[0]
    assert not os.path.exists(left)


@pytest.mark.parametrize("errors", ["fail", "warn"])
def test_a_task_whose_tier_checkpoint_vanished_before_its_upload_says_so(flow_env, errors):
    """Something removed the task's only checkpoint from the tier while it ran (a temp-directory
    cleaner): its end says so, naming it; with "fail" the step fails (before: "Task finished
    successfully" with nothing uploaded)."""
    env, tmp, _notes, tier = _env(flow_env, UPLOAD_ERRORS=errors)
    sync = tmp / "sync"
    proc = _start_live(env, tmp, sync)
    key = (sync / "saved").read_text()
    store = local_store(local_root(tmp))
    os.remove(os.path.join(tier_root(store.url, str(tier)), key))
    (sync / "go").write_text("")
    out = proc.communicate(timeout=180)[0]
    assert "removed from the local tier before its upload" in out, out[-3000:]
    assert key in out
    assert (proc.returncode != 0) == (errors == "fail"), out[-3000:]


def test_twenty_successful_tasks_leave_no_empty_directory_in_the_tier(flow_env):
    """20 ``upload="end"`` tasks of a foreach succeed on one machine: their cleanup removes the
    directories it empties (manifests, upload records, writer marks), so the tier does not grow
    by a few empty directories per task (before: ~4 per task, forever)."""
    env, tmp, _, tier = _env(flow_env, TASKS="20")
    run_flow(FLOWS / "upload_many_flow.py", env, tmp)
    store = local_store(local_root(tmp))
    root = tier_root(store.url, str(tier))
    empty = [  # (a top-level folder, e.g. manifests/, may stay)
        os.path.relpath(d, root)
        for d, dirs, files in os.walk(root)
        if not dirs and not files and os.path.dirname(d) != root and d != root
    ]
    assert empty == [], empty
    assert len(stored_headers(store, "user:tester", "UploadManyFlow", "train")) == 20
