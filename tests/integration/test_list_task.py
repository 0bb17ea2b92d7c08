"""``list(task=...)`` lists a task's latest attempt, as code written for other ``@checkpoint``
extensions expects (issue 14, item 2), in the task and from a notebook, on local and S3 stores;
and the other extensions' spellings of ``save``/references (``storage_format``, ``version_id``,
``refresh_directory``, ``cleanup``, ``task_identifier``, ``generate_key``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .flowrun import FLOWS, PROBE_PRELUDE, run_flow, run_probe, single_task, subprocess_env

pytestmark = pytest.mark.flow

# [attempt, name, metadata "i"] of train's checkpoints: attempt 0 saved i=0 (mfchckpt) and
# i=1 (best), then failed; attempt 1 saved i=2 (best).
LATEST = [[1, "best", 2]]
ATTEMPT0 = [[0, "best", 1], [0, "mfchckpt", 0]]
EVERY = LATEST + ATTEMPT0

PROBE = (
    PROBE_PRELUDE
    + """
import pickle
from metaflow import Task
from metaflow_extensions.checkpointing.plugins.checkpointing.common.reference import (
    CheckpointReference,
)
namespace(None)
train, again = sys.argv[1], sys.argv[2]
flow, run, step, task_id = train.split("/")
c = Checkpoint()
s = lambda refs: [[r["attempt"], r["name"], r["metadata"].get("i")] for r in refs]
attempt("latest", lambda: s(c.list(task=train)))
attempt("task_object", lambda: s(c.list(task=Task(train), name="best")))
attempt("other_name", lambda: s(c.list(task=train, name="mfchckpt")))
attempt("task_object_attempt0", lambda: s(c.list(task=Task(train, attempt=0))))
attempt("attempt0", lambda: s(c.list(task=train, attempt=0)))
attempt("all", lambda: s(c.list(task=train, attempt="all")))
attempt("full", lambda: s(c.list(task=train, full_namespace=True)))
attempt("again", lambda: s(c.list(task=again)))
attempt("again_all", lambda: s(c.list(task=again, attempt="all")))
attempt("positional", lambda: s(c.list(train)))
attempt("bare_id", lambda: s(c.list("%s/%s/%s" % (flow, run, step), task=task_id)))
attempt("best", lambda: c.best(task=train, metric="i", mode="min")["metadata"]["i"])
attempt("full_without_task", lambda: c.list(full_namespace=True))
attempt("task_and_target", lambda: c.list(flow, task=train))
attempt("bare_id_alone", lambda: c.list(task=task_id))
attempt("bad_attempt", lambda: c.list(task=train, attempt=-1))
attempt("generate_key", lambda: c.generate_key("mfchckpt"))
attempt("bad_format", lambda: c.save("/no/such/path", name="x", storage_format="zip"))
# A reference pickled by a release without the other extensions' fields still answers them
# and loads.
ref = c.list(task=train)[0]
old = CheckpointReference(
    {k: v for k, v in ref.items()
     if k not in ("version_id", "type", "storage_format", "creation_context")}
)
old = pickle.loads(pickle.dumps(old))
out["old_fields"] = [old["version_id"] == ref["version"], old["type"], old.storage_format,
                     old.get("creation_context")]
dest = c.load(old, os.path.join(sys.argv[3], "old"))
out["old_loaded"] = open(os.path.join(dest, "state.txt")).read()
out["new_fields"] = [ref["version_id"] == ref["version"], ref["type"], ref["storage_format"],
                     ref["creation_context"]]
print("PROBE" + json.dumps(out))
"""
)


@pytest.fixture(params=["local", "s3"])
def store_env(request, flow_env):
    """(env, tmp, top-level Runner options) for a local, then an S3 (moto) datastore."""
    env, tmp = flow_env
    if request.param == "local":
        return env, tmp, {}
    s3 = request.getfixturevalue("s3_env")
    from metaflow import metaflow_config
    from metaflow.plugins.datatools.s3 import s3util

    # s3util binds the client params at import: point it at the moto server for this test.
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setattr(s3util, "DATATOOLS_CLIENT_PARAMS", metaflow_config.DATATOOLS_CLIENT_PARAMS)
    bucket = s3["new_bucket"]()
    env = dict(env, METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket, **s3["env"])
    return env, tmp, {"datastore": "s3"}


def test_list_task_is_the_latest_attempt_in_the_task_and_from_a_notebook(store_env):
    env, tmp, options = store_env
    result = run_flow(FLOWS / "list_task_flow.py", env, tmp, **options)
    train = single_task(result.run, "train")
    end = single_task(result.run, "end")
    assert train.current_attempt == 1
    d = {k: train[k].data for k in dict.fromkeys(a.id for a in train)}

    # In the retried task: task= is its latest (running) attempt; attempt= one attempt or all;
    # list() alone keeps every attempt of the running task.
    assert d["latest"] == LATEST
    assert d["latest_best"] == LATEST
    assert d["latest_other_name"] == []  # attempt 0's mfchckpt is not the latest attempt's
    assert d["attempt0"] == d["attempt0_str"] == ATTEMPT0
    assert d["task_object_attempt0"] == ATTEMPT0  # Task(p, attempt=0) means attempt 0
    assert d["all"] == d["own"] == EVERY
    assert d["client_latest"] == LATEST and d["client_all"] == EVERY
    assert d["client_full"] == EVERY
    assert d["bad_attempt"][0] == "CheckpointConfigError"
    assert "attempt='latest'" in d["bad_attempt"][1] and "'all'" in d["bad_attempt"][1]

    # Another task: Metaflow's latest attempt; a latest attempt that saved nothing lists [].
    assert end["end_train_latest"].data == LATEST
    assert end["end_again_latest"].data == []
    assert end["end_again_all"].data == [[0, "mfchckpt", 7]]

    # From outside any task: the same sets.
    again = single_task(result.run, "again").pathspec
    seen, _ = run_probe(PROBE, env, tmp, train.pathspec, again, tmp)
    assert seen["latest"] == LATEST
    assert seen["task_object"] == LATEST
    assert seen["other_name"] == []
    assert seen["task_object_attempt0"] == seen["attempt0"] == ATTEMPT0
    assert seen["all"] == seen["full"] == seen["positional"] == EVERY
    assert seen["again"] == [] and seen["again_all"] == [[0, "mfchckpt", 7]]
    assert seen["bare_id"] == LATEST  # task="2" narrowing a target: that task, latest attempt
    assert seen["best"] == 2  # best() takes task= as list() does
    for label, says in (
        ("full_without_task", "full_namespace=True"),
        ("task_and_target", "task= already names a whole task"),
        ("bare_id_alone", "a task id narrows a target"),
        ("bad_attempt", "attempt=-1"),
        ("generate_key", "ref['key']"),
        ("bad_format", "'files'"),
    ):
        assert seen[label]["error"] == "CheckpointConfigError", (label, seen[label])
        assert says in seen[label]["message"], (label, seen[label])

    # The CLI is unchanged: --task is a filter like --run, every attempt (ATTEMPT column).
    if not options:
        metaflow = Path(sys.executable).parent / "metaflow"
        args = ["--run", result.run.id, "--step", "train", "--task", train.id, "--json"]
        proc = subprocess.run(
            [str(metaflow), "checkpoint", "list", "ListTaskFlow", *args],
            env=subprocess_env(env),
            cwd=str(tmp),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        listed = json.loads(proc.stdout[proc.stdout.index("[") :])
        assert [[r["attempt"], r["name"], r["metadata"]["i"]] for r in listed] == EVERY

    # Reference fields other extensions' code reads, also on a reference pickled without them.
    assert seen["new_fields"] == seen["old_fields"] == [True, "checkpoint", "files", "task"]
    assert seen["old_loaded"] == "2"

    # storage_format: any other value is refused before the path is read; "tar" stores the
    # same files.  refresh_directory/cleanup empty the directory; task_identifier is per step.
    assert d["bad_format"][0] == "CheckpointConfigError"
    assert (
        "storage_format='zip'" in d["bad_format"][1] and "/no/such/path" not in (d["bad_format"][1])
    )
    assert d["tar_ref"]["storage_format"] == "files"
    assert end["tar_loaded"].data == end["bare_loaded"].data == "2"
    assert d["refreshed_empty"] and end["cleaned_empty"].data
    ident = d["task_identifier"]
    assert len(ident) == 16 and int(ident, 16) >= 0
    assert ident != end["end_task_identifier"].data
