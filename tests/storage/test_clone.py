"""Reflink clone primitives on real filesystems: loop-mounted XFS and btrfs, ext4 and tmpfs."""

from __future__ import annotations

import os
from pathlib import Path

from metaflow_extensions.checkpointing.plugins.checkpointing.storage import clone

MIB = 1 << 20


def _pair(d: Path, data: bytes, dest_size: int = 0) -> tuple[int, int]:
    (d / "src").write_bytes(data)
    src = os.open(d / "src", os.O_RDONLY)
    dst = os.open(d / "dst", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(dst, dest_size)
    return src, dst


def _clone(d: Path, data: bytes, src_off=0, length=None, dst_off=0, dest_size=0) -> int:
    src, dst = _pair(d, data, dest_size)
    try:
        length = len(data) - src_off if length is None else length
        return clone.clone_range(src, dst, src_off, length, dst_off, len(data))
    finally:
        os.close(src)
        os.close(dst)


def _clones_nothing(src: int, dst: int) -> None:
    """A 1 MiB clone between the two descriptors (then closed) returns 0, and the pair of
    devices is remembered as unable to clone."""
    try:
        assert clone.clone_range(src, dst, 0, MIB, 0, MIB) == 0
        assert not clone.clone_capable(src, dst)
    finally:
        os.close(src)
        os.close(dst)


def test_a_clone_shares_blocks_and_a_write_changes_only_the_clone(reflink_dir):
    """The whole file, its unaligned last block included, is shared; writing the clone
    leaves the source as it was (copy-on-write)."""
    data = os.urandom(2 * MIB + 100)
    assert _clone(reflink_dir, data) == len(data)
    assert (reflink_dir / "dst").read_bytes() == data
    assert clone.shared_bytes(str(reflink_dir / "dst")) >= len(data)
    with open(reflink_dir / "dst", "r+b") as f:
        f.seek(MIB)
        f.write(b"changed")
    assert (reflink_dir / "src").read_bytes() == data
    assert (reflink_dir / "dst").read_bytes()[MIB : MIB + 7] == b"changed"


def test_a_range_clones_into_place_in_a_larger_file(reflink_dir):
    """An aligned chunk lands at its offset in a pre-sized file; the rest stays a hole."""
    data = os.urandom(MIB)
    assert _clone(reflink_dir, data, dst_off=MIB, dest_size=4 * MIB) == MIB
    got = (reflink_dir / "dst").read_bytes()
    assert got[MIB : 2 * MIB] == data and got[:MIB] == bytes(MIB) and len(got) == 4 * MIB


def test_an_unaligned_tail_in_the_middle_is_cloned_to_the_last_whole_block(reflink_dir):
    """A filesystem refuses a partial block inside the destination: the aligned part is cloned
    and its length returned, so the caller copies only the tail."""
    data = os.urandom(MIB + 100)
    assert _clone(reflink_dir, data, dest_size=4 * MIB) == MIB


def test_unaligned_offsets_clone_nothing(reflink_dir):
    data = os.urandom(MIB)
    assert _clone(reflink_dir, data, src_off=100) == 0
    assert _clone(reflink_dir, data, dst_off=100, dest_size=2 * MIB) == 0
    assert clone.shared_bytes(str(reflink_dir / "dst")) == 0


def test_filesystems_without_reflink_clone_nothing_and_are_remembered(tmp_path, monkeypatch):
    """ext4 (the regular temp directory) and tmpfs cannot clone: 0, and the pair of devices
    is not tried again in this process."""
    monkeypatch.setattr(clone, "_capable", {})
    for base in (tmp_path, Path("/dev/shm")):
        d = base / ("clone-%d" % os.getpid()) if base != tmp_path else tmp_path
        d.mkdir(exist_ok=True)
        _clones_nothing(*_pair(d, os.urandom(MIB)))
        assert clone.shared_bytes(str(d / "dst")) == 0
        if d != tmp_path:
            for name in ("src", "dst"):
                (d / name).unlink()
            d.rmdir()


def test_two_filesystems_clone_nothing(reflink_mounts, tmp_path, monkeypatch):
    """A source on XFS and a destination on ext4 (EXDEV): 0, copied by the caller."""
    monkeypatch.setattr(clone, "_capable", {})
    d = reflink_mounts["xfs"] / tmp_path.name
    d.mkdir()
    (d / "src").write_bytes(os.urandom(MIB))
    src = os.open(d / "src", os.O_RDONLY)
    _clones_nothing(src, os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT, 0o600))


def test_cloning_turned_off_clones_nothing(reflink_dir, monkeypatch):
    monkeypatch.setattr(clone, "_enabled", True)
    clone.set_enabled(False)
    assert _clone(reflink_dir, os.urandom(MIB)) == 0
    clone.set_enabled(True)
    assert _clone(reflink_dir, os.urandom(MIB)) == MIB


def test_shared_bytes_of_a_plain_copy_is_zero(reflink_dir):
    data = os.urandom(MIB)
    (reflink_dir / "a").write_bytes(data)
    (reflink_dir / "b").write_bytes(data)
    assert clone.shared_bytes(str(reflink_dir / "b")) == 0
