"""Writing a pack (many small files in one blob) into a local store's staged file.

:func:`stream_pack` reads the members into one 1 MiB staging buffer, hashes each member and
the pack from there and writes the buffer out: every byte is read from memory once.  Where
the store's filesystem clones from the members' (XFS, btrfs; :func:`pack_clones`),
:func:`copy_pack` copies them in the kernel instead, which shares their blocks, and the
caller hashes the staged pack through a mapping.  Every member is checked, by one ``fstat``
on the descriptor read from, to be the file the scan saw (:mod:`.scan`).
"""

from __future__ import annotations

import errno
import os
from typing import Optional

from ..storage.clone import clone_capable, clone_range
from ..storage.oscopy import (
    PIECE,
    UNSUPPORTED_COPY,
    Hasher,
    copy_range,
    piece_buffer,
    write_all,
)
from .scan import _check_unchanged, _File, _read_into, _unreadable
from .transfer import digest

#: ``(file, offset in the pack, size)``, in pack order, contiguous.
Members = list[tuple[_File, int, int]]

#: copy_file_range errnos that only the side written can cause: a full, over-quota or
#: read-only store, never the user's source file.
_STORE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)

#: Members up to this size are staged through memory by :func:`copy_pack`, at most
#: ``PIECE`` bytes of them at a time.
_TINY = 64 << 10


def _fingerprint(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _open(f: _File) -> int:
    try:
        return os.open(f.abs, os.O_RDONLY)
    except OSError as exc:
        raise _unreadable(f.abs, exc, "file") from exc


def pack_clones(members: Members, fd: int) -> bool:
    """Whether ``fd``'s filesystem clones from the members' (learnt once per pair of
    devices, by cloning the first member :func:`copy_pack` would copy in the kernel)."""
    for f, start, size in members:
        if size <= _TINY:
            continue
        try:
            src = os.open(f.abs, os.O_RDONLY)
        except OSError:
            return False  # stream_pack names the file
        try:
            return clone_capable(src, fd) and clone_range(src, fd, 0, size, start, size) > 0
        finally:
            os.close(src)
    return False


class StagedPack:
    """One pack for :meth:`.BlobWriter.put_filled`: ``fill`` writes it into the staged file,
    ``digest_of`` hashes it from there when ``fill`` did not; then ``own`` holds each member's
    digest, in order."""

    def __init__(self, members: Members):
        self.members = members
        self.own: list[str] = []

    def fill(self, fd: int) -> Optional[str]:
        if pack_clones(self.members, fd):
            copy_pack(self.members, fd)
            return None  # hashed through a mapping: digest_of
        h, self.own = stream_pack(self.members, fd)
        return h

    def digest_of(self, view: memoryview) -> str:
        with memoryview(view) as whole:
            own = []
            for _f, start, size in self.members:
                with whole[start : start + size] as part:
                    own.append(digest(part))
            self.own = own
            return digest(whole)


def stream_pack(members: Members, fd: int) -> tuple[str, list[str]]:
    """Write the members into ``fd`` at their offsets through one staging buffer, hashing each
    member and the pack from it; return the pack's digest and each member's, in order."""
    stage = piece_buffer()
    pack = digest.new()
    own: list[str] = []
    staged = 0
    stage_at = members[0][1] if members else 0

    def flush() -> None:
        pack.update(stage[:staged])
        write_all(fd, stage[:staged], stage_at)

    for f, start, size in members:
        if staged and staged + size > PIECE:
            flush()
            staged = 0
        if not staged:
            stage_at = start
        if size > PIECE:  # only with a small-file size above 1 MiB
            own.append(_stream_member(f, fd, start, pack))
            continue
        _read_into(f, 0, stage[staged : staged + size])
        own.append(digest(stage[staged : staged + size]))
        staged += size
    if staged:
        flush()
    return pack.hexdigest(), own


def _stream_member(f: _File, fd: int, pos: int, pack: Hasher) -> str:
    """:func:`stream_pack` for a member larger than the buffer: piece by piece."""
    stage = piece_buffer()
    own = digest.new()
    src = _open(f)
    try:
        done = 0
        while done < f.size:
            try:
                n = os.preadv(src, [stage[: min(PIECE, f.size - done)]], done)
                st = os.fstat(src) if n == 0 else None
            except OSError as exc:
                raise _unreadable(f.abs, exc, "file") from exc
            if st is not None:
                _check_unchanged(f, st, ended_early=True)  # raises: the file shrank
            own.update(stage[:n])
            pack.update(stage[:n])
            write_all(fd, stage[:n], pos + done)  # an OSError here is the store's
            done += n
        try:
            st = os.fstat(src)
        except OSError as exc:
            raise _unreadable(f.abs, exc, "file") from exc
    finally:
        os.close(src)
    if _fingerprint(st) != f.fingerprint:
        _check_unchanged(f, st)
    return own.hexdigest()


def copy_pack(members: Members, fd: int) -> None:
    """Write each member into ``fd`` at its offset, each file checked as it is read.  Larger
    members are copied in the kernel (:func:`_copy_member`); tiny ones are read into one
    small staging buffer written with one ``pwrite`` per MiB: ``copy_file_range`` costs more
    than a read and a share of one write for them."""
    stage = memoryview(bytearray(PIECE + _TINY))
    staged = 0
    stage_at = 0
    for f, start, size in members:
        if size > _TINY:
            _copy_member(f, fd, start)
            continue
        if staged and stage_at + staged != start or staged + size > len(stage):
            write_all(fd, stage[:staged], stage_at)
            staged = 0
        if not staged:
            stage_at = start
        _read_into(f, 0, stage[staged : staged + size])
        staged += size
    if staged:
        write_all(fd, stage[:staged], stage_at)


def _copy_member(f: _File, fd: int, pos: int) -> None:
    """Copy all of ``f`` into ``fd`` at ``pos`` in the kernel; fail if ``f`` is no longer the
    file :func:`.scan.scan` saw (one ``fstat`` after the copy, on the descriptor copied from).

    An ``OSError`` of :data:`.oscopy.UNSUPPORTED_COPY` propagates as is (the caller falls back
    to reading through memory), and so does one of :data:`_STORE_ERRNOS`: ``copy_file_range``
    does not say which side failed, and those are the destination's (the store is full)."""
    src = _open(f)
    ended_early = False
    try:
        try:
            copy_range(src, fd, f.size, 0, pos, what=f.abs)
        except OSError as exc:
            if exc.errno in UNSUPPORTED_COPY or exc.errno in _STORE_ERRNOS:
                raise  # the caller falls back / names the store (BlobWriter.put_filled)
            if exc.errno != errno.EIO:
                raise _unreadable(f.abs, exc, "file") from exc
            ended_early = True  # copy_range's "ended early": the file shrank
        st = os.fstat(src)
    finally:
        os.close(src)
    if ended_early or _fingerprint(st) != f.fingerprint:
        _check_unchanged(f, st, ended_early=ended_early)
