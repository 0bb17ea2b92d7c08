"""``current.model.save(label=...)`` takes any text, as the reference extension does (issue 14
F1: ``"bert base v2"``, ``"résumé-model"``, ``"model:best"``, ``"facebook/opt-125m"``, 101
characters were refused).  A label that is no valid checkpoint name is stored under a valid,
stable name derived from it; the text is kept in ``ref["label"]`` and the model loads back by
the same text (``current.model.load(text)``, ``@model(load=[text])``); distinct texts never
share a name."""

from __future__ import annotations

import ast
import pickle

import metaflow  # noqa: F401, I001  (Metaflow before the package, as in conftest.py)
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.common.reference import reference_of
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import (
    MAX_NAME_LENGTH,
    validate_name,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.model_loaded import LoadedModels
from metaflow_extensions.checkpointing.plugins.checkpointing.task.model_runtime import (
    ModelRuntime,
    label_name,
)

from .helpers import make_scope, options, snapshot, write_tree

REFERENCE_LABELS = [
    "bert base v2",
    "résumé-model",
    "model:best",
    "my-model (ft)",
    "-x",
    "m" * 101,
    "facebook/opt-125m",
    "",
    "..",
    "a@b",
]

labels = st.text(st.characters(blacklist_categories=("Cs",)), max_size=150)


def _runtime(store, tmp_path) -> ModelRuntime:
    return ModelRuntime(
        store, make_scope(), "alice", LoadedModels(str(tmp_path / "loads")), log=lambda _: None
    )


@settings(max_examples=500, deadline=None)
@given(labels, labels)
def test_every_label_has_a_valid_stable_name_and_distinct_labels_distinct_names(a, b):
    name = label_name(a)
    assert validate_name(name) == name and len(name) <= MAX_NAME_LENGTH
    assert label_name(a) == name  # the same for every save of the label
    try:
        assert name == validate_name(a)  # a valid name is kept as it is
    except CheckpointConfigError:
        pass
    if a != b:
        assert label_name(b) != name


@pytest.mark.parametrize("label", REFERENCE_LABELS)
def test_a_reference_style_label_saves_and_loads_back_by_the_same_text(tmp_path, label):
    store = CheckpointStore(MemoryStorage(), options())
    runtime = _runtime(store, tmp_path)
    src = write_tree(tmp_path / "model", {"w.bin": label.encode() + b"weights"})
    ref = runtime.save(str(src), label=label)
    assert ref["label"] == label and ref["name"] == label_name(label)
    # Rebuilt from the stored version by any reader (a pickled artifact, a listing): the same.
    assert reference_of(store, store.read(ref["key"]))["label"] == label
    assert pickle.loads(pickle.dumps(ref))["label"] == label
    loaded = runtime.load(label)
    assert snapshot(loaded) == snapshot(src)
    assert runtime.loaded.info[ref["key"]]["label"] == label


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(labels, min_size=2, max_size=3, unique=True))
def test_any_labels_round_trip_and_never_share_a_model(tmp_path_factory, texts):
    tmp_path = tmp_path_factory.mktemp("labels")
    store = CheckpointStore(MemoryStorage(), options())
    runtime = _runtime(store, tmp_path)
    refs = []
    for i, text in enumerate(texts):
        src = write_tree(tmp_path / ("m%d" % i), {"w.bin": b"model %d" % i})
        refs.append((runtime.save(str(src), label=text), src))
    for (ref, src), text in zip(refs, texts):
        assert ref["label"] == text
        assert snapshot(runtime.load(text)) == snapshot(src)  # its own model, by its text


@settings(max_examples=300, deadline=None)
@given(labels.filter(lambda t: 0 < len(t) <= MAX_NAME_LENGTH))
def test_a_free_text_checkpoint_name_is_refused_suggesting_a_valid_one(text):
    """Checkpoint names (``current.checkpoint.save(name=...)``) stay names: a series selector
    in listings, load policies, retention and the CLI; free text is refused before anything is
    written, with a valid spelling to use (docs/compatibility.md)."""
    try:
        validate_name(text)
        return
    except CheckpointConfigError as exc:
        message = exc.message
    assert repr(text) in message
    if " (e.g. " in message:
        suggestion = message.rsplit(" (e.g. ", 1)[1][:-2]
        assert validate_name(ast.literal_eval(suggestion)) == ast.literal_eval(suggestion)
