"""Code written for the reference extension (``metaflow-checkpoint`` 0.2.14) finds every name it
uses: each row of ``tests/reference_api.py`` is accepted by ours with the same parameter names,
or is in :data:`REFUSED` and raises a message naming our equivalent (issue 14)."""

from __future__ import annotations

import difflib
import inspect
import os
import textwrap
import types
from pathlib import Path
from typing import Any, Callable

import metaflow
import pytest
from hypothesis import given
from hypothesis import strategies as st
from metaflow.exception import InvalidDecoratorAttribute
from reference_api import REFERENCE, Row

from metaflow_extensions.checkpointing.plugins.checkpointing.frameworks.hub import HuggingfaceHub
from metaflow_extensions.checkpointing.plugins.checkpointing.task.decorator import (
    CheckpointDecorator,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.model_loaded import LoadedModels
from metaflow_extensions.checkpointing.plugins.checkpointing.task.model_runtime import ModelRuntime
from metaflow_extensions.checkpointing.plugins.checkpointing.task.runtime import (
    CheckpointRuntime,
)

TESTS = Path(__file__).resolve().parent

#: Where each reference surface lives in ours (a class whose members are checked, or a module).
OURS: dict[str, Any] = {
    "current.checkpoint": CheckpointRuntime,  # what @checkpoint installs as current.checkpoint
    "Checkpoint": metaflow.Checkpoint,
    "current.model": ModelRuntime,  # what @model installs as current.model
    "current.model.loaded": LoadedModels,
    "current.huggingface_hub": HuggingfaceHub,  # what @huggingface_hub installs
    "current.huggingface_hub.loaded": LoadedModels,
    "metaflow": metaflow,
}

#: Parameters the reference passes through ``**kwargs`` and ours does too: each is honoured as
#: the named test (a real flow) proves.
KWARGS_HONOURED: dict[tuple[str, str], str] = {
    ("current.huggingface_hub.snapshot_download", "revision"): (
        "integration/test_huggingface_hub.py::test_another_revision_or_pattern_set_is_another_entry"
    ),
    ("current.huggingface_hub.snapshot_download", "allow_patterns"): (
        "integration/test_huggingface_hub.py::test_another_revision_or_pattern_set_is_another_entry"
    ),
}

#: Sample values of decorator attributes (as reference-style code writes them).
SAMPLES: dict[str, Any] = {
    "@checkpoint.load_policy": "eager",
    "@checkpoint.show_card": False,
    "@checkpoint.temp_dir_root": "/tmp/ckpt-dirs",
    "@model.load": ["my_model", ("other_model", "./other"), "resnet50@v1"],
    "@model.best_effort_load": True,
    "@model.temp_dir_root": "/tmp/models",
    "@huggingface_hub.load": ["acme/tiny-bert", ("acme/tiny-bert", "./bert")],
    "@huggingface_hub.temp_dir_root": "/tmp/hf",
    "@huggingface_hub.cache_scope": "flow",
}


def _with_artifact_store() -> None:
    from metaflow.plugins import FLOW_DECORATORS

    (deco_class,) = [d for d in FLOW_DECORATORS if d.name == "with_artifact_store"]
    # Its attributes are accepted (the flow file loads); the run is refused at flow_init.
    deco = deco_class(attributes={"type": "s3", "config": {"root": "s3://bucket/prefix"}})
    deco.flow_init(types.SimpleNamespace(name="TrainFlow"), *[None] * 7)


#: Rows we do not provide: calling them raises CheckpointConfigError naming these equivalents.
REFUSED: dict[str, tuple[Callable[[], Any], tuple[str, ...]]] = {
    "metaflow.artifact_store_from": (
        lambda: metaflow.artifact_store_from(run="TrainFlow/1", config={"root": "s3://b/p"}),
        ('Checkpoint(root="s3://', "Checkpoint().list(run)", "METAFLOW_CHECKPOINT_ROOT"),
    ),
    "metaflow.with_artifact_store": (
        _with_artifact_store,
        ('@checkpoint(root="s3://', "METAFLOW_CHECKPOINT_ROOT", 'Checkpoint(root="s3://'),
    ),
}


def _decorator(surface: str):
    from metaflow.plugins import STEP_DECORATORS

    (deco_class,) = [d for d in STEP_DECORATORS if d.name == surface.lstrip("@")]
    return deco_class


def _check_params(row: Row, func) -> None:
    params = inspect.signature(func).parameters
    var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name in row.params:
        if name not in params and var_keyword and (row.id, name) in KWARGS_HONOURED:
            # Taken by **kwargs: the test named there must exist (and it runs in the suite).
            file, test = KWARGS_HONOURED[(row.id, name)].split("::")
            assert "def %s(" % test in (TESTS / file).read_text(), (row.id, name, test)
            continue
        assert name in params, "%s has no parameter %r: %s" % (row.id, name, list(params))
        assert params[name].kind is not inspect.Parameter.POSITIONAL_ONLY, (row.id, name)


@pytest.fixture(scope="module")
def reference_style_task(tmp_path_factory):
    """A task of a reference-style step: ``@checkpoint`` with all three reference attributes,
    one save, the reference kept as an artifact and the task's listing."""
    from conftest import flow_environment
    from integration.flowrun import run_flow, single_task

    tmp = tmp_path_factory.mktemp("reference_style")
    (tmp / "home").mkdir()
    temp_root = tmp / "ckpt-dirs"
    flow_file = tmp / "reference_style_flow.py"
    flow_file.write_text(
        textwrap.dedent(
            """
            import os

            from metaflow import Checkpoint, FlowSpec, checkpoint, current, model, step


            def error(call):
                try:
                    call()
                except Exception as exc:
                    return [type(exc).__name__, str(exc)]


            class ReferenceStyleFlow(FlowSpec):
                @checkpoint(load_policy="eager", show_card=False, temp_dir_root=%r)
                @step
                def start(self):
                    self.directory = current.checkpoint.directory
                    with open(os.path.join(current.checkpoint.directory, "w.txt"), "w") as f:
                        f.write("weights")
                    self.ref = current.checkpoint.save(metadata={"loss": 0.5})
                    self.listed = current.checkpoint.list()
                    self.next(self.positional)

                # Positional calls as written for the reference extension.
                @model
                @checkpoint
                @step
                def positional(self):
                    d = current.checkpoint.directory
                    with open(os.path.join(d, "w.txt"), "w") as f:
                        f.write("weights")
                    save = current.checkpoint.save
                    self.saves = {
                        "ref_order": save(d, "best"),
                        "ref_order_metadata": save(d, "best", {"loss": 0.3}),
                        "our_order": save(d, {"loss": 0.4}, "older"),
                        "metadata_only": save(d, {"loss": 0.2}),
                        "client": Checkpoint().save(d, {"m": 1}, True, "client", "tar"),
                        "client_name_second": Checkpoint().save(d, "second"),
                    }
                    self.bad_name = error(lambda: save(d, 5))
                    scratch = Checkpoint(%r, True)
                    with open(os.path.join(scratch.directory, "s.txt"), "w") as f:
                        f.write("scratch")
                    self.scratch = [scratch.directory, scratch.save(name="scratch")["key"]]
                    self.scratch_listed = [r["key"] for r in current.checkpoint.list("scratch")]
                    self.url_first = error(lambda: Checkpoint("s3://bucket/prefix"))
                    self.by_name = {n: [r["key"] for r in Checkpoint().list(n)] for n in
                                    ("best", "client", "no_such_name")}
                    self.flow_listed = [r["pathspec"] for r in Checkpoint().list(current.flow_name)]
                    save(d, current.flow_name)  # a checkpoint named as the flow
                    self.ambiguous = error(lambda: Checkpoint().list(current.flow_name))
                    mref = current.model.save(d, label="tiny")
                    path = current.model.load(mref)
                    loaded = current.model.loaded
                    before = [mref["key"] in loaded, os.path.isdir(path)]
                    loaded.cleanup(artifact_name=mref["key"])
                    self.model_cleanup = before + [mref["key"] in loaded, os.path.exists(path)]
                    self.next(self.end)

                @step
                def end(self):
                    pass


            if __name__ == "__main__":
                ReferenceStyleFlow()
            """
            % (str(temp_root), str(tmp / "scratch"))
        )
    )
    # Read results outside any user's namespace (as tests/integration/conftest.py does), and
    # leave the client's namespace as found for the tests after this module.
    from metaflow import namespace
    from metaflow.client import core

    saved = core.current_namespace
    namespace(None)
    try:
        result = run_flow(flow_file, flow_environment(tmp), tmp)
        yield single_task(result.run, "start"), temp_root, single_task(result.run, "positional")
    finally:
        core.current_namespace = saved


@pytest.mark.parametrize("row", REFERENCE, ids=lambda r: r.id)
def test_every_reference_row_is_accepted_or_refused(row: Row, request):
    if row.id in REFUSED:
        call, equivalents = REFUSED[row.id]
        with pytest.raises(metaflow.CheckpointConfigError) as err:
            call()
        assert "(from metaflow-checkpoint) is not provided" in err.value.message
        for equivalent in equivalents:
            assert equivalent in err.value.message, (row.id, equivalent, err.value.message)
        return
    if row.kind == "attribute":
        deco_class = _decorator(row.surface)
        assert row.name in deco_class.defaults
        value = SAMPLES[row.id]
        assert deco_class(attributes={row.name: value}).attributes[row.name] == value
    elif row.kind == "property":
        assert isinstance(inspect.getattr_static(OURS[row.surface], row.name), property), row.id
    elif row.kind in ("method", "function"):
        _check_params(row, getattr(OURS[row.surface], row.name))
    elif row.kind == "context manager":
        # `with Checkpoint(init_dir=True) as cp:` gives the object and removes its directory.
        with OURS[row.surface](init_dir=True) as cp:
            assert isinstance(cp, metaflow.Checkpoint)
            directory = cp.directory
            assert directory and os.path.isdir(directory)
        assert not os.path.exists(directory)
    elif row.kind == "field":
        task = request.getfixturevalue("reference_style_task")[0]
        ref = task.data.ref
        assert row.name in ref, "%s missing from %s" % (row.name, sorted(ref))
        assert ref[row.name] == task.data.listed[0][row.name]
    else:  # pragma: no cover - a new kind must be checked here
        raise AssertionError("unchecked row kind %r" % row.kind)


@pytest.mark.flow
def test_decorator_attributes_of_the_reference_are_accepted(reference_style_task):
    """``@checkpoint(load_policy="eager", show_card=False, temp_dir_root=...)`` runs, with the
    directory under ``temp_dir_root``, and the reference has the reference's field types."""
    task, temp_root, _ = reference_style_task
    assert task.data.directory.startswith(str(temp_root))
    ref = task.data.ref
    assert ref["pathspec"] == task.pathspec
    assert ref["attempt"] == 0
    assert isinstance(ref["created_on"], str) and isinstance(ref["size"], int)
    assert ref["metadata"] == {"loss": 0.5}
    assert ref["name"] == "mfchckpt"  # the reference's default name
    assert [r["key"] for r in task.data.listed] == [ref["key"]]


@pytest.mark.flow
def test_positional_calls_written_for_the_reference_bind_as_there_in_a_task(reference_style_task):
    """In a real task: ``current.checkpoint.save(path, "best")`` saves under the name "best"
    (and this package's earlier ``save(path, metadata, name)`` still binds the same, by type);
    ``Checkpoint().save`` in the reference's order (storage_format 5th); ``Checkpoint(dir,
    True)`` is temp_dir_root (its saves stay in the task's store; a URL there is refused naming
    ``root=``); ``Checkpoint().list("best")`` is the name "best" unless a flow of that name
    exists; ``current.model.loaded.cleanup(artifact_name=...)``."""
    _, _, task = reference_style_task
    saves = task.data.saves
    expected = {
        "ref_order": ("best", {}),
        "ref_order_metadata": ("best", {"loss": 0.3}),
        "our_order": ("older", {"loss": 0.4}),
        "metadata_only": ("mfchckpt", {"loss": 0.2}),
        "client": ("client", {"m": 1}),
        "client_name_second": ("second", {}),
    }
    assert {k: (r["name"], r["metadata"] or {}) for k, r in saves.items()} == expected
    assert all(r["pathspec"] == task.pathspec for r in saves.values())
    assert task.data.bad_name[0] == "CheckpointConfigError" and "5" in task.data.bad_name[1]
    scratch_dir, scratch_key = task.data.scratch
    assert "scratch" in scratch_dir.split(os.sep)  # under the temp_dir_root given positionally
    assert task.data.scratch_listed == [scratch_key]  # saved in the task's own store
    kind, message = task.data.url_first
    assert kind == "CheckpointConfigError" and "Checkpoint(root='s3://bucket/prefix')" in message
    best = [saves["ref_order_metadata"]["key"], saves["ref_order"]["key"]]
    assert task.data.by_name == {
        "best": best,
        "client": [saves["client"]["key"]],
        "no_such_name": [],
    }
    assert task.pathspec in task.data.flow_listed  # a flow's name is still that flow
    kind, message = task.data.ambiguous  # unless this task has checkpoints of that name too
    assert kind == "CheckpointConfigError" and "list(name='ReferenceStyleFlow')" in message
    assert task.data.model_cleanup == [True, True, False, False]


def test_loaded_cleanup_takes_the_reference_s_spellings(tmp_path):
    """``loaded.cleanup(artifact_name=...)`` (``current.model.loaded``) and ``cleanup()``
    without a name (``current.huggingface_hub.loaded``: every entry), as in the reference;
    a directory of yours stays either way."""
    loaded = LoadedModels(temp_dir_root=str(tmp_path / "t"))
    for entry in ("a", "b", "c"):
        loaded.add(entry, loaded.directory(entry), {})
    mine = tmp_path / "mine"
    mine.mkdir()
    loaded.add("d", loaded.directory("d", str(mine)), {})
    a = loaded["a"]
    loaded.cleanup(artifact_name="a")
    assert "a" not in loaded and not os.path.exists(a)
    with pytest.raises(TypeError, match="not both"):
        loaded.cleanup("b", name="b")
    with pytest.raises(KeyError, match="'a'"):
        loaded.cleanup(name="a")
    paths = [loaded["b"], loaded["c"]]
    loaded.cleanup()
    assert len(loaded) == 0 and not any(os.path.exists(p) for p in paths) and mine.is_dir()


#: Methods whose parameters ours accepts by the reference's names but not in its positional
#: order: a positional call written for the reference binds differently here.  Each entry says
#: what such a call does with ours; keyword calls (the reference's docs and examples) work.
POSITIONAL_DIFFERENCES: dict[str, str] = {
    "current.checkpoint.list": "a 4th positional argument is within_task, not full_namespace",
    "Checkpoint.list": "only the first argument is positional: list('best') in a task is the "
    "name 'best' (a flow's name: that flow); task=, attempt=, full_namespace= by keyword "
    "(a 2nd positional argument: TypeError)",
}


@pytest.mark.parametrize(
    "row",
    [r for r in REFERENCE if r.kind in ("method", "function") and r.params and not r.by_keyword],
    ids=lambda r: r.id,
)
def test_positional_order_matches_the_reference_except_where_listed(row: Row):
    """A positional call written for the reference binds the same way here, or the method is in
    :data:`POSITIONAL_DIFFERENCES` saying what it does instead (so the list stays exact)."""
    if row.id in REFUSED:
        return
    params = inspect.signature(getattr(OURS[row.surface], row.name)).parameters.values()
    positional = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    positional = [n for n in positional if n != "self"][: len(row.params)]
    assert (positional == list(row.params)) == (row.id not in POSITIONAL_DIFFERENCES), (
        row.id,
        positional,
    )


def test_refused_names_raise_naming_the_equivalent():
    """``from metaflow import artifact_store_from, with_artifact_store`` works; using either
    raises CheckpointConfigError naming our equivalent (the REFUSED rows above)."""
    from metaflow import artifact_store_from, with_artifact_store  # noqa: F401

    for call, equivalents in REFUSED.values():
        with pytest.raises(metaflow.CheckpointConfigError) as err:
            call()
        assert all(e in err.value.message for e in equivalents), err.value.message


@given(
    st.from_regex(r"[a-z][a-z_0-9]{0,20}", fullmatch=True).filter(
        lambda n: n not in CheckpointDecorator.defaults
    )
)
def test_any_unsupported_attribute_is_refused_naming_it_and_every_supported_one(name: str):
    """``@checkpoint(<anything else>=...)`` (in code or ``--with``) constructs, so the flow file
    loads, and fails in ``step_init`` (before any task) naming the attribute and the list; a
    supported name close to it is offered."""
    deco = CheckpointDecorator(attributes={name: 1})
    with pytest.raises(InvalidDecoratorAttribute) as err:  # Metaflow's type, ours subclasses it
        deco.step_init(None, None, "train", [], None, None, None)
    message = err.value.message
    assert message.startswith("Step 'train': @checkpoint does not support the attribute %r" % name)
    assert message.endswith("Supported attributes: %s." % ", ".join(CheckpointDecorator.defaults))
    close = difflib.get_close_matches(name, list(CheckpointDecorator.defaults), n=1, cutoff=0.6)
    assert ("did you mean %r?" % close[0] in message) if close else ("did you mean" not in message)
