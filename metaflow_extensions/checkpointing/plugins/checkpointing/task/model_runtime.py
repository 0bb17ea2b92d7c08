"""``current.model``: save a model from a step, load models into it (``@model``).

A model saved with ``current.model.save(path, label)`` is a new version of the *named
checkpoint* ``label`` (default ``<Flow>_<step>``), published by the task: the run's namespace
trusts it by name, every save is its own version (own manifest and origin; its files are
content-addressed, so bytes already stored are not uploaded again), and its
reference (a :class:`~..common.reference.CheckpointReference` with the reference extension's
model fields too) works as an artifact, in ``@model(load=[...])``, ``current.model.load``,
``current.checkpoint.load`` and ``Checkpoint().load``.  Loads resolve every spelling of a
reference as ``current.checkpoint.load`` does (:func:`..common.resolver.resolve`), download
verified plain files, and are recorded in :attr:`ModelRuntime.loaded`.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from typing import Any, Callable, Optional

from ..common import refspec
from ..common.reference import MAX_LABEL, CheckpointReference, model_record, reference_of
from ..common.resolver import named_versions, resolve
from ..core import loading
from ..core.promotions import publisher_record
from ..core.scope import MAX_NAME_LENGTH, Scope, library_scope, sanitized, validate_name
from ..core.store import CheckpointStore
from ..core.user_dirs import user_path
from ..errors import CheckpointConfigError, CheckpointNotFound, CheckpointScopeError
from ..fmt import human_size
from .model_loaded import LoadedModels
from .view import TaskView

#: ``storage_format`` values of the reference extension: both store plain files here.
STORAGE_FORMATS = ("tar", "files")


def default_label(flow: str, step: str) -> str:
    """The label of a model saved without one: ``<Flow>_<step>``, stored under
    :func:`label_name` of it (always the same for one step and different for two steps)."""
    return label_name("%s_%s" % (flow, step))


def label_name(label: str) -> str:
    """The checkpoint name a model label is stored under (the reference extension's labels are
    free text): the label itself when it is a valid name, else (spaces, unicode, ``:``, ``/``,
    more than 100 characters...) the label with every other character made ``_``, cut to fit
    and ended with ``-<8 hex digits>`` of the SHA-256 of the label, so it is valid, always the
    same for one label and different for two (two labels meet only if one is spelled exactly
    like the other's stored name, or on a 32-bit hash collision of two labels alike once
    sanitised).  The label itself is kept in the version (``ref["label"]``).

    Canonically equivalent spellings of one text are one label: the name is derived from the
    label's NFC form, so ``"résumé"`` typed precomposed and the same word pasted decomposed
    (NFD, as macOS file names and some web pages give it) save into, and load, the same model.
    Only canonical equivalence (NFC), not compatibility forms (NFKC would make ``"ﬁ"`` and
    ``"fi"``, ``"²"`` and ``"2"`` one label).  A valid name is ASCII, so it is unchanged.

    Raises
    ------
    CheckpointConfigError
        ``label`` is not a str.
    """
    if not isinstance(label, str):
        raise CheckpointConfigError(
            "current.model.save(label=%r): a label is a str (any text)." % (label,)
        )
    raw = unicodedata.normalize("NFC", label)
    try:
        return validate_name(raw)
    except CheckpointConfigError:
        pass
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    readable = sanitized(raw, MAX_NAME_LENGTH - len(digest) - 1)  # as validate_name suggests
    return validate_name("%s-%s" % (readable, digest))


class ModelRuntime:
    """``current.model`` in a step decorated with ``@model``.

    Parameters
    ----------
    store : CheckpointStore
        Where models are saved and named checkpoints resolve.
    scope : Scope
        The running task (its namespace trusts the models it publishes by name).
    username : str or None
        Recorded as the publisher of saved models, with the task's namespace and pathspec.
    loaded : LoadedModels
        What the step loaded (``@model(load=...)``, then :meth:`load`).
    log : callable
        Prints one line to the task's output.
    """

    def __init__(
        self,
        store: CheckpointStore,
        scope: Scope,
        username: Optional[str],
        loaded: LoadedModels,
        log: Callable[[str], None],
    ):
        self._store = store
        self._scope = scope
        self._username = username
        self._loaded = loaded
        self._log = log
        self._saved: list[CheckpointReference] = []
        # Stored name -> a model was saved under that label: the ambiguity check of a text that
        # designates something else lists a label's series once per task, not on every load.
        self._labels: dict[str, bool] = {}

    @property
    def loaded(self) -> LoadedModels:
        """``{name: local directory}`` of what this step loaded: each ``@model(load=...)``
        entry by its name, each :meth:`load` by the loaded reference's ``key``;
        ``loaded.info[name]`` is the reference (``None`` entries: skipped by
        ``best_effort_load``)."""
        return self._loaded

    @property
    def store_url(self) -> str:
        """The store models are saved to (and names resolve in)."""
        return self._store.url

    @property
    def default_label(self) -> str:
        """``<Flow>_<step>``: the label of a model saved without one (made a valid name by
        :func:`default_label` when it is not one)."""
        return default_label(self._scope.flow, self._scope.step)

    # ------------------------------------------------------------------ save
    def save(
        self,
        path: str,
        label: Optional[str] = None,
        metadata: Optional[dict] = None,
        storage_format: str = "tar",
    ) -> CheckpointReference:
        """Save a model file or directory as a new version of the named checkpoint ``label``.

        Parameters
        ----------
        path : str or os.PathLike
            The file or directory to save.
        label : str, optional
            The model's name (default ``<Flow>_<step>``), any text as in the reference
            extension: later steps and runs of this namespace load its newest version as
            ``"label"`` (``@model(load=[...])``, :meth:`load`).  A label that is no valid
            checkpoint name (spaces, unicode, ``:``, ``/``, over 100 characters) is stored
            under :func:`label_name` of it, ``ref["name"]``, and kept as given in
            ``ref["label"]``; a version is pinned as ``"<ref['name']>@<version>"`` (or
            ``"<label>@<version>"``).  Canonically equivalent texts (NFC, NFD) are one
            label.  At most :data:`~..common.reference.MAX_LABEL` (4096) characters, so every
            reader gives back the text as given.
        metadata : dict, optional
            JSON-serialisable metadata stored with it (``ref["metadata"]``).
        storage_format : str
            ``"tar"`` or ``"files"`` (the reference extension's values): accepted for
            compatibility; either way the files are stored as files, deduplicated, and the
            reference says ``storage_format="files"`` (what is stored).

        Returns
        -------
        CheckpointReference
            Usable as an artifact (``self.my_model = current.model.save(...)``) and by every
            load; ``ref["version"]`` (also ``model_uuid``/``version_id``) is the version.
            Every call is its own version, with its own origin (this task), even when the
            content is identical to a stored one: deleting another version never breaks it.
            Only bytes not stored yet are uploaded (``ref["stats"]["bytes_uploaded"]``): an
            identical re-save writes one small manifest.

        Raises
        ------
        CheckpointConfigError
            ``storage_format`` is invalid, ``label`` is not a str or longer than 4096
            characters, or ``path`` does not exist (nothing is read or uploaded).
        """
        if isinstance(label, str) and len(label) > MAX_LABEL:
            # Readers cap the text they trust in a manifest at MAX_LABEL (a longer one reads
            # back as the stored name): refused here, before anything is written, so
            # ref["label"] is always the text given.
            raise CheckpointConfigError(
                "current.model.save(label=%r...): a label is at most %d characters, this one "
                "has %d; nothing was uploaded." % (label[:40], MAX_LABEL, len(label))
            )
        if storage_format not in STORAGE_FORMATS:
            raise CheckpointConfigError(
                "current.model.save(storage_format=%r): accepted values are %s (both store "
                "plain files here)." % (storage_format, " or ".join(map(repr, STORAGE_FORMATS)))
            )
        # Free text, as in the reference extension: stored under a valid stable name, the text
        # kept in the version (ref["label"]) and found again by current.model.load(text).  The
        # default label reads back as its stored name (current.model.default_label).
        text = label
        label = self.default_label if label is None else label_name(label)
        src = None if path is None else os.path.abspath(user_path(path))  # ~ is home
        if src is None or not os.path.exists(src):
            raise CheckpointConfigError(
                "current.model.save(%r): no such file or directory%s; nothing was uploaded."
                % (path, "" if src is None else " (%s)" % src)
            )
        scope = self._scope
        manifest = self._store.save(
            src,
            library_scope(label),
            name=label,
            metadata=metadata,
            # Never another save's version (issue 14 F5): a version shared by two saves is
            # deleted for both by delete_model() of either; the blobs are shared instead.
            publisher=publisher_record(self._username, scope.namespace, scope.pathspec),
            # What it is (and the label as given): every reader rebuilds its fields from it.
            source=model_record(scope.attempt, text),
        )
        ref = reference_of(self._store, manifest)
        stats = manifest.stats
        self._log(
            "[@model] Saved model %r version %s (%s, %s new)."
            % (
                label,
                manifest.id,
                human_size(manifest.size),
                human_size(int(stats.get("bytes_uploaded", 0))),
            )
        )
        self._saved.append(ref)
        self._labels[label] = True  # a later load of a text it collides with must see it
        return ref

    # ------------------------------------------------------------------ load
    def load(self, reference: Any, path: Optional[str] = None) -> str:
        """Download a model or checkpoint and return its local directory.

        Parameters
        ----------
        reference : CheckpointReference, dict, str or metaflow.Task
            What ``current.model.save``, ``current.checkpoint.save`` or
            ``current.huggingface_hub.snapshot_download`` returned (or an artifact holding
            it), its key or URL, a model label ``"label"`` / ``"label@<version>"`` (any text;
            canonically equivalent spellings, NFC/NFD, are one label), or any spelling
            ``current.checkpoint.load`` accepts.
        path : str, optional
            Where to put the files (created if absent; same-named files are replaced).
            Default: a new temporary directory under ``temp_dir_root``, removed when the task
            ends.

        Also recorded in :attr:`loaded` under the reference's ``key``.

        Raises
        ------
        CheckpointConfigError
            ``reference`` is None or not a reference; ``path`` is a file.
        CheckpointNotFound
            Nothing is stored under that reference (deleted, or never saved).
        """
        if reference is None:
            raise CheckpointConfigError(
                "current.model.load(None): pass a reference (what current.model.save returned, "
                "an artifact holding it, its key) or a model name 'label[@version]'."
            )
        store, manifest = self.resolve(reference)
        self.load_into(manifest.key, store, manifest, path, reference)
        return str(self._loaded[manifest.key])

    def resolve(self, reference: Any):
        """``(store, manifest)`` of a reference, as this task sees it: its store and any store
        a reference names; names trusted in the task's namespace.

        A str that is no valid name may be both another spelling (a key, a pathspec,
        ``name@<version prefix>``) and a free-text label (``"bert@abc"``): it loads what it
        designates only when the other meaning has nothing stored.  A text that is neither is
        read as ``"<label>@<version>"`` (split at the last ``@``) when its head is a saved
        free-text label: ``"bert base@1f2e"`` pins that version of ``"bert base"`` (a text that
        is a label itself and also such a version is ambiguous too).  Labels are compared in
        NFC (:func:`label_name`).

        Raises
        ------
        CheckpointConfigError
            Both meanings designate stored checkpoints: the message gives a spelling for each.
        CheckpointNotFound
            Nothing is stored under any meaning of the text; for a text that can only be a
            label, the message says no model is saved under that label, its stored name, and
            the spelling that pins a version.
        """
        view = TaskView(self._store, self._scope, other_stores=True, reader=self._scope.namespace)
        name = label_name(reference) if isinstance(reference, str) else None
        if name is None or name == reference:  # a valid name: no label can differ from it
            return resolve(reference, view)
        try:
            found = resolve(reference, view)  # a key, a URL, a pathspec, name@version...
        except CheckpointScopeError as exc:
            # Stored but not for this task (another store, an untrusted version): still a
            # meaning of the text, so a label of the same text is ambiguous, not a fallback.
            if self._is_label(name):
                raise self._ambiguous(reference, name, exc.message) from None
            raise
        except (CheckpointConfigError, CheckpointNotFound) as exc:
            # ...else a free-text label ("bert base v2", "facebook/opt-125m"): the model saved
            # under it.  Tried second, so the other spellings cost no extra store listing.
            named = refspec.RefSpec(refspec.NAMED, name=name)
            try:
                labelled = resolve(named, view)
            except CheckpointNotFound:
                labelled = None
            # "<label>@<version>" of a free-text label: only after the whole text is neither
            # another spelling nor a label, or when both the text and its head are labels.
            pinned = self._label_at_version(reference, view, strict=labelled is None)
            if labelled is not None and pinned is not None:
                other = reference_of(pinned[0], pinned[1])
                raise self._ambiguous(
                    reference, name, "%s (key %r)" % (other.spelling or other["key"], other["key"])
                ) from None
            if labelled is not None or pinned is not None:
                return labelled or pinned
            raise self._no_label(reference, name, exc) from None
        # The text designates a stored checkpoint; if a model was also saved with it as its
        # label, loading either one silently would be the wrong weights half of the time
        # (one listing of the label's prefix per task, only for texts that are no name).
        ref = reference_of(found[0], found[1])
        if ref["name"] != name and self._is_label(name):
            raise self._ambiguous(
                reference, name, "%s (key %r)" % (ref.spelling or ref["key"], ref["key"])
            )
        return found

    def _is_label(self, name: str) -> bool:
        """Whether a model is saved under the label stored as ``name`` (one listing per name
        per task; this task's own saves mark theirs)."""
        if name not in self._labels:
            self._labels[name] = bool(named_versions(self._store, name))
        return self._labels[name]

    def _label_at_version(self, text: str, view: TaskView, strict: bool):
        """``(store, manifest)`` of ``"<label>@<version>"``, a version of the free-text label
        ``<label>`` (split at the last ``@``), or None when ``<label>`` is a valid name (the
        resolver's ``name@<version>``) or no saved label.  One listing of the label's stored
        name, only for a text with ``@`` whose head is no valid name.

        Raises
        ------
        CheckpointNotFound
            ``strict`` and ``<label>`` is a saved label with no such version: the message
            says which label it read and the spelling that pins a version.
        """
        head, at, version = text.rpartition("@")
        stored = label_name(head) if at else head
        if not at or stored == head or not named_versions(self._store, stored):
            return None
        try:
            return resolve("%s@%s" % (stored, version), view)
        except CheckpointScopeError as exc:
            if strict:
                raise
            # Stored but not for this task: still a meaning of the text (as in resolve).
            raise self._ambiguous(text, label_name(text), exc.message) from None
        except (CheckpointConfigError, CheckpointNotFound) as exc:
            if not strict:
                return None
            raise CheckpointNotFound(
                "current.model.load(%r): %r is the label of the model stored as %r, and %r "
                "designates no version of it: %s" % (text, head, stored, version, exc.message)
            ) from None

    def _no_label(
        self, text: str, name: str, other: CheckpointConfigError | CheckpointNotFound
    ) -> CheckpointNotFound:
        """The error for a text that is no saved label and designates nothing else stored.

        A text that is no reference grammar (``other`` is a CheckpointConfigError) can only be
        a label, so the message is about the label, not the name grammar it fails (issue R6);
        a reference that parsed but has nothing stored keeps its own message first."""
        if isinstance(other, CheckpointNotFound):
            return CheckpointNotFound(
                "%s No model is saved under the label %r either (stored name %r); to pin a "
                "version of a label use '%s@<version>'." % (other.message, text, name, name)
            )
        return CheckpointNotFound(
            "current.model.load(%r): no model saved under label %r (stored name %r); to pin a "
            "version use '%s@<version>'." % (text, text, name, name)
        )

    @staticmethod
    def _ambiguous(text: str, name: str, other: str) -> CheckpointConfigError:
        """The error for a text that is both a stored label and another reference."""
        return CheckpointConfigError(
            "current.model.load(%r) is ambiguous: it is the label of the model stored as %r "
            "and it also designates %s. Load the label's model as %r (or '%s@<version>'), the "
            "other by its key." % (text, name, other, name, name)
        )

    def load_into(
        self, name: str, store: CheckpointStore, manifest, path: Optional[str], given: Any = None
    ) -> str:
        """Download ``manifest`` into ``path`` (or a temporary directory) and record it in
        :attr:`loaded` as ``name``; ``given`` is the reference the user passed (its model
        fields are rebuilt from the manifest)."""
        if path is not None:
            loading.check_target(os.fspath(path), loading.MERGE)  # a file there: before reading
        target = self._loaded.directory(name, path)
        try:
            loading.load(store, manifest, target, existing=loading.MERGE)
        except BaseException:
            self._loaded.discard(name, target)
            raise
        # Built from the manifest alone, as every reader does: what the version is (model, Hub
        # snapshot, checkpoint) is recorded there, not taken from what the user passed.
        ref = reference_of(store, manifest)
        info = dict(ref, spelling=ref.spelling)  # what designates it: name@<id>, task@<id>
        self._loaded.add(name, target, info)
        return target

    def close(self) -> None:
        """End of the task: remove the temporary directories of loaded models."""
        self._loaded.close()
