"""``current.model.save(label=...)`` takes any text, as the reference extension does (issue 14
F1: ``"bert base v2"``, ``"résumé-model"``, ``"model:best"``, ``"facebook/opt-125m"``, 101
characters were refused).  A label that is no valid checkpoint name is stored under a valid,
stable name derived from it; the text is kept in ``ref["label"]`` and the model loads back by
the same text (``current.model.load(text)``, ``@model(load=[text])``); distinct texts never
share a name."""

from __future__ import annotations

import ast
import pickle
import unicodedata

import metaflow  # noqa: F401, I001  (Metaflow before the package, as in conftest.py)
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.common.reference import (
    MAX_LABEL,
    reference_of,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import (
    MAX_NAME_LENGTH,
    library_scope,
    validate_name,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    CheckpointNotFound,
)
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
    if unicodedata.normalize("NFC", a) != unicodedata.normalize("NFC", b):
        assert label_name(b) != name  # canonically equivalent texts are one label (below)


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


def _loads_its_own_or_says_ambiguous(runtime, text, src, others) -> None:
    """``load(text)`` gives the model saved under the label ``text``, or refuses naming the
    label's stored name when the text also designates another stored checkpoint; never the
    files of another model."""
    try:
        loaded = runtime.load(text)
    except CheckpointConfigError as exc:
        assert "ambiguous" in exc.message and repr(label_name(text)) in exc.message
        assert any(ref["key"] in exc.message for ref in others)
        return
    assert snapshot(loaded) == snapshot(src)  # its own model, by its text


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(labels, min_size=2, max_size=3, unique=True), st.data())
def test_any_labels_round_trip_and_never_share_a_model(tmp_path_factory, texts, data):
    tmp_path = tmp_path_factory.mktemp("labels")
    store = CheckpointStore(MemoryStorage(), options())
    runtime = _runtime(store, tmp_path)
    # Sometimes a label that is another spelling of an earlier save: "<its label>@<a prefix
    # of its version>", its key.
    refs = []
    for i, text in enumerate(texts):
        if refs and data.draw(st.booleans(), label="collide"):
            earlier = data.draw(st.sampled_from([ref for ref, _ in refs]), label="earlier")
            cut = data.draw(st.integers(1, len(earlier["version"])), label="prefix")
            text = data.draw(
                st.sampled_from(
                    ["%s@%s" % (earlier["name"], earlier["version"][:cut]), earlier["key"]]
                ),
                label="colliding text",
            )
            if text in texts or any(ref["label"] == text for ref, _ in refs):
                continue
        src = write_tree(tmp_path / ("m%d" % i), {"w.bin": b"model %d" % i})
        refs.append((runtime.save(str(src), label=text), src))
    for ref, src in refs:
        others = [other for other, _ in refs if other["key"] != ref["key"]]
        _loads_its_own_or_says_ambiguous(runtime, ref["label"], src, others)


def test_a_label_spelled_like_a_version_of_another_model_never_loads_that_model(tmp_path):
    """Model ``a``, then a model labelled ``"a@<prefix of a's version>"``: the label's text
    also reads as that version of ``a``.  Loading the text used to give ``a``'s files
    silently; now it says both meanings.  Each model still loads by an exact spelling."""
    store = CheckpointStore(MemoryStorage(), options())
    runtime = _runtime(store, tmp_path)
    a_src = write_tree(tmp_path / "a", {"w.bin": b"model A"})
    a = runtime.save(str(a_src), label="a")
    text = "a@" + a["version"][:6]
    b_src = write_tree(tmp_path / "b", {"w.bin": b"model B"})
    b = runtime.save(str(b_src), label=text)
    assert b["name"] == label_name(text) != text

    with pytest.raises(CheckpointConfigError) as exc:
        runtime.load(text)
    message = exc.value.message
    assert "ambiguous" in message and repr(b["name"]) in message and a["key"] in message
    assert not runtime.loaded  # nothing was downloaded
    # The spellings the message gives load exactly one model each.
    assert snapshot(runtime.load(b["name"])) == snapshot(b_src)
    assert snapshot(runtime.load(a["key"])) == snapshot(a_src)
    # A label spelled like a key of another model: the same.
    c_src = write_tree(tmp_path / "c", {"w.bin": b"model C"})
    c = runtime.save(str(c_src), label=a["key"])
    with pytest.raises(CheckpointConfigError, match="ambiguous"):
        runtime.load(a["key"])
    assert snapshot(runtime.load(c["name"])) == snapshot(c_src)


def test_a_text_that_is_no_label_still_loads_its_other_spelling(tmp_path):
    """No label of that text: ``name@<version prefix>`` loads that version (the extra check
    finds no label series and changes nothing)."""
    store = CheckpointStore(MemoryStorage(), options())
    runtime = _runtime(store, tmp_path)
    a_src = write_tree(tmp_path / "a", {"w.bin": b"model A"})
    a = runtime.save(str(a_src), label="a")
    assert snapshot(runtime.load("a@" + a["version"][:6])) == snapshot(a_src)


def test_a_label_longer_than_readers_keep_is_refused_before_anything_is_written(tmp_path):
    """Readers keep at most MAX_LABEL characters of label text (a manifest body is untrusted):
    a longer label used to save and read back as the stored name.  Refused at save, naming
    the limit, with nothing written; MAX_LABEL characters still round-trip."""
    storage = MemoryStorage()
    store = CheckpointStore(storage, options())
    runtime = _runtime(store, tmp_path)
    src = write_tree(tmp_path / "model", {"w.bin": b"weights"})
    for text in ("L" * (MAX_LABEL + 1), "é" * 1_000_000):
        with pytest.raises(CheckpointConfigError, match="at most %d characters" % MAX_LABEL):
            runtime.save(str(src), label=text)
    assert list(storage.list("")) == []  # nothing written, not even a blob
    text = "x " * (MAX_LABEL // 2)
    ref = runtime.save(str(src), label=text)
    assert ref["label"] == text
    assert reference_of(store, store.read(ref["key"]))["label"] == text


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


@settings(max_examples=300, deadline=None)
@given(labels | st.sampled_from(["-x y", ".a", "-" * (MAX_NAME_LENGTH - 10)]))
def test_the_suggested_checkpoint_name_is_the_name_a_model_label_of_the_text_gets(text):
    """One sanitiser of the name grammar (core/scope.py ``sanitized``): the valid spelling the
    error suggests for a free-text checkpoint name is the readable part of the name
    ``current.model.save(label=text)`` stores the same text under (``"-x y"``: ``'_-x_y'``
    and ``'_-x_y-<hash>'``; they used to differ), so a user sees one spelling of a text."""
    text = unicodedata.normalize("NFC", text)
    # Short enough that the name's cut (room for "-<hash>") keeps the whole suggestion.
    assume(0 < len(text) <= MAX_NAME_LENGTH - 10)
    try:
        validate_name(text)
        return
    except CheckpointConfigError as exc:
        suggestion = ast.literal_eval(exc.message.rsplit(" (e.g. ", 1)[1][:-2])
    assert label_name(text).rsplit("-", 1)[0] == suggestion
    if text == "-x y":
        assert suggestion == "_-x_y"


def _nfc_nfd(text: str) -> tuple[str, str]:
    return unicodedata.normalize("NFC", text), unicodedata.normalize("NFD", text)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    labels
    | st.sampled_from(["résumé model", "Ångström", "naïve/café:v1", "한국어 모델", "ḍ̇ model"]),
    st.booleans(),
)
def test_nfc_and_nfd_spellings_of_a_label_are_one_label(tmp_path_factory, text, saved_nfc):
    """Text pasted from macOS file names or web pages often arrives decomposed (NFD): a model
    saved under one form loads by the other, and a save under the other form is a newer
    version of the same model (review R5: they were two labels, and loading by the other form
    blamed the name grammar).  ``ref["label"]`` keeps the text as given."""
    tmp_path = tmp_path_factory.mktemp("nfc")
    runtime = _runtime(CheckpointStore(MemoryStorage(), options()), tmp_path)
    nfc, nfd = _nfc_nfd(text)
    first, other = (nfc, nfd) if saved_nfc else (nfd, nfc)
    src = write_tree(tmp_path / "m1", {"w.bin": b"first"})
    ref = runtime.save(str(src), label=first)
    assert ref["label"] == first and label_name(other) == ref["name"]
    assert snapshot(runtime.load(other)) == snapshot(src)
    src2 = write_tree(tmp_path / "m2", {"w.bin": b"second"})
    ref2 = runtime.save(str(src2), label=other)
    assert ref2["name"] == ref["name"] and ref2["label"] == other
    assert snapshot(runtime.load(first)) == snapshot(src2)  # the newest of the one label


def test_an_unknown_label_says_no_model_is_saved_under_it(tmp_path):
    """A free-text label with no saved model: "no model saved under label X (stored name Y)"
    and the spelling that pins a version, not "Checkpoint name X is invalid" (review R6).
    A text that parses as another spelling keeps that spelling's message first."""
    runtime = _runtime(CheckpointStore(MemoryStorage(), options()), tmp_path)
    for text in ["résumé model", "my model:v1@6c0bd2a1", "facebook/opt-125m"]:
        with pytest.raises(CheckpointNotFound) as exc:
            runtime.load(text)
        message = exc.value.message
        name = label_name(text)
        assert "no model saved under label %r (stored name %r)" % (text, name) in message
        assert "'%s@<version>'" % name in message and "invalid" not in message
    with pytest.raises(CheckpointNotFound) as exc:
        runtime.load("NoSuchFlow/1/start/2")
    assert exc.value.message.startswith("Task NoSuchFlow/1/start/2 has no checkpoint")
    assert "No model is saved under the label 'NoSuchFlow/1/start/2' either" in exc.value.message


def test_a_version_of_a_free_text_label_is_pinned_as_text_at_version(tmp_path):
    """``"<label>@<version>"`` (split at the last ``@``) loads that version of a saved free-text
    label, as ``"<ref['name']>@<version>"`` does; a version it does not have is refused naming
    the label; a text that is also a saved label itself is ambiguous, never a silent pick."""
    runtime = _runtime(CheckpointStore(MemoryStorage(), options()), tmp_path)
    text = "my model:v1"
    old_src = write_tree(tmp_path / "old", {"w.bin": b"old"})
    old = runtime.save(str(old_src), label=text)
    new_src = write_tree(tmp_path / "new", {"w.bin": b"new"})
    runtime.save(str(new_src), label=unicodedata.normalize("NFD", text))
    assert snapshot(runtime.load("%s@%s" % (text, old["version"][:8]))) == snapshot(old_src)
    assert snapshot(runtime.load("%s@%s" % (old["name"], old["version"]))) == snapshot(old_src)
    assert snapshot(runtime.load(text)) == snapshot(new_src)

    with pytest.raises(CheckpointNotFound) as exc:
        runtime.load(text + "@ffffffff0000")
    assert "%r is the label of the model stored as %r" % (text, old["name"]) in exc.value.message

    at = "%s@%s" % (text, old["version"][:8])
    at_src = write_tree(tmp_path / "at", {"w.bin": b"a label with @ in it"})
    at_ref = runtime.save(str(at_src), label=at)
    with pytest.raises(CheckpointConfigError, match="ambiguous") as amb:
        runtime.load(at)
    assert repr(at_ref["name"]) in amb.value.message and old["key"] in amb.value.message
    assert snapshot(runtime.load(at_ref["name"])) == snapshot(at_src)


class ListCounting(MemoryStorage):
    """A memory store recording the prefixes listed."""

    def __init__(self) -> None:
        super().__init__()
        self.listed: list[str] = []

    def list(self, prefix: str = ""):
        self.listed.append(prefix)
        return super().list(prefix)


def test_loading_a_key_or_name_at_version_again_lists_no_label_series(tmp_path):
    """A text that is a key or ``name@<version>`` may also be a free-text label (the ambiguity
    check above): that label's series is listed once per task, not on every load, so a
    ``@model(load=[...])`` of N keys, or a loop of loads, does not pay one store listing (a
    LIST round trip on S3) per load for it; a valid name never lists a label series."""
    storage = ListCounting()
    runtime = _runtime(CheckpointStore(storage, options()), tmp_path)
    a = runtime.save(str(write_tree(tmp_path / "a", {"w.bin": b"model A"})), label="a")
    pinned = "a@" + a["version"][:8]
    labels = {text: library_scope(label_name(text)).step_prefix() for text in (a["key"], pinned)}
    for text, label_prefix in labels.items():
        storage.listed.clear()
        runtime.load(text)
        assert storage.listed.count(label_prefix) == 1, storage.listed  # the check, once
        first = list(storage.listed)
        storage.listed.clear()
        runtime.load(text)
        assert label_prefix not in storage.listed, storage.listed
        assert len(storage.listed) == len(first) - 1  # the load itself lists what it did
    storage.listed.clear()
    runtime.load("a")
    assert not [p for p in storage.listed if p in labels.values()]
    # A label saved later in the task is seen by the next load of the text it collides with.
    runtime.save(str(write_tree(tmp_path / "b", {"w.bin": b"model B"})), label=a["key"])
    with pytest.raises(CheckpointConfigError, match="ambiguous"):
        runtime.load(a["key"])
