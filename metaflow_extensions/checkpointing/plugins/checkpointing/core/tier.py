"""The local tier of ``@checkpoint(upload="end")``, and the upload of one of its checkpoints.

With ``upload="end"`` a save commits into a checkpoint store on the task's machine (the *tier*):
a :class:`.store.CheckpointStore` on :class:`LocalStorage`, same format, same verification,
same keys as the flow's store would give.  At the task's end the checkpoints worth keeping are
uploaded to the flow's store by :func:`upload`, which moves the tier's blobs the store lacks
and then commits the *identical* manifest under the *same* key: a reference taken from the tier
names the uploaded checkpoint too, and a second upload finds the key and moves nothing.

The tier lives at :func:`tier_root` ``(remote URL, base)``: one directory per user and flow
store, the same for every attempt of a task on one machine, so a retry there loads what the
failed attempt saved.  :func:`open_tier` refuses a tier (or its per-user parent) that another
user could have planted or can reach: a symlink, not owned by this user, or group/other
accessible; its checkpoints would be loaded and uploaded as this user's.

How :func:`upload` commits (the protocol of :mod:`.commit`, ADR 002):

1. begin a save of the flow store's writer lease (:mod:`.lease_writer`);
2. for each blob the manifest references: if the store has it, it is relied on (named by the
   lease below); else it is read from the tier, checked against its hash (the plain bytes'
   BLAKE3, decoded first when stored compressed) and put, credited to the lease;
3. settle the lease (GC keeps what was named; what a concurrent collection removed is copied
   again), then put the manifest bytes read from the tier, last;
4. if the lease lapsed meanwhile, check every blob and copy again what is gone, or withdraw the
   manifest.

Blobs are copied as they are stored in the tier (``<hash>`` or ``<hash>.zst``): the manifest
names the stored form, so it stays identical whatever the flow store's ``compression`` setting.
The tier is opened with the flow store's options, so both normally agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Optional

from ..errors import (
    CheckpointConfigError,
    CheckpointException,
    CheckpointIncomplete,
    CheckpointIntegrityError,
    CheckpointNotFound,
    StorageError,
    StorageNotFound,
)
from ..storage.local import LocalStorage
from . import manifest as mf
from .codec import DecodeError, decode, split
from .commit import SETTLE_ROUNDS, _absent
from .layout import blob_key
from .manifest import Manifest
from .store import CheckpointStore
from .transfer import _run_bounded, digest
from .upload import BlobWriter

#: The directory under the base that holds a user's tiers (one per flow store), suffixed with
#: the user's uid (:func:`tier_dir`): users of one machine never share a tier.
TIER_DIR = "mfckpt-tier"


def tier_dir() -> str:
    """``mfckpt-tier-<uid>``: this user's directory of tiers under the base."""
    return "%s-%d" % (TIER_DIR, os.getuid())


#: ``abort()`` -> a reason to stop the upload now (None: go on).
Abort = Callable[[], Optional[str]]


class UploadAbandoned(CheckpointException):
    """An upload stopped because ``abort()`` gave a reason (the time allowed after a signal ran
    out): its manifest was not written, so the checkpoint is not in the flow's store.  The blobs
    it copied are unreferenced there, reclaimed by garbage collection."""

    headline = "Checkpoint upload abandoned"
    template = "The upload of checkpoint[ {key}] was abandoned[: {reason}]; nothing was committed."


@dataclass(frozen=True)
class Uploaded:
    """What :func:`upload` did.

    ``blobs`` and ``bytes`` count the blobs copied and their stored bytes; ``already`` is True
    when the key was in the flow's store already (then nothing was moved).
    """

    key: str
    manifest: Manifest
    blobs: int
    bytes: int
    already: bool


def tier_root(remote_url: str, base: str) -> str:
    """``<base>/mfckpt-tier-<uid>/<16 hex of sha256(remote_url)>``: this user's tier of the flow
    store at ``remote_url`` (a store's ``url``) under the directory ``base``.

    Raises
    ------
    CheckpointConfigError
        ``base`` is not a non-empty path.
    """
    if not isinstance(base, str) or not base.strip():
        raise CheckpointConfigError(
            "The local tier's base directory must be a non-empty path, not %r: set "
            "@checkpoint(temp_dir_root=...) or METAFLOW_CHECKPOINT_LOCAL_TIER." % (base,)
        )
    name = hashlib.sha256(str(remote_url).encode("utf-8")).hexdigest()[:16]
    return os.path.join(os.path.abspath(os.path.expanduser(base)), tier_dir(), name)


def _unsafe(root: str, path: str, problem: str) -> CheckpointConfigError:
    return CheckpointConfigError(
        "Refusing the local checkpoint tier %s: %s. It must be a directory (not a symlink) "
        "owned by you (uid %d) that no other user can access (mode 0o700), or another user "
        "could plant checkpoints this task would load and upload as yours. Remove or fix it "
        "(chmod 700), or choose another base with @checkpoint(temp_dir_root=...) or "
        "METAFLOW_CHECKPOINT_LOCAL_TIER." % (root, problem, os.geteuid()),
        path=path,
    )


def _unwritable_parent(path: str) -> Optional[str]:
    """The existing directory this user may not create ``path`` in, or None."""
    parent = path
    while not os.path.lexists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    ok = parent == path or not os.path.isdir(parent) or os.access(parent, os.W_OK | os.X_OK)
    return None if ok else parent


def _unwritable(root: str, blocked: str, exc: OSError) -> CheckpointConfigError:
    st = os.stat(blocked)
    return CheckpointConfigError(
        "Cannot create the local checkpoint tier %s: you (uid %d) may not create directories in "
        "%s (owner uid %d, mode 0o%03o). A base shared by several users needs mode 1777 (as "
        "/tmp: chmod 1777 %s, by its owner); or give each user a base of their own with "
        "@checkpoint(temp_dir_root=...) or METAFLOW_CHECKPOINT_LOCAL_TIER. (%s)"
        % (root, os.geteuid(), blocked, st.st_uid, stat.S_IMODE(st.st_mode), blocked, exc),
        path=blocked,
    )


def _private_dir(root: str, path: str) -> None:
    """Create ``path`` readable by this user only, or check the one there (never following
    a symlink); raise :func:`_unsafe` if it is not this user's private directory."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    mode = stat.S_IMODE(st.st_mode)
    found = "owner uid %d, mode 0o%03o" % (st.st_uid, mode)
    if stat.S_ISLNK(st.st_mode):
        raise _unsafe(root, path, "%s is a symlink (%s)" % (path, found))
    if not stat.S_ISDIR(st.st_mode):
        raise _unsafe(root, path, "%s is not a directory (%s)" % (path, found))
    if st.st_uid != os.geteuid():
        raise _unsafe(root, path, "%s belongs to another user (%s)" % (path, found))
    if mode & 0o077:
        raise _unsafe(root, path, "%s is accessible by group or others (%s)" % (path, found))


def open_tier(remote: CheckpointStore, base: str) -> CheckpointStore:
    """The tier of ``remote`` under ``base``: a store on :class:`LocalStorage` at
    :func:`tier_root` with ``remote``'s transfer options (compression included), it and its
    per-user parent created readable by this user only (it holds the user's checkpoints), or
    checked to be so before anything in it is read.

    Raises
    ------
    CheckpointConfigError
        The directory cannot be created or accessed (naming the one at fault: the base when
        this user may not write into it, with its owner, mode and the 1777 a shared base needs),
        or it or its parent is a symlink, another user's, or group/other accessible.
    """
    root = tier_root(remote.url, base)
    try:
        os.makedirs(os.path.dirname(os.path.dirname(root)), exist_ok=True)
        _private_dir(root, os.path.dirname(root))
        _private_dir(root, root)
    except PermissionError as exc:
        blocked = _unwritable_parent(exc.filename or root)
        if blocked is not None:
            raise _unwritable(root, blocked, exc) from exc
        raise _unsafe(root, exc.filename or root, "%s: %s" % (type(exc).__name__, exc)) from exc
    except OSError as exc:
        raise CheckpointConfigError(
            "Cannot create the local checkpoint tier %s (%s: %s): choose a writable directory "
            "with @checkpoint(temp_dir_root=...) or METAFLOW_CHECKPOINT_LOCAL_TIER."
            % (root, type(exc).__name__, exc),
            path=root,
        ) from exc
    return CheckpointStore(
        LocalStorage(root),
        replace(remote.options),
        lease_seconds=remote.writer.lease.ttl,
    )


def _needs(manifest: Manifest) -> dict[str, int]:
    """Every blob the manifest references -> the plain bytes it must hold (its slices' end)."""
    out: dict[str, int] = {}
    for f in manifest.files:
        for c in f.chunks:
            out[c.blob] = max(out.get(c.blob, 0), c.offset + c.length)
    return out


def _check(key: str, name: str, data: bytes, need: int) -> None:
    """Raise :class:`CheckpointIntegrityError` unless ``data`` (blob ``name`` as the tier stores
    it) holds at least ``need`` plain bytes hashing to its name."""
    h, codec = split(name)
    try:
        plain = data if codec is None else decode(codec, data, need)
    except DecodeError as exc:
        raise CheckpointIntegrityError(key=key, reason="blob %s: %s" % (name, exc)) from None
    if len(plain) < need:
        raise CheckpointIntegrityError(
            key=key,
            reason="blob %s holds %d bytes, the manifest needs %d" % (name, len(plain), need),
        )
    if digest(plain) != h:
        raise CheckpointIntegrityError(
            key=key, reason="blob %s in the local tier does not hash to its name" % name
        )


class _Mismatch(Exception):
    """A tier blob hashed, in the kernel copy, to another name than its own."""


class _Copier:
    """Copies blobs from the tier to the flow store, crediting them to the store's lease."""

    def __init__(self, tier: CheckpointStore, remote: CheckpointStore, key: str, abort: Abort):
        self.tier, self.remote, self.key, self.abort = tier, remote, key, abort
        self.writer: BlobWriter = remote.writer  # the store's one writer session per process
        self.confirmed: set[str] = set()
        self.blobs = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def check_abort(self) -> None:
        why = self.abort() if self.abort is not None else None
        if why is not None:
            raise UploadAbandoned(key=self.key, reason=why)

    def _missing(self, name: str) -> CheckpointIncomplete:
        return CheckpointIncomplete(
            key=self.key, url=self.tier.url, reason="blob %s is missing" % name
        )

    def _ingest(self, name: str, need: int) -> Optional[int]:
        """Copy a plain blob in the kernel when the flow's store is a local directory too
        (:meth:`.Storage.ingest_range`, ~4x faster than through Python), checked against its
        name before it is renamed into place; the bytes stored (0: it was there already), or
        None when there is no such path."""
        src = self.tier.storage.local_path(blob_key(name))
        if split(name)[1] is not None or src is None:
            return None
        try:
            size = os.stat(src).st_size
        except FileNotFoundError:
            raise self._missing(name) from None
        if size < need:
            raise CheckpointIntegrityError(
                key=self.key,
                reason="blob %s holds %d bytes, the manifest needs %d" % (name, size, need),
            )

        def key_for(h: str) -> str:
            if h != name:
                raise _Mismatch()
            return blob_key(h)

        try:
            done = self.remote.storage.ingest_range(src, 0, size, digest, key_for)
        except _Mismatch:
            raise CheckpointIntegrityError(
                key=self.key, reason="blob %s in the local tier does not hash to its name" % name
            ) from None
        except OSError as exc:
            raise StorageError(
                "Copying blob %s into %s failed: %s" % (name, self.remote.url, exc),
                key=self.key,
                url=self.remote.url,
            ) from exc
        if done is None:
            return None
        return size if done[1] else 0

    def copy(self, needs: dict[str, int], check_first: bool = True) -> None:
        """Make every blob of ``needs`` stored in the flow store (in parallel, bounded)."""
        opts = self.remote.options

        def one(name: str) -> None:
            self.check_abort()
            session = self.writer.lease.current  # before the put: the blob is younger
            bkey = blob_key(name)
            if check_first and self.remote.storage.exists(bkey):
                with self._lock:
                    self.confirmed.add(name)
                return
            moved = self._ingest(name, needs[name])
            if moved is None:
                try:
                    data = self.tier.storage.get_bytes(bkey)
                except StorageNotFound:
                    raise self._missing(name) from None
                _check(self.key, name, data, needs[name])
                self.remote.storage.put_bytes(bkey, data)
                moved = len(data)
            if moved:
                self.writer.lease.credit(session, name)
            with self._lock:
                self.confirmed.add(name)
                self.blobs += 1 if moved else 0
                self.bytes += moved

        jobs = (lambda n=n: one(n) for n in sorted(needs))
        _run_bounded(jobs, opts.workers, opts.inflight or opts.workers)


def upload(
    tier: CheckpointStore,
    remote: CheckpointStore,
    key: str,
    *,
    abort: Optional[Abort] = None,
) -> Uploaded:
    """Upload the tier's checkpoint ``key`` to the flow's store ``remote``, under the same key
    with the identical manifest.  Idempotent: a key already in ``remote`` moves nothing.

    ``abort()``, asked before each blob and before the commit, returning a reason stops the
    upload (:class:`UploadAbandoned`); nothing is committed then.

    Raises
    ------
    CheckpointNotFound
        No checkpoint ``key`` in the tier.
    CheckpointIntegrityError
        A tier blob does not match its hash (nothing committed).
    CheckpointIncomplete
        A blob the manifest needs is missing from the tier (nothing committed).
    StorageError
        A store failed after its bounded retries (nothing committed).
    UploadAbandoned
        ``abort()`` gave a reason.
    """
    mf.parse_key(key)
    try:
        data = tier.storage.get_bytes(key)
    except StorageNotFound as exc:
        raise CheckpointNotFound(
            "No checkpoint with key %s in the local tier %s." % (key, tier.url),
            key=key,
            url=tier.url,
        ) from exc
    manifest = mf.loads(data, key)
    if remote.storage.exists(key):
        return Uploaded(key, manifest, 0, 0, True)
    needs = _needs(manifest)
    copier = _Copier(tier, remote, key, abort)
    writer = copier.writer
    ticket = writer.lease.begin_save()
    try:
        copier.copy(needs)
        workers = remote.options.workers
        for _ in range(SETTLE_ROUNDS):
            missing = writer.lease.settle(
                ticket, needs, copier.confirmed, lambda hs: _absent(remote.storage, hs, workers)
            )
            if not missing:
                break
            # A collection removed blobs this upload relied on: copy them again.
            writer.forget(missing)
            copier.copy({h: needs[h] for h in missing}, check_first=False)
        else:
            raise StorageError(
                "Blobs the upload of %s needs kept disappearing from %s while it committed (%d "
                "rounds of copying them again); nothing was committed."
                % (key, remote.url, SETTLE_ROUNDS),
                key=key,
                url=remote.url,
            )
        copier.check_abort()
        remote.storage.put_bytes(key, data)
        if writer.lease.lapsed_since(ticket):
            _repair_after_lapse(copier, needs)
        writer.vouch(key, needs)
    finally:
        writer.lease.end_save(ticket)
    return Uploaded(key, manifest, copier.blobs, copier.bytes, False)


def _repair_after_lapse(copier: _Copier, needs: dict[str, int]) -> None:
    """The lease lapsed between the settle and the commit: GC may have removed blobs the
    manifest just written references.  Copy again what is gone, or withdraw the manifest."""
    remote = copier.remote
    try:
        missing = _absent(remote.storage, sorted(needs), remote.options.workers)
        if missing:
            copier.writer.forget(missing)
            copier.copy({h: needs[h] for h in missing}, check_first=False)
            if _absent(remote.storage, missing, remote.options.workers):
                raise StorageError("blobs are still missing")
    except Exception as exc:
        remote.storage.delete(copier.key)
        raise StorageError(
            "The upload of %s was paused for longer than its lease allows just before its "
            "commit, and blobs it needs could not be restored (%s); the checkpoint was withdrawn "
            "from %s. Upload it again." % (copier.key, exc, remote.url),
            key=copier.key,
            url=remote.url,
        ) from exc
