"""The Hugging Face Hub side of ``@huggingface_hub``: what one snapshot is, and talking to the Hub.

:class:`SnapshotRequest` is a validated ``snapshot_download(...)`` call; its :attr:`entry_name`
is the named checkpoint that holds its snapshots (one version per resolved commit).  The Hub is
reached only through the installed ``huggingface_hub`` package (it honours ``HF_ENDPOINT``,
``HF_TOKEN``, ``HF_HOME``), imported on first use in the task, never at ``import metaflow``.

Every Hub request of one call (revision look-up, file listing, download) carries the same
authentication and transport arguments (:data:`TRANSPORT_KWARGS`), and every downloaded file is
checked against the hash the Hub lists for it (LFS sha256, else git blob sha1) before anything
is stored.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import CheckpointConfigError, CheckpointDependencyError, CheckpointIntegrityError

#: ``snapshot_download`` arguments we decide ourselves: where files go (the store is the cache).
REFUSED_KWARGS = {
    "local_dir": "files go to the store; load(repo_id, path=...) or "
    "@huggingface_hub(load=[(repo_id, path)]) places them where you want",
    "cache_dir": "the checkpoint store is the cache; HF_HOME moves the Hub client's own cache",
    "local_dir_use_symlinks": "files are always real files",
    "dry_run": "a snapshot is downloaded to be stored",
    "local_files_only": "the store is consulted first; the Hub is asked only on a miss",
    "endpoint": "set HF_ENDPOINT in the task's environment instead",
}
#: ``snapshot_download`` arguments that say how to talk to the Hub: given to every request
#: (``HfApi(...)`` for the revision look-up and the listing, ``snapshot_download`` for files).
TRANSPORT_KWARGS = ("token", "headers", "library_name", "library_version", "user_agent")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
REPO_TYPES = ("model", "dataset", "space")


class HubUnreachable(Exception):
    """The Hub could not be asked (connection refused, timeout, 5xx, offline mode)."""


def import_hub() -> Any:
    """The ``huggingface_hub`` module.

    Raises
    ------
    CheckpointDependencyError
        It is not installed, naming the extra ``metaflow-checkpointing[huggingface]``.
    """
    try:
        import huggingface_hub
    except ImportError as exc:
        raise CheckpointDependencyError.of(
            "@huggingface_hub", "huggingface_hub", "huggingface", exc
        ) from None
    return huggingface_hub


def endpoint() -> str:
    """The Hub's URL as the client sees it (``HF_ENDPOINT``, else huggingface.co)."""
    import_hub()
    from huggingface_hub import constants  # a lazy attribute of the package: import it

    return constants.ENDPOINT


def _patterns(value: Any, attr: str) -> Optional[list[str]]:
    """``None``, or a sorted list of distinct pattern strings (order does not change the files)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple, set)) or not all(
        isinstance(p, str) and p for p in items
    ):
        raise CheckpointConfigError(
            "%s=%r must be a pattern string or a list of them, e.g. ['*.json', '*.safetensors']."
            % (attr, value)
        )
    return sorted(set(items))


@dataclass(frozen=True)
class SnapshotRequest:
    """One ``snapshot_download`` call, validated: what identifies its snapshot, and the rest."""

    repo_id: str
    repo_type: str = "model"
    revision: str = "main"
    allow_patterns: Optional[list] = None
    ignore_patterns: Optional[list] = None
    force_download: bool = False
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, repo_id: Any = None, **kwargs: Any) -> SnapshotRequest:
        """Validate the arguments of ``snapshot_download`` (no I/O, no import).

        Raises
        ------
        CheckpointConfigError
            A missing or malformed ``repo_id``, an unknown ``repo_type``, malformed patterns,
            or an argument we decide ourselves (``local_dir``, ``cache_dir``, ...), naming why.
        """
        if not isinstance(repo_id, str) or not repo_id.strip() or repo_id != repo_id.strip():
            raise CheckpointConfigError(
                "@huggingface_hub needs repo_id, a Hub repository id such as "
                "'google-bert/bert-base-uncased' (got %r)." % (repo_id,)
            )
        for key in sorted(set(kwargs) & set(REFUSED_KWARGS)):
            raise CheckpointConfigError(
                "@huggingface_hub: snapshot_download(%s=...) is not accepted: %s."
                % (key, REFUSED_KWARGS[key])
            )
        repo_type = kwargs.pop("repo_type", None) or "model"
        if repo_type not in REPO_TYPES:
            raise CheckpointConfigError(
                "@huggingface_hub: repo_type=%r is not one of %s."
                % (repo_type, ", ".join(REPO_TYPES))
            )
        revision = kwargs.pop("revision", None) or "main"
        if not isinstance(revision, str):
            raise CheckpointConfigError(
                "@huggingface_hub: revision=%r must be a branch, tag or commit string."
                % (revision,)
            )
        return cls(
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            allow_patterns=_patterns(kwargs.pop("allow_patterns", None), "allow_patterns"),
            ignore_patterns=_patterns(kwargs.pop("ignore_patterns", None), "ignore_patterns"),
            force_download=bool(kwargs.pop("force_download", False)),
            extra=kwargs,
        )

    @property
    def entry_name(self) -> str:
        """The named checkpoint holding this request's snapshots: one name per repo and pattern
        set (``hf.<owner>--<repo>.<digest>``), one version per resolved commit."""
        ident = json.dumps(
            [self.repo_type, self.repo_id, self.allow_patterns, self.ignore_patterns]
        )
        digest = hashlib.sha256(ident.encode()).hexdigest()[:10]
        readable = re.sub(r"[^A-Za-z0-9_.-]", "-", self.repo_id.replace("/", "--"))
        readable = re.sub(r"\.{2,}", "-", readable).strip(".-")[:60] or "repo"
        kind = "hf" if self.repo_type == "model" else "hf-" + self.repo_type
        return "%s.%s.%s" % (kind, readable, digest)

    def metadata(self, commit: str) -> dict:
        """The metadata of the version holding the snapshot at ``commit``."""
        return {
            "registry": "huggingface",
            "repo_id": self.repo_id,
            "repo_type": self.repo_type,
            "revision": self.revision,
            "commit": commit,
            "allow_patterns": self.allow_patterns,
            "ignore_patterns": self.ignore_patterns,
        }


def check_arguments(request: SnapshotRequest) -> None:
    """Refuse arguments the installed ``snapshot_download`` does not take, before any request
    (on a cache hit they would otherwise pass unnoticed).

    Raises
    ------
    CheckpointConfigError
        Naming the unknown arguments and the accepted ones.
    CheckpointDependencyError
        ``huggingface_hub`` is not installed.
    """
    accepted = set(inspect.signature(import_hub().snapshot_download).parameters)
    unknown = sorted(set(request.extra) - accepted)
    if unknown:
        raise CheckpointConfigError(
            "@huggingface_hub: snapshot_download got unknown argument(s) %s; the installed "
            "huggingface_hub accepts %s." % (", ".join(unknown), ", ".join(sorted(accepted)))
        )


def resolve_commit(request: SnapshotRequest) -> str:
    """The commit sha ``request.revision`` designates now (one small metadata request; none for
    a 40-hex commit).

    Raises
    ------
    HubUnreachable
        The Hub could not be asked.
    huggingface_hub.errors.RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError
        As ``huggingface_hub`` raises them (code written for it catches them), with a message
        naming the repo, revision and endpoint.
    """
    if _COMMIT_RE.fullmatch(request.revision):
        return request.revision
    try:
        info = _api(request).repo_info(
            request.repo_id, repo_type=request.repo_type, revision=request.revision
        )
    except Exception as exc:
        raise _translated(exc, request) from None
    return str(info.sha)


def _api(request: SnapshotRequest) -> Any:
    """An ``HfApi`` carrying the request's authentication and transport arguments."""
    extra = request.extra
    return import_hub().HfApi(**{k: extra[k] for k in TRANSPORT_KWARGS if k in extra})


@dataclass(frozen=True)
class HubFile:
    """One file of a commit as the Hub lists it: the hash its bytes must have."""

    path: str
    size: int
    algorithm: str  # "sha256" (LFS) or "git-sha1" (a git blob)
    digest: str


def listing(request: SnapshotRequest, commit: str) -> tuple[list[HubFile], int]:
    """(the files of ``commit`` the request's patterns select, how many files the commit has),
    with the hash the Hub lists for each (one ``repo_info(files_metadata=True)`` request, not
    retried: a Hub that is down fails at once rather than after the client's ~23 s back-off).

    Raises
    ------
    HubUnreachable, huggingface_hub.errors.RepositoryNotFoundError, ...
        As :func:`resolve_commit`.
    CheckpointIntegrityError
        The Hub lists a selected file without a hash (nothing could check its bytes).
    """
    api = _api(request)
    from huggingface_hub.utils import filter_repo_objects

    try:
        info = api.repo_info(
            request.repo_id, repo_type=request.repo_type, revision=commit, files_metadata=True
        )
    except Exception as exc:
        raise _translated(exc, request) from None
    siblings = list(info.siblings or [])
    chosen = filter_repo_objects(
        siblings,
        allow_patterns=request.allow_patterns,
        ignore_patterns=request.ignore_patterns,
        key=lambda f: f.rfilename,
    )
    files = []
    for f in chosen:
        if f.lfs is not None:
            files.append(HubFile(f.rfilename, f.lfs.size, "sha256", f.lfs.sha256))
        elif f.blob_id:
            files.append(HubFile(f.rfilename, f.size or 0, "git-sha1", f.blob_id))
        else:
            raise CheckpointIntegrityError(
                "Hugging Face Hub: %s lists %s without a hash at commit %s (%s): its bytes "
                "cannot be checked, so nothing was downloaded."
                % (request.repo_id, f.rfilename, commit, endpoint()),
                path=f.rfilename,
            )
    return files, len(siblings)


def _digest(path: str, algorithm: str, size: int) -> str:
    h = hashlib.sha256() if algorithm == "sha256" else hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_snapshot(into: str, files: list[HubFile], request: SnapshotRequest, commit: str) -> None:
    """Check that ``into`` holds exactly ``files``, each with the bytes the Hub's hash says.

    Raises
    ------
    CheckpointIntegrityError
        A file missing, unexpected, or whose bytes do not match the Hub's hash, naming the
        file, the repo, the commit and the endpoint.
    """
    where = "%s %r at commit %s (%s)" % (request.repo_type, request.repo_id, commit, endpoint())
    expected = {f.path: f for f in files}
    present = set()
    for dirpath, _, names in os.walk(into):
        present.update(os.path.relpath(os.path.join(dirpath, n), into) for n in names)
    for path in sorted(present - set(expected)):
        raise CheckpointIntegrityError(
            "Hugging Face Hub: %s was downloaded but is not in the Hub's file list of %s; "
            "nothing was stored." % (path, where),
            path=path,
        )
    for f in files:
        if f.path not in present:
            raise CheckpointIntegrityError(
                "Hugging Face Hub: %s of %s was not downloaded; nothing was stored."
                % (f.path, where),
                path=f.path,
            )
        local = os.path.join(into, f.path)
        size = os.path.getsize(local)
        got = _digest(local, f.algorithm, size)
        if got != f.digest:
            raise CheckpointIntegrityError(
                "Hugging Face Hub: the bytes of %s from %s do not match the Hub's %s %s "
                "(got %s, %d bytes, %d expected): corrupted in transit or by a proxy; nothing "
                "was stored. Run again; if it persists, check HF_ENDPOINT and any proxy."
                % (f.path, where, f.algorithm, f.digest, got, size, f.size),
                path=f.path,
            )


def download(request: SnapshotRequest, commit: str, into: str, files: list[HubFile]) -> str:
    """Download the snapshot at ``commit`` into the new directory ``into`` (real files only:
    the Hub client's bookkeeping folder is removed) and check every file against ``files``
    (:func:`listing`); return ``into``.

    Raises
    ------
    CheckpointIntegrityError
        See :func:`verify_snapshot`.
    """
    hub = import_hub()
    try:
        hub.snapshot_download(
            request.repo_id,
            repo_type=request.repo_type,
            revision=commit,
            allow_patterns=request.allow_patterns,
            ignore_patterns=request.ignore_patterns,
            local_dir=into,
            **request.extra,
        )
    except Exception as exc:
        raise _translated(exc, request) from None
    # Patterns that select no file: huggingface_hub before 1.0 creates no local_dir at all.
    os.makedirs(into, exist_ok=True)
    shutil.rmtree(os.path.join(into, ".cache", "huggingface"), ignore_errors=True)
    try:
        os.rmdir(os.path.join(into, ".cache"))
    except OSError:
        pass  # absent, or a .cache folder of the repo itself
    verify_snapshot(into, files, request, commit)
    return into


def _translated(exc: Exception, request: SnapshotRequest) -> Exception:
    """``exc`` with a message naming the repo, revision and endpoint; a :class:`HubUnreachable`
    for what says the Hub could not be asked."""
    import_hub()
    # huggingface_hub.utils exports these errors in every version of our range (>=0.23);
    # huggingface_hub.errors has them only from 0.25.
    from huggingface_hub import utils as errors

    where = "%s %r (revision %r) at %s" % (
        request.repo_type,
        request.repo_id,
        request.revision,
        endpoint(),
    )
    if isinstance(exc, errors.RevisionNotFoundError):
        message = "Hugging Face Hub: no revision %r in %s: check the branch, tag or commit." % (
            request.revision,
            where,
        )
    elif isinstance(exc, (errors.RepositoryNotFoundError, errors.GatedRepoError)):
        message = (
            "Hugging Face Hub: repository %s was not found or is not accessible: check the "
            "repo_id and repo_type, and for a private or gated repo your token (HF_TOKEN); "
            "HF_ENDPOINT chooses the Hub." % where
        )
    elif _unreachable(exc, errors):
        return HubUnreachable(
            "cannot reach the Hugging Face Hub for %s: %s: %s" % (where, type(exc).__name__, exc)
        )
    else:
        return exc
    try:
        return type(exc)(message, response=exc.response)
    except Exception:  # a constructor we do not know: keep the original
        return exc


def _unreachable(exc: Exception, errors: Any) -> bool:
    """Whether ``exc`` says the Hub could not be asked (not that it said no)."""
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return status is None or status >= 500 or status == 429
    offline = getattr(errors, "OfflineModeIsEnabled", ())
    return (
        isinstance(exc, (errors.LocalEntryNotFoundError, ConnectionError, TimeoutError))
        or (isinstance(exc, offline) if offline else False)
        or type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")
    )
