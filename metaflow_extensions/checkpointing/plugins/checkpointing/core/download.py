"""Load: blobs -> verified files.

Load fetches each blob once, verifies its hash (fetching again once on a mismatch: a flip in
transit is not corruption at rest), writes its slices into temp files beside their final
names, and renames every file into place only when all of them are complete.  Into a new
directory (``fresh``: :mod:`.loading`'s staging directory, renamed once by the caller), files
are written under their final names instead.

What a load guarantees (docs/concepts.md, "What is saved"):

* every conflict with what the destination already holds (a file where the checkpoint has a
  directory, a directory where it has a file) is found before anything is changed; a failure
  later (disk full) undoes the renames already done, so a load applies completely or not at all;
* temp names are short (``.mfckpt-part-<token>-<n>``, never the final name plus a suffix), so
  file names up to the filesystem's limit load; :func:`.tempnames.is_temp_name` knows them, so a
  save never picks up the leftovers of a killed load, and the next load into the same directory
  removes them (a lock file held by each load tells dead leftovers from a running load's);
* all-zero blocks are not written: sparse files stay sparse;
* modes are restored within ``0o777`` (no setuid, setgid or sticky bit);
* the destination filesystem failing (full, over quota, read-only) is a ``StorageError``
  naming the path.

This module fetches, verifies and writes the bytes; from a local store, :mod:`.download_local`
(a blob's mapping; large files' chunks cloned into place where the filesystem can:
:mod:`..storage.clone`); looking at the destination, temp names, locks, hole-preserving writes
and the final renames are :mod:`.destination`.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

from ..errors import CheckpointIncomplete, CheckpointIntegrityError, StorageNotFound
from ..storage.base import Storage
from .codec import DecodeError, decode, require, split
from .destination import Job, commit_renames, mode_of, plan, target_path
from .download_local import _check_slice, _fetch_local, _place, _Use
from .layout import blob_key
from .load_locks import Lock, remove_dead_staging, remove_leftovers, unlink_quietly
from .manifest import Manifest
from .transfer import Progress, TransferOptions, _no_progress, _run_bounded, digest
from .uninterrupted import deferred_signals


# ---------------------------------------------------------------------------------------- load
def blob_end(manifest: Manifest, blob: str) -> int:
    """The plain length of ``blob`` that ``manifest`` needs: the end of its last slice (a save
    references every byte of each blob it writes)."""
    return max(
        (c.offset + c.length for f in manifest.files for c in f.chunks if c.blob == blob), default=0
    )


def _fetch_verified(
    storage: Storage, manifest: Manifest, blob: str, what: str, expected: int
) -> bytes:
    """The plain bytes of the stored blob ``blob``, decoded (:mod:`.codec`, never more than the
    ``expected`` bytes the manifest needs) and checked against its hash; fetched once more on a
    mismatch."""
    key = blob_key(blob)
    h, codec = split(blob)
    problem = "does not match its BLAKE3 hash"
    for _attempt in (0, 1):  # a flip in transit is not corruption at rest: fetch once more
        try:
            data = storage.get_bytes(key)
        except StorageNotFound as exc:
            raise CheckpointIncomplete(
                "Checkpoint %s is incomplete: blob %s (data of %s) is missing from %s."
                % (manifest.key, blob, what, storage.url),
                key=manifest.key,
                path=what,
                url=storage.url,
                reason="blob %s is missing" % blob,
            ) from exc
        if codec is not None:
            try:
                data = decode(codec, data, expected)
            except DecodeError as exc:
                problem = "is not a valid %s object: %s" % (codec, exc)
                del data  # the second fetch must not hold the first
                continue  # as a hash mismatch: fetch once more, then report it
            problem = "decompresses to bytes that do not match its BLAKE3 hash"
        if digest(data) == h:
            return data
        del data  # the second fetch must not hold the first (a compressed blob's plain bytes)
    raise CheckpointIntegrityError(
        "Checkpoint %s: file %s failed verification (blob %s %s). The stored data is corrupt; "
        "load another checkpoint." % (manifest.key, what, blob, problem),
        key=manifest.key,
        path=what,
        reason="blob %s %s" % (blob, problem),
    )


# ---------------------------------------------------------------------------------- download
def download_tree(
    storage: Storage,
    manifest: Manifest,
    dest: str,
    opts: TransferOptions,
    progress: Optional[Progress] = None,
    fresh: bool = False,
) -> int:
    """Materialise ``manifest`` under the directory ``dest``; return bytes written.

    Files are written to temp names (``fresh``: final names, see below) and renamed into place
    only after every blob has been fetched and verified; anything in ``dest`` in the way is
    reported before any change, and a failure while renaming restores what was replaced. So a
    load applies completely or not at all. Files already in ``dest`` that the checkpoint does
    not have are left alone. With ``fresh``, ``dest`` is an empty directory the caller made for
    this load alone and renames into place afterwards (:mod:`.loading`'s staging directory):
    files are written at their final names, each created exclusively, without temp names and
    renames (a ``dest`` that is not empty is loaded into as without ``fresh``).

    Raises
    ------
    CheckpointConfigError
        ``dest`` is a file, or has a file where the checkpoint has a directory (or the reverse).
    StorageError
        Writing ``dest`` failed (disk full, quota, permissions); the message names the path.
    """
    progress = progress or _no_progress
    # Validate every target and look at the destination before touching it.
    if fresh:  # only an empty directory is: anything in it is loaded into as usual
        try:
            with os.scandir(dest) as it:
                fresh = next(it, None) is None
        except OSError:
            fresh = False
    resolved: dict = {}
    links = not fresh  # a fresh directory holds no links to look for
    dirs = [target_path(dest, d, resolved, links) for d in manifest.dirs]
    finals = [target_path(dest, entry.path, resolved, links) for entry in manifest.files]
    modes = [mode_of(manifest, entry) for entry in manifest.files]
    job = Job(manifest, dest, finals, fresh=fresh, modes=modes)
    plan(job, dirs)

    made: list[str] = []
    lock: Optional[Lock] = None
    created: list[str] = []  # temps that may exist
    done = False
    try:
        current = dest
        try:
            for current in job.make:
                os.makedirs(current, exist_ok=True)
                made.append(current)
            current = dest
            with deferred_signals():  # a signal between its creation and here left it for good
                lock = Lock(dest, job.token)
        except OSError as exc:
            raise job.write_error(exc, path=current) from exc
        remove_leftovers(dest, job.token, job.leftovers)

        by_blob: dict[str, list[_Use]] = {}
        first_use: dict[str, tuple[int, int]] = {}  # blob -> (its chunk's index, file index)
        for i, entry in enumerate(manifest.files):
            created.append(job.temps[i])
            # A file of one slice (most; every small one) is created by the worker holding its
            # bytes; only multi-chunk and empty files are created (sized, all holes) up front.
            if len(entry.chunks) != 1:
                try:
                    fd = job.open_file(i, os.O_TRUNC)
                    try:
                        if entry.size:
                            os.ftruncate(fd, entry.size)
                    finally:
                        os.close(fd)
                except OSError as exc:
                    raise job.write_error(exc, i) from exc
            pos = 0
            for k, c in enumerate(entry.chunks):
                by_blob.setdefault(c.blob, []).append((i, pos, c))
                first_use.setdefault(c.blob, (k, i))
                pos += c.length

        written = [0]
        counter = threading.Lock()

        def fetch(blob: str, uses: list[_Use]) -> None:
            if _fetch_local(storage, manifest, blob, uses, job):
                n = sum(use[2].length for use in uses)
                with counter:
                    written[0] += n
                progress(n)
                return
            end = max(c.offset + c.length for _i, _p, c in uses)  # every use of it: all of it
            data = _fetch_verified(storage, manifest, blob, manifest.files[uses[0][0]].path, end)
            view = memoryview(data)
            for i, _pos, c in uses:  # hashed before the directory lock is taken
                piece = view[c.offset : c.offset + c.length]
                _check_slice(manifest, blob, manifest.files[i], piece, c.length)
            with job.hold() as hold:
                for i, file_pos, c in uses:
                    piece = view[c.offset : c.offset + c.length]
                    try:
                        _place(job, i, file_pos, piece, c.length < len(view), hold)
                    except OSError as exc:
                        raise job.write_error(exc, i) from exc
            n = sum(c.length for _i, _p, c in uses)
            with counter:
                written[0] += n
            progress(n)

        for codec in {split(b)[1] for b in by_blob if "." in b}:
            require(codec)  # a missing package fails before any blob is fetched
        # Every file's first chunk, then every second one...: workers that start together write
        # different files.  Writes into one file serialise on its inode lock, where the waiting
        # workers spin while the holder runs and take the core another would hash on (5.6% of
        # the CPU of a load of 16 x 64 MiB in file order, gone in this one).
        order = sorted(by_blob, key=first_use.__getitem__)
        jobs = (lambda b=b: fetch(b, by_blob[b]) for b in order)
        _run_bounded(jobs, opts.workers, opts.inflight)
        commit_renames(job)
        done = True
        return written[0]
    finally:
        with deferred_signals():  # a signal here would leave temp files and no lock for them
            if not done:
                job.stuck |= not all([unlink_quietly(tmp) for tmp in created])
            if lock is not None:
                lock.release(keep=job.stuck)
            if not done:
                for d in reversed(made):  # only directories this load created, if still empty
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass


__all__ = ["download_tree", "remove_dead_staging", "target_path"]
