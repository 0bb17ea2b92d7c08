"""Bad input fails early and clearly (design.md sections 2 and 4)."""

from __future__ import annotations

import pytest

from .flowrun import FLOWS, run_flow, run_subprocess, single_task

pytestmark = pytest.mark.flow


def test_invalid_load_policy_fails_the_run_before_any_task(flow_env):
    env, tmp = flow_env
    proc = run_subprocess([FLOWS / "bad_policy_flow.py", "--no-pylint", "run"], env, tmp)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "Invalid checkpoint configuration" in output
    assert (
        "Step 'train': @checkpoint(load_policy='bogus') is not supported: "
        "use one of 'fresh', 'eager', 'none'." in output
    ), output
    assert "Traceback" not in output  # a named one-line error, not an internal error
    assert "Task is starting" not in output
    # No run was started: nothing in the datastore for this flow.
    assert not (tmp / ".metaflow" / "BadPolicyFlow").exists()
    assert not (tmp / ".metaflow" / "mf.checkpointing").exists()


def test_invalid_save_arguments_raise_named_errors_and_commit_nothing(flow_env):
    env, tmp = flow_env
    result = run_flow(FLOWS / "save_errors_flow.py", env, tmp)
    task = single_task(result.run, "work")
    errors = task.data.errors

    for label, error in errors.items():
        assert error is not None, "%s did not raise" % label
        # Metadata errors are CheckpointMetadataError, a CheckpointConfigError.
        expected = "CheckpointMetadataError" if "metadata" in label else "CheckpointConfigError"
        assert error["type"] == expected, (label, error)
        assert error["metaflow_exception"] is True, label

    assert "'bad name/with slash' is invalid" in errors["bad_name"]["message"]
    assert "letters, digits" in errors["bad_name"]["message"]
    assert "non-empty string" in errors["empty_name"]["message"]
    assert "not JSON-serialisable" in errors["non_json_metadata"]["message"]
    assert "must be a dict, got list" in errors["metadata_not_dict"]["message"]
    message = errors["missing_path"]["message"]
    assert "'/nonexistent/checkpoint/dir'" in message and "no such file" in message

    # Nothing was committed by the failed calls; a valid save afterwards works.
    assert task.data.committed_after_errors == 0
    assert task.data.committed_at_end == 1
    assert task.data.good_ref.name == "good"
    assert task.data.good_ref.metadata == {"ok": True}


def test_checkpoint_settings_fail_a_task_at_start_and_never_import_metaflow(flow_env):
    """Seconds with a fraction used to crash ``import metaflow`` (``ValueError: Expected a
    <class 'int'>``), and so every command; now they work, and a bad value fails the task at
    its start with one error naming the variable, the value and the accepted range."""
    env, tmp = flow_env
    good = dict(
        env,
        METAFLOW_CHECKPOINT_RETRY_SECONDS="1.5",
        METAFLOW_CHECKPOINT_LEASE_SECONDS="90.5",
        METAFLOW_CHECKPOINT_TIMEOUT_SECONDS="2.5",
    )
    proc = run_subprocess([FLOWS / "settings_flow.py", "--no-pylint", "run"], good, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]

    bad = dict(env, METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT="abc")
    proc = run_subprocess([FLOWS / "settings_flow.py", "--no-pylint", "run"], bad, tmp)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Task is starting" in output  # Metaflow itself started fine
    assert "Invalid checkpoint configuration" in output
    assert (
        "METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT='abc' is invalid: it must be a number of seconds "
        "> 0 (default: 600)." in output
    ), output
    assert "Traceback" not in output


def test_models_sharing_an_environment_variable_fail_the_run_before_any_task(flow_env):
    """``models=["Res-Net", "Res_Net"]`` used to start, both paths exported as one
    ``METAFLOW_CHECKPOINT_MODEL_RES_NET`` (one silently lost)."""
    env, tmp = flow_env
    proc = run_subprocess([FLOWS / "models_clash_flow.py", "--no-pylint", "run"], env, tmp)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (
        "Step 'start': models 'Res-Net' and 'Res_Net' would share the environment variable "
        "METAFLOW_CHECKPOINT_MODEL_RES_NET" in output
    ), output
    assert "Traceback" not in output
    assert "Task is starting" not in output
