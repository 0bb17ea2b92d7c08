"""``@checkpoint(upload="each"|"end", upload_errors="fail"|"warn")`` in real flows (docs/upload.md).

The flow's store is always a different root than the local tier (``METAFLOW_CHECKPOINT_LOCAL_TIER``
under ``tmp/tierbase``), so what was uploaded and what stayed local are told apart on disk.
"""

from __future__ import annotations

import json

import pytest

from .flowrun import (
    FLOWS,
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
    assert _note(notes, "reloaded") == "save 20"
    # Exactly one checkpoint of attempt 0 reached the flow's store: the 20th.
    assert [h.key for h in _attempt_headers(store, 0)] == [saved[-1]["key"]]
    log = result.checkpoint_log("start")
    uploaded = [m for m in log if m.startswith("[@checkpoint] Uploaded checkpoint")]
    assert len(uploaded) == 1 and saved[-1]["key"] in uploaded[0], log
    # The retry (same machine) resumed from the 20th save.
    assert single_task(result.run, "start").data.loaded == "save 20"
    # The tier is elsewhere than the flow's store.
    assert (tier / "mfckpt-tier").is_dir()
