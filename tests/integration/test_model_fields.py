"""Every reader of a version rebuilds the same reference (adv42 #1, adv41 #5).

A model (``current.model.save``), a checkpoint (``current.checkpoint.save``) and a Hugging Face
Hub snapshot (``current.huggingface_hub.snapshot_download``, against tests/fake_hub.py) are
saved in attempt 1 of a step whose attempt 0 failed.  Each version is then obtained through
every reader: what ``save()`` returned, the pickled artifact read back by ``Run(...).data``,
``Checkpoint().list``, ``Checkpoint().get`` by reference, key and spelling, the CLI's ``show
--json``, ``current.model.loaded.info`` after ``@model(load=[...])``; ``load_model`` loads
each.  What a version IS (model / checkpoint / Hub snapshot, its source, the saving task's
attempt) is recorded in its manifest, so the reference fields are identical everywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .flowrun import FLOWS, PROBE_PRELUDE, run_flow, run_probe, single_task, subprocess_env

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_hub import FakeHub, hub_env  # noqa: E402

pytestmark = pytest.mark.flow

METAFLOW = Path(sys.executable).parent / "metaflow"
KINDS = ("model_ref", "ckpt_ref", "hub_ref")

#: The reference fields every reader must agree on (``stats`` says how one save went; the
#: ``spelling`` is only added by some readers).
FIELDS = (
    "key", "version", "version_id", "url", "root", "name", "pathspec", "attempt", "created_on",
    "metadata", "latest", "size", "files_count", "namespace", "flow", "step", "foreach", "run",
    "task", "publisher", "writer", "sharded", "damaged", "type", "storage_format",
    "creation_context", "label", "model_uuid", "source", "repo_id", "repo_type", "revision",
    "commit",
)  # fmt: skip

#: Outside any task: every client reader of each version, as plain field dicts.
READERS = PROBE_PRELUDE + textwrap.dedent(
    """
    from metaflow import Run, load_model
    FIELDS = json.loads(sys.argv[3])
    def fields(ref):
        return {k: ref.get(k) for k in FIELDS}
    run = Run("ModelFieldsFlow/" + sys.argv[1])
    start = run["start"].task
    for kind in ("model_ref", "ckpt_ref", "hub_ref"):
        ref = getattr(start.data, kind)  # the pickled reference
        client = Checkpoint()
        got = {"pickled": fields(ref)}
        got["get(ref)"] = fields(client.get(ref))
        got["get(key)"] = fields(client.get(ref["key"]))
        got["get(spelling)"] = fields(client.get(ref.spelling))
        listed = (
            client.list(task=start.pathspec) if ref["pathspec"] else client.list(name=ref["name"])
        )
        got["list"] = [fields(r) for r in listed if r["key"] == ref["key"]]
        dest = os.path.join(sys.argv[2], "load_model_" + kind)
        got["load_model"] = sorted(os.listdir(load_model(ref, dest)))
        got["spelling"] = ref.spelling
        out[kind] = got
    print("PROBE" + json.dumps(out))
    """
)


def _show_json(env: dict, cwd: Path, spelling: str) -> dict:
    proc = subprocess.run(
        [str(METAFLOW), "checkpoint", "show", spelling, "--json"],
        env=subprocess_env(env),
        cwd=str(cwd),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout[proc.stdout.index("{") :])


def test_every_reader_rebuilds_the_same_reference_of_a_model_a_checkpoint_and_a_snapshot(
    flow_env,
):
    env, tmp = flow_env
    (tmp / ".metaflow").mkdir(exist_ok=True)
    hub = FakeHub().start()
    try:
        env = dict(env, **hub_env(hub, str(tmp / "hf_home")))
        result = run_flow(FLOWS / "model_fields_flow.py", env, tmp)
        start = single_task(result.run, "start")
        returned = start.data.returned
        info = single_task(result.run, "use").data.info
        probed, _ = run_probe(READERS, env, tmp, result.id, tmp, json.dumps(FIELDS))
        for kind in KINDS:
            spelling = probed[kind]["spelling"]
            readers = {
                "save() returned": returned[kind],
                "loaded.info": info[kind],
                "cli show --json": _show_json(env, tmp, spelling),
                **{
                    r: probed[kind][r] for r in ("pickled", "get(ref)", "get(key)", "get(spelling)")
                },
            }
            assert len(probed[kind]["list"]) == 1, (kind, probed[kind]["list"])
            readers["list"] = probed[kind]["list"][0]
            expected = {k: returned[kind].get(k) for k in FIELDS}
            for reader, ref in readers.items():
                got = {k: ref.get(k) for k in FIELDS}
                diff = {k: (expected[k], got[k]) for k in FIELDS if got[k] != expected[k]}
                assert not diff, "%s via %s differs: %s" % (kind, reader, diff)
            assert probed[kind]["load_model"]  # each loads through load_model
    finally:
        hub.stop()

    model, ckpt, snap = (returned[k] for k in KINDS)
    # What each version IS, as the reference extension's fields say it.
    assert model["type"] == "model" and model["label"] == "fields_model"
    assert model["model_uuid"] == model["version_id"] == model["version"]
    assert model["source"] == "task" and model["storage_format"] == "files"
    assert ckpt["type"] == "checkpoint" and ckpt.get("label") is None
    assert ckpt["storage_format"] == "files" and ckpt.get("source") is None
    assert snap["type"] == "checkpoint" and snap["source"] == "huggingface"
    assert snap["repo_id"] == "acme/tiny-bert" and snap["commit"]
    # Saved in the step's attempt 1, by its task (adv41 #5: was attempt 0, "non-task").
    for ref in (model, ckpt):
        assert ref["attempt"] == 1 and ref["creation_context"] == "task", ref
    assert model["publisher"]["origin"] == start.pathspec
    assert probed["model_ref"]["load_model"] == ["weights.bin"]
    assert probed["ckpt_ref"]["load_model"] == ["state.txt"]
