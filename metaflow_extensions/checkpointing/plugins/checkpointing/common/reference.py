"""CheckpointReference: the small, picklable handle of one committed checkpoint, and the one
place references are built (:func:`reference_of`, :func:`references`).

It is a ``dict`` (so ``ref["key"]`` and ``ref["metadata"]`` work, as in code written for other
``@checkpoint`` extensions, and it pickles as an artifact without custom state) whose fields are
also attributes (``ref.key``, ``ref.pathspec``).

Long module: the reference type, its fields (with the other extensions' and the status
fields) and the builders every reader goes through are one unit, so that ``save()``'s return,
listings, ``get``, the CLI and the card build the same reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Optional, Union

from ..core.manifest import Manifest, ManifestHeader, iso_time, parse_key
from ..core.position import writer_of
from ..core.promotions import publisher_of
from ..core.summary import damaged
from ..core.upload_status import FAILED, LOCAL, STATUSES, UPLOADED, UPLOADING  # noqa: F401 (status values)
from ..errors import CheckpointConfigError

if TYPE_CHECKING:  # the store is only needed by the builders, never at import
    from ..core.store import CheckpointStore

#: Fields every reference carries.
FIELDS = (
    "key",
    "version",
    "url",
    "root",
    "name",
    "pathspec",
    "attempt",
    "created_on",
    "metadata",
    "latest",
    "size",
    "files_count",
    "stats",
    "namespace",
    "flow",
    "step",
    "foreach",
    "run",
    "task",
    "publisher",
    "writer",
    "sharded",
    "damaged",
    "error",
    "version_id",
    "type",
    "storage_format",
    "creation_context",
    "status",
    "task_status",
)


#: ``storage_format`` values ``save()`` accepts (other ``@checkpoint`` extensions' spellings):
#: either way the files are stored one by one and verified when loaded.
FILES = "files"
STORAGE_FORMATS = (FILES, "tar")

#: Fields of code written for other ``@checkpoint`` extensions, derived from ours: a reference
#: pickled before they were recorded answers them too (:meth:`CheckpointReference.__missing__`).
_COMPAT = {
    "version_id": lambda ref: dict.get(ref, "version"),
    "type": lambda ref: "checkpoint",
    "storage_format": lambda ref: FILES,
    "creation_context": lambda ref: "task" if dict.get(ref, "pathspec") else "non-task",
    # Before statuses, every reference was of a checkpoint committed to the flow's store.
    "status": lambda ref: UPLOADED,
    "task_status": lambda ref: None,
}


def check_storage_format(storage_format: Any) -> str:
    """Check a ``save(storage_format=...)`` argument; return it.

    Raises
    ------
    CheckpointConfigError
        Not one of :data:`STORAGE_FORMATS`, naming them.
    """
    if storage_format not in STORAGE_FORMATS:
        raise CheckpointConfigError(
            "storage_format=%r is not a storage format: pass 'files' (the default) or 'tar' "
            "(both store the files one by one, each verified when loaded)." % (storage_format,)
        )
    return storage_format


#: Hex digits of a version id shown by ``repr``, listings and the CLI ``ID`` column
#: (:attr:`CheckpointReference.short_id`), the one length every display uses; ``TASK@<short
#: id>`` resolves it back (ADR 005).
SHORT_ID_LENGTH = 8


class CheckpointReference(dict):
    """A committed checkpoint: a mapping with attribute access.

    Keys/attributes: ``key`` (manifest key relative to ``root``), ``version`` (the
    checkpoint's 16-hex id; ``name@version`` addresses a named checkpoint), ``url`` (full URL
    of the manifest), ``root`` (checkpoint store root), ``name``, ``pathspec``
    (``Flow/run/step/task`` of the writer), ``attempt``, ``created_on`` (ISO-8601 UTC),
    ``metadata`` (user dict), ``latest``, ``size`` (bytes of files), ``files_count``,
    ``stats`` (save statistics: bytes read/uploaded/deduplicated, seconds per phase),
    ``namespace``, ``flow``, ``step``, ``foreach``, ``run``, ``task``.  ``pathspec``, ``run``
    and ``task`` are None for a named checkpoint saved outside any task
    (``Checkpoint().save(path, name=...)``).  ``publisher`` says who saved it:
    ``{"user", "namespace", "origin"}``; for a named checkpoint as its manifest records it
    (origin ``"cli"``, ``"client"`` or the pathspec of the run that uploaded it; None for a
    version saved before publishers were recorded), for a task's checkpoint its task's
    namespace and pathspec.  ``writer`` is the position of the process that saved it,
    ``{"node": n, "local": l}`` (its task's ``@parallel`` node index and its ``LOCAL_RANK``;
    ``{"node": 0, "local": 0}`` is rank 0, the writer of every checkpoint saved before writers
    were recorded), None for a sharded checkpoint (``sharded`` True: every participant of
    ``save(sharded=True)`` wrote a part, under ``rank-<i>/``).  ``damaged`` is True for a
    checkpoint whose manifest cannot be parsed (truncated, tampered with, or written by a newer
    release); ``error`` then says why (else None).  A damaged checkpoint is listed with what
    its key tells (name, pathspec, attempt, date, ``latest``, writer), no metadata and size 0;
    loading it raises the ``ManifestError``, retention keeps it, and
    ``Checkpoint().delete(ref)`` removes it.

    ``status`` says where the checkpoint stands: ``"uploaded"`` (in the flow's checkpoint
    store: every checkpoint of ``@checkpoint(upload="each")``, the default, once committed),
    ``"local"`` (only in the task machine's local tier, ``upload="end"``: uploaded when the
    task ends), ``"uploading"`` or ``"failed"`` (its upload gave up, ``upload_errors="warn"``;
    it stays in the local tier).  ``task_status`` says how the attempt that saved it ended:
    ``"succeeded"``, ``"failed"``, ``"paused"`` (it stopped in ``current.checkpoint.pause()``,
    to be resumed: not a failure), or None while it runs (or when unknown: an attempt killed
    before its end, or one of a release that did not record it).  A reference pickled before
    these fields existed answers ``"uploaded"`` and None.

    Code written for other ``@checkpoint`` extensions also reads ``version_id`` (``version``),
    ``type`` (``"checkpoint"``, ``"model"`` for a version of ``current.model.save``),
    ``storage_format`` (``"files"``: files are stored one by one, whatever ``save()`` was
    asked) and ``creation_context`` (``"task"``, or ``"non-task"`` for a named checkpoint saved
    outside any task); a model also has ``label``, ``model_uuid``, ``source="task"`` and the
    saving task's ``attempt`` (its pathspec is ``publisher["origin"]``), a Hugging Face Hub
    snapshot ``source="huggingface"``, ``repo_id``, ``repo_type``, ``revision`` and ``commit``.
    Every reader builds these from the manifest (:func:`kind_fields`), so ``save()``'s return,
    listings, ``get``, the CLI and ``loaded.info`` agree; a reference pickled before they were
    recorded answers the first four too.

    Methods read from the checkpoint's store (``root``): :meth:`load` downloads it,
    :meth:`open` streams one file, :attr:`files` lists its files (through :mod:`.access`: a
    reference is a plain value, it builds no client and is the same in a task or outside).
    """

    __slots__ = ()

    def __getattr__(self, item: str) -> Any:
        try:
            return self[item]
        except KeyError:
            raise AttributeError(item) from None

    def __missing__(self, item: str) -> Any:
        """A field another extension's code reads, derived for a reference pickled before it
        was recorded; any other missing field is a KeyError."""
        if item in _COMPAT:
            return _COMPAT[item](self)
        raise KeyError(item)

    def get(self, item: str, default: Any = None) -> Any:
        if item in self or item not in _COMPAT:
            return dict.get(self, item, default)
        return _COMPAT[item](self)

    def __repr__(self) -> str:
        """``CheckpointReference(TrainFlow/12/train/3@1a2b3c4d attempt=1 {'epoch': 3, 'loss':
        0.12345})``: what it is as a reference spelling (``<pathspec>@<short_id>``, or
        ``<name>@<short_id>`` for a named one: :meth:`Checkpoint.load` takes it back), then
        its attempt and its metadata, exact (a float as Python writes it back: what is shown
        can be typed back, ``@loss=0.12345``; ADR 005, "fix-refs")."""
        if not self.get("version"):
            return "CheckpointReference(%s)" % self.get("key")
        parts = [str(self.spelling)]
        if self.get("pathspec"):
            parts.append("attempt=%s" % self.get("attempt"))
        if self.get("damaged"):
            parts.append("damaged")
        parts.append(repr(self.get("metadata") or {}))
        return "CheckpointReference(%s)" % " ".join(parts)

    @property
    def spelling(self) -> Optional[str]:
        """The reference's spelling that designates exactly it: ``<pathspec>@<short_id>``
        (``Flow/run/step/task`` alone is the task's latest, maybe another checkpoint), or
        ``<name>@<short_id>`` for a named one; what ``repr``, the CLI's ``reference:`` lines
        and ``--json``'s ``"ref"`` show.  None when the reference has no version."""
        owner = self.get("pathspec") or self.get("name")
        return "%s@%s" % (owner, self.short_id) if self.short_id and owner else None

    @property
    def short_id(self) -> Optional[str]:
        """The first :data:`SHORT_ID_LENGTH` hex digits of ``version``: the id shown to people
        (``repr``, listings); ``<pathspec>@<short_id>`` (``<name>@<short_id>`` for a named
        one) loads it back.  None when the reference has no version."""
        version = self.get("version")
        return version[:SHORT_ID_LENGTH] if version else None

    # ------------------------------------------------------------------ reading the store
    @property
    def files(self) -> list[dict]:
        """Files of the checkpoint: ``[{"path": ..., "size": ...}, ...]`` (reads the manifest)."""
        from .access import files

        return files(self)

    def load(self, path: str) -> str:
        """Download the checkpoint into the directory ``path`` (created if absent, else it must
        be empty); return its absolute path.  See ``Checkpoint().load``."""
        from .access import load

        return load(self, path)

    def open(self, file: str) -> IO[bytes]:
        """A binary stream over one file of the checkpoint, verified as it is read; nothing
        else is downloaded."""
        from .access import open_file

        return open_file(self, file)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_manifest(
        cls,
        manifest: Manifest,
        root: str,
        url: str,
        status: str = UPLOADED,
        task_status: Optional[str] = None,
    ) -> CheckpointReference:
        """Build from a full manifest."""
        m = manifest
        # Its fields are the key's: not parsed back out of it (8 us of a 4 KiB save).
        header = ManifestHeader(
            m.key, m.scope, m.created_ms, m.seq, m.latest, m.id, m.name, m.position, m.sharded
        )
        ref = cls._from_header(header.key, m.scope, root, url, status, task_status, header)
        ref.update(
            name=manifest.name,
            created_on=manifest.created_on,
            latest=manifest.latest,
            metadata=dict(manifest.metadata),
            size=manifest.size,
            files_count=len(manifest.files),
            stats=dict(manifest.stats),
        )
        ref["publisher"] = _publisher(manifest.scope, manifest.source, ref)
        ref.update(
            kind_fields(
                manifest.scope, manifest.name, manifest.source, ref["metadata"], ref["version"]
            )
        )
        return ref

    @classmethod
    def from_summary(
        cls,
        header: ManifestHeader,
        summary: dict,
        root: str,
        url: str,
        status: str = UPLOADED,
        task_status: Optional[str] = None,
    ) -> CheckpointReference:
        """Build from a manifest key and its summary (see ``core.summary``)."""
        ref = cls._from_header(header.key, header.scope, root, url, status, task_status, header)
        ref.update(
            name=header.name,
            created_on=iso_time(header.created_ms),
            latest=header.latest,
            metadata=dict(summary.get("metadata") or {}),
            size=int(summary.get("size", 0)),
            files_count=int(summary.get("files", 0)),
            stats=dict(summary.get("stats") or {}),
            damaged=bool(summary.get("damaged")),
            error=summary.get("error"),
        )
        ref["publisher"] = _publisher(header.scope, summary.get("source"), ref)
        ref.update(
            kind_fields(
                header.scope, header.name, summary.get("source"), ref["metadata"], ref["version"]
            )
        )
        return ref

    @classmethod
    def _from_header(
        cls, key, scope, root, url, status, task_status, header=None
    ) -> CheckpointReference:
        if status not in STATUSES:
            raise ValueError("status=%r is not one of %s" % (status, ", ".join(STATUSES)))
        task_of = None if scope.is_library else scope
        if header is None:  # a listing's header is parse_key(key) already: not parsed again
            header = parse_key(key)
        return cls(
            key=key,
            version=header.id,
            url=url,
            root=root,
            pathspec=task_of and task_of.pathspec,
            attempt=scope.attempt,
            namespace=scope.namespace,
            flow=scope.flow,
            step=scope.step,
            foreach=scope.foreach,
            run=task_of and task_of.run,
            task=task_of and task_of.task,
            writer=writer_of(header.position, header.sharded),
            sharded=header.sharded,
            damaged=False,
            error=None,
            version_id=header.id,
            type="checkpoint",
            storage_format=FILES,
            creation_context="non-task" if scope.is_library else "task",
            status=status,
            task_status=task_status,
        )


#: ``source["reference"]`` of a manifest: what a version IS for the reference extension's
#: fields, recorded by its saver (:func:`model_record`) so every reader (``save()``'s return,
#: listings, ``get``, the CLI, ``loaded.info``) rebuilds the same reference.
RECORD = "reference"
#: Longest model label text: ``current.model.save`` refuses a longer one before writing; a
#: longer one in a manifest body (untrusted) reads back as the stored name.
MAX_LABEL = 4096


def model_record(attempt: int, label: Optional[str] = None) -> dict:
    """The ``source`` fields of a model version saved by ``current.model.save`` in a task's
    attempt ``attempt`` with the label text ``label`` as the user gave it (free text, stored
    under a name derived from it; None: the name is the label); :func:`kind_fields` reads
    them back."""
    record = {"type": "model", "source": "task", "attempt": int(attempt)}
    if label is not None:
        record["label"] = label
    return {RECORD: record}


def kind_fields(scope, name: str, source: Any, metadata: Any, version: str) -> dict:
    """The reference extension's fields of a version, from what its manifest records: a model
    (``type="model"``, ``label``, ``model_uuid``, ``source="task"``, the saving task's
    ``attempt``, ``creation_context="task"``), a Hugging Face Hub snapshot (``source=
    "huggingface"``, ``repo_id``, ``repo_type``, ``revision``, ``commit``), else nothing (a
    checkpoint: the defaults of :meth:`CheckpointReference._from_header`).  ``storage_format``
    is ``"files"`` for every version: what is stored, whatever ``save()`` was asked."""
    record = source.get(RECORD) if isinstance(source, dict) else None
    if scope.is_library and isinstance(record, dict) and record.get("type") == "model":
        attempt = record.get("attempt")
        valid = type(attempt) is int and 0 <= attempt < 2**31  # an untrusted body
        label = record.get("label")
        return dict(
            type="model",
            label=label if isinstance(label, str) and len(label) <= MAX_LABEL else name,
            model_uuid=version,
            source="task",
            attempt=attempt if valid else 0,
            creation_context="task",
        )
    meta = metadata if isinstance(metadata, dict) else {}
    if (
        scope.is_library
        and name.startswith(("hf.", "hf-"))
        and meta.get("registry") == "huggingface"
    ):
        return dict(
            type="checkpoint",
            source="huggingface",
            repo_id=meta.get("repo_id"),
            repo_type=meta.get("repo_type"),
            revision=meta.get("revision"),
            commit=meta.get("commit"),
        )
    return {}


def _publisher(scope, source, ref: dict) -> Optional[dict]:
    """Who saved a checkpoint: recorded for a named one, its task for a task's checkpoint."""
    if scope.is_library:
        return publisher_of(source)
    user = scope.namespace[len("user:") :] if scope.namespace.startswith("user:") else None
    return {"user": user, "namespace": scope.namespace, "origin": ref["pathspec"]}


# ------------------------------------------------------------------------------ building
def reference_of(
    store: CheckpointStore,
    manifest: Manifest,
    *,
    status: str = UPLOADED,
    task_status: Optional[str] = None,
) -> CheckpointReference:
    """The reference of a checkpoint of ``store`` from its full manifest, with its ``status``
    (one of :data:`STATUSES`) and its attempt's ``task_status``."""
    return CheckpointReference.from_manifest(
        manifest, store.url, store.storage.full_url(manifest.key), status, task_status
    )


#: Per checkpoint key, or one value for all.
PerKey = Union[Optional[str], Mapping[str, Optional[str]]]


def _of(value: PerKey, key: str, default: Optional[str]) -> Optional[str]:
    return value.get(key, default) if isinstance(value, Mapping) else value


def references(
    store: CheckpointStore,
    headers: Sequence[ManifestHeader],
    *,
    status: PerKey = UPLOADED,
    task_status: PerKey = None,
) -> list[CheckpointReference]:
    """References of the checkpoints of ``store`` listed as ``headers``, in that order, with
    their metadata and sizes from summaries (:meth:`.CheckpointStore.summaries`; a damaged
    checkpoint's reference says so).  ``status`` and ``task_status`` are one value for all,
    or a mapping by manifest key (a key it lacks: ``"uploaded"``, None)."""
    summaries = store.summaries(headers)
    return [
        CheckpointReference.from_summary(
            h,
            summaries[h.key],
            store.url,
            store.storage.full_url(h.key),
            _of(status, h.key, UPLOADED) or UPLOADED,
            _of(task_status, h.key, None),
        )
        for h in headers
    ]


def damaged_reference(store: CheckpointStore, key: str, error: str) -> CheckpointReference:
    """The reference of the checkpoint at ``key`` whose manifest does not parse (``error``)."""
    return CheckpointReference.from_summary(
        parse_key(key), damaged(error), store.url, store.storage.full_url(key)
    )
