"""A flow written for the reference extension (``metaflow-checkpoint`` 0.2.14) runs unchanged and
gives its results (issue 14, "Done when"), on the local and the S3 datastore; then a notebook
reads the same task and model as the reference's users do.

The flow is ``examples/reference_style_flow.py``; docs/compatibility.md lists the differences
these tests allow (no card unless ``show_card=True``, references that are our
``CheckpointReference`` dicts, ``load_model`` returning the path).
"""

from __future__ import annotations

import hashlib
import importlib.util

import pytest

from .flowrun import EXAMPLES, PROBE_PRELUDE, REPO, run_flow, run_probe, single_task

FLOW = EXAMPLES / "reference_style_flow.py"


def _example():
    spec = importlib.util.spec_from_file_location("reference_style_flow", FLOW)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digests(files: dict) -> dict:
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}


#: The notebook: what a reference user types after the run (argv: the train task, the run, the
#: model's label).
NOTEBOOK = (
    PROBE_PRELUDE
    + """
import hashlib
import tempfile
from metaflow import Run, Task, load_model

train, run = sys.argv[1], Run(sys.argv[2])

def listing(**kw):
    refs = Checkpoint().list(**kw)
    return sorted((c["attempt"], c["name"], c["metadata"]["epoch"]) for c in refs)

def loaded(ref):
    dest = tempfile.mkdtemp()
    load_model(ref, dest)
    out = {}
    for parent, _, names in os.walk(dest):
        for n in names:
            p = os.path.join(parent, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, dest)] = hashlib.sha256(f.read()).hexdigest()
    return out

attempt("task", lambda: listing(task=train))
def kinds(**kw):
    return sorted({(c["type"], c["version_id"] is not None) for c in Checkpoint().list(**kw)})

attempt("types", lambda: kinds(task=train))
attempt("task_obj_named", lambda: listing(task=Task(train), name="epoch"))
attempt("task_attempt_0", lambda: listing(task=train, attempt=0))
attempt("model_files", lambda: loaded(run.data.trained))
attempt("model_files_by_key", lambda: loaded(run.data.trained["key"]))
attempt("model_versions", lambda: [c["key"] for c in Checkpoint().list(name=sys.argv[3])])
print("PROBE" + json.dumps(out))
"""
)


def _cards(task) -> list:
    """The cards of ``task`` (none: Metaflow raises CardNotPresentException)."""
    from metaflow.cards import get_cards
    from metaflow.plugins.cards.exception import CardNotPresentException

    try:
        return list(get_cards(task))
    except CardNotPresentException:
        return []


def _check_reference_results(env, tmp):
    """Run the flow and assert what the reference extension gives for it."""
    result = run_flow(FLOW, env, tmp)
    run = result.run
    train = single_task(run, "train")
    model_files = _digests(_example().MODEL_FILES)

    # @retry: attempt 1 resumed from attempt 0's newest checkpoint...
    assert train.current_attempt == 1
    assert train.data.was_loaded and train.data.resumed_from == "epoch 1"
    # ...and list(task=current.pathspec, name="epoch") is that task's latest attempt only.
    assert train.data.listed == [(1, 2, "epoch")]
    # list() without task: every attempt of the running task.
    assert train.data.listed_everything == [(0, "epoch"), (0, "epoch"), (1, "best"), (1, "epoch")]

    # current.model.save on node 0 of the gang; @model(load=...) in a later step.
    assert run["join"].task.data.saved_by == [0]
    trained = run.data.trained  # the reference's model dict fields
    assert (trained["type"], trained["label"]) == ("model", _example().MODEL_LABEL)
    assert trained["metadata"] == {"hidden": 4, "node": 0}
    evaluate = single_task(run, "evaluate")
    assert _digests(evaluate.data.loaded_files) == model_files
    assert evaluate.data.loaded_info_key == run.data.trained["key"]

    # show_card=False (and @model): no card on any task (the reference adds one per decorator
    # unless told not to; here nothing is attached unless asked: no per-task overhead).
    for step in run:
        for task in step:
            assert _cards(task) == [], task.pathspec

    # The notebook, as a reference user writes it.
    label = _example().MODEL_LABEL
    seen, _ = run_probe(NOTEBOOK, env, tmp, train.pathspec, run.pathspec, label)
    assert seen["task"] == [[1, "best", 2], [1, "epoch", 2]]
    assert seen["types"] == [["checkpoint", True]]  # the reference's dict fields
    assert seen["task_obj_named"] == [[1, "epoch", 2]]
    assert seen["task_attempt_0"] == [[0, "epoch", 0], [0, "epoch", 1]]
    assert seen["model_files"] == model_files
    assert seen["model_files_by_key"] == model_files
    # Exactly one model version published: node 0's (the other node saved nothing).
    assert seen["model_versions"] == [run.data.trained["key"]]
    return result


@pytest.mark.flow
def test_a_reference_style_flow_runs_unchanged_locally(flow_env):
    """The "Done when" flow on the local datastore: attempt-scoped listing after a retry, one
    model published from node 0 of a @parallel gang and loaded by @model in a later step with
    identical files, no card; the notebook lists the task and loads the model."""
    env, tmp = flow_env
    _check_reference_results(env, tmp)


@pytest.mark.flow
@pytest.mark.s3
def test_a_reference_style_flow_runs_unchanged_on_s3(s3_flow_env):
    """The same flow and notebook on an S3 datastore (a local moto server)."""
    env, tmp, _bucket = s3_flow_env
    # S3 is the configured default datastore, for the run and the notebook alike: a bare key
    # string (load_model(ref["key"])) is looked up in the default store, as the reference does.
    result = _check_reference_results(dict(env, METAFLOW_DEFAULT_DATASTORE="s3"), tmp)
    assert result.run.data.trained["url"].startswith("s3://")
    assert not (tmp / ".metaflow" / "mf.checkpointing").exists()  # no local checkpoint store


def test_the_compatibility_page_names_every_checkpoint_attribute():
    """The page's ``@checkpoint`` table names every attribute the decorator accepts (a new one
    must be added there, as ours or the reference's)."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.decorator import (
        CheckpointDecorator,
    )

    text = (REPO / "docs" / "compatibility.md").read_text()
    section = text.split("## `@checkpoint`", 1)[1].split("\n## ", 1)[0]
    missing = [a for a in CheckpointDecorator.defaults if "`%s`" % a not in section]
    assert not missing, "docs/compatibility.md's @checkpoint table does not name %s" % missing
