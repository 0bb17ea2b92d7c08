"""``@model`` and ``current.model`` in flows written in the reference extension's style, run
with ``metaflow.Runner`` on a local and an S3 datastore: models saved in one step as named
checkpoints and loaded in the next (by artifact, (artifact, path), name, name@version, a
checkpoint reference), an identical re-save moving no bytes, best-effort and missing entries,
a save from one node of a ``@parallel`` gang, and ``load_model``/``delete_model`` outside."""

from __future__ import annotations

import os
import textwrap

import pytest

from .flowrun import FLOWS, PROBE_PRELUDE, run_flow, run_probe, run_subprocess, single_task

pytestmark = pytest.mark.flow

#: Uploads the named checkpoint "pretrained" before the run (a version to pin by id).
UPLOAD = PROBE_PRELUDE + textwrap.dedent(
    """
    src = os.path.join(sys.argv[1], "pretrained")
    os.makedirs(src, exist_ok=True)
    with open(os.path.join(src, "pretrained.bin"), "wb") as f:
        f.write(b"p" * 100)
    print("PROBE" + json.dumps(Checkpoint().save(src, name="pretrained")["version"]))
    """
)

#: load_model / delete_model from a script, outside any task.
OUTSIDE = PROBE_PRELUDE + textwrap.dedent(
    """
    from metaflow import Run, load_model, delete_model
    run = Run("ModelFlow/" + sys.argv[1])
    ref = run["start"].task.data.my_model
    dest = os.path.join(sys.argv[2], "outside")
    attempt("refused_saved", lambda: Checkpoint().get("refused@last").version)
    attempt("load", lambda: [load_model(ref, dest) == dest, sorted(os.listdir(dest))])
    attempt("by_name", lambda: sorted(os.listdir(load_model("my_model", dest + "2"))))
    pinned = run["start"].task.data.plain
    Checkpoint().pin(pinned)
    attempt("delete_pinned", lambda: delete_model(pinned))
    attempt("delete", lambda: delete_model(ref))
    attempt("again", lambda: delete_model(ref))
    attempt("load_deleted", lambda: load_model(ref, dest + "3"))
    # The identical re-save of the same step is its own version: still there (issue 14 F5).
    attempt("again_kept", lambda: sorted(os.listdir(load_model(
        run["start"].task.data.again, dest + "4"))))
    print("PROBE" + json.dumps(out))
    """
)


def _run_model_flow(env, tmp):
    version, _ = run_probe(UPLOAD, env, tmp, tmp)
    env = dict(env, PRETRAINED_VERSION=version[:8], TUPLE_PATH=str(tmp / "tuple_dir"))
    return run_flow(FLOWS / "model_flow.py", env, tmp), version


def _check_model_flow(result, version, tmp):
    start = single_task(result.run, "start").data
    my_model, again, plain = start.my_model, start.again, start.plain
    # The reference carries ours and the reference extension's fields, and works as an artifact.
    assert my_model["type"] == "model" and my_model["label"] == "my_model"
    assert my_model["model_uuid"] == my_model["version_id"] == my_model["version"]
    assert my_model["source"] == "task" and my_model["storage_format"] == "files"  # as stored
    assert my_model["metadata"] == {"epochs": 3} and my_model["name"] == "my_model"
    assert my_model["publisher"]["origin"].startswith("ModelFlow/%s/start/" % result.id)
    # An identical re-save is its own version (own origin) and moved no bytes (issue 14 F5).
    assert again["version"] != my_model["version"] and not again["stats"].get("reused")
    assert again["stats"]["bytes_uploaded"] == 0 and again["label"] == "my_model"
    assert "Saved model 'my_model' version %s (" % again["version"] in result.stdout
    assert plain["label"] == "ModelFlow_start" and plain["storage_format"] == "files"
    (fmt_error, fmt_message), (path_error, path_message) = start.refused
    assert fmt_error == path_error == "CheckpointConfigError"
    assert "storage_format='zip'" in fmt_message and "'tar' or 'files'" in fmt_message
    assert "no such file or directory" in path_message and "nothing was uploaded" in path_message

    use = single_task(result.run, "use").data
    assert use.names == [
        "my_model",
        "ckpt_ref",
        "ckpt_key",
        "ModelFlow_start",
        "pretrained@" + version[:8],
        "bert base: v2",
    ]
    # A free-text label loads by the same text; the reference keeps it (issue 14 F1).
    assert start.free["label"] == use.info["bert base: v2"]["label"] == "bert base: v2"
    assert use.files["bert base: v2"] == ["config.json"]
    assert use.files["my_model"] == ["config.json", "weights.bin"]
    assert use.paths["ckpt_ref"] == str(tmp / "tuple_dir")  # the (artifact, path) entry
    assert use.state == "epoch 7" and use.files["ckpt_key"] == ["state.txt"]
    assert use.files["ModelFlow_start"] == ["weights.bin"]
    assert use.files["pretrained@" + version[:8]] == ["pretrained.bin"]
    assert not any(use.links)  # plain files, no links into the store
    assert use.info["my_model"]["key"] == my_model["key"]
    assert use.info["my_model"]["label"] == "my_model"  # the artifact's model fields are kept
    assert use.info["ckpt_ref"]["metadata"] == {"epoch": 7}
    by_load_path, by_load_files, recorded_by_key = use.by_load
    assert by_load_files == ["config.json", "weights.bin"] and recorded_by_key
    assert use.named == ["pretrained.bin"]
    assert use.by_checkpoint == ["config.json", "weights.bin"]
    assert use.after_cleanup == [False, False]
    # Temporary directories are removed when the task ends; the requested path stays.
    assert not any(os.path.exists(p) for n, p in use.paths.items() if n != "ckpt_ref")
    assert (tmp / "tuple_dir" / "state.txt").read_text() == "epoch 7"
    assert not os.path.exists(by_load_path)

    end = single_task(result.run, "end").data
    assert end.best_effort == [["nothing_saved_as_this"], None]
    warning = [line for line in result.stdout.splitlines() if "[@model] Warning" in line]
    assert len(warning) == 1 and "'nothing_saved_as_this'" in warning[0]


def test_models_saved_in_one_step_are_loaded_in_the_next(flow_env):
    env, tmp = flow_env
    result, version = _run_model_flow(env, tmp)
    _check_model_flow(result, version, tmp)

    out, _ = run_probe(OUTSIDE, env, tmp, result.id, tmp)
    # The refused saves uploaded nothing: no version of "refused" exists.
    assert out["refused_saved"]["error"] == "CheckpointNotFound"
    assert out["load"] == [True, ["config.json", "weights.bin"]]
    assert out["by_name"] == ["config.json", "weights.bin"]
    assert out["delete_pinned"]["error"] == "CheckpointConfigError"
    assert "pinned" in out["delete_pinned"]["message"]
    assert out["delete"] is True and out["again"] is False
    assert out["load_deleted"]["error"] == "CheckpointNotFound"
    assert out["again_kept"] == ["config.json", "weights.bin"]


@pytest.mark.s3
def test_models_on_s3(s3_env, flow_env):
    env, tmp = flow_env
    bucket = s3_env["new_bucket"]()
    env = dict(
        env,
        METAFLOW_DEFAULT_DATASTORE="s3",
        METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket,
        **s3_env["env"],
    )
    result, version = _run_model_flow(env, tmp)
    _check_model_flow(result, version, tmp)
    assert single_task(result.run, "start").data.my_model["root"].startswith("s3://%s/" % bucket)


def test_a_load_entry_with_nothing_to_load_fails_before_the_step_runs(flow_env):
    env, tmp = flow_env
    result = run_flow(FLOWS / "model_missing_flow.py", env, tmp, expect="failed")
    assert "STEP CODE RAN" not in result.stdout
    text = result.stdout + result.stderr
    assert "the flow has no artifact 'my_modle'" in text
    assert "no named checkpoint 'my_modle'" in text


def test_a_model_saved_on_one_parallel_node_is_loaded_in_a_later_step(flow_env):
    env, tmp = flow_env
    result = run_flow(FLOWS / "model_parallel_flow.py", env, tmp)
    refs = {t.data.node: t.data.model_ref for t in result.run["train"]}
    assert sorted(refs) == [0, 1] and refs[1] is None  # two nodes, one writer
    assert refs[0]["label"] == "gang_model" and not refs[0]["stats"].get("reused")
    assert single_task(result.run, "evaluate").data.content == "trained by the gang"
    end = single_task(result.run, "end").data
    assert end.has_model is False  # current.model outside @model: a clear error
    assert (
        end.no_model[0] == "CheckpointNotEnabled" and "step 'end' has no @model" in end.no_model[1]
    )


@pytest.mark.parametrize(
    "load, shown",
    [
        ("{'my_model': '/tmp/x'}", "load={'my_model': '/tmp/x'}"),
        ("['my_model', 3]", "entry 3"),
        ("[('my_model', '/a', '/b')]", "entry ('my_model', '/a', '/b')"),
        ("['my_model', 'my_model']", "names 'my_model' twice"),
    ],
)
def test_a_bad_load_attribute_fails_before_any_task(flow_env, load, shown):
    env, tmp = flow_env
    flow = tmp / "bad_load_flow.py"
    flow.write_text(BAD_LOAD_FLOW % load)
    proc = run_subprocess([flow, "--no-pylint", "run"], env, tmp)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "Step 'start': @model(load=" in text and shown in text
    assert not (tmp / ".metaflow" / "BadLoadFlow").exists()  # no run, no task


BAD_LOAD_FLOW = """
from metaflow import FlowSpec, model, step


class BadLoadFlow(FlowSpec):
    @model(load=%s)
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    BadLoadFlow()
"""
