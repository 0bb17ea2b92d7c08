"""Real directory trees are saved and loaded exactly, or fail with an error naming the path.

Symlinked directories that alias saved content are kept (cycles are cut), what cannot be read
or changes while it is read is an error, names up to 255 bytes and sparse files load, modes
stay within 0o777, forced loads apply completely or not at all, killed loads leave nothing a
save picks up, and a full disk is a ``StorageError``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from tiny_fs import tiny_filesystem
from unprivileged import run_unprivileged, world_tmpdir

from metaflow_extensions.checkpointing.plugins.checkpointing.core.scan import scan
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.tempnames import is_temp_name
from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import SaveStats
from metaflow_extensions.checkpointing.plugins.checkpointing.core.upload import (
    BlobWriter,
    upload_tree,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    ManifestError,
    StorageError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage

from .helpers import (
    CHUNK,
    SMALL,
    blob_keys,
    files_under,
    make_scope,
    options,
    rand,
    snapshot,
    write_tree,
)

KIB = 1024
MIB = 1024 * KIB


def saved_paths(store: CheckpointStore, src: Path) -> tuple[list, list]:
    """Save ``src``; return the (file paths, empty dirs) its manifest lists."""
    m = store.read(store.save(str(src), make_scope()).key)
    return sorted(f.path for f in m.files), sorted(m.dirs)


def roundtrip(store: CheckpointStore, src: Path, dest: Path):
    m = store.read(store.save(str(src), make_scope()).key)
    store.load(m, str(dest))
    return m


def all_names(root: Path) -> list:
    """Every entry under ``root`` (files, dirs, links), hidden ones included."""
    out = []
    for d, dirs, fs in os.walk(root):
        for n in dirs + fs:
            out.append(os.path.relpath(os.path.join(d, n), root))
    return sorted(out)


# ------------------------------------------------------------------------------ symlinks
def test_a_directory_symlink_alias_is_saved_as_a_copy_for_free(any_store, tmp_path):
    """``latest -> checkpoint-1000/`` (HF/Lightning trees) loads as a real directory with the
    same files; the alias uploads nothing more (its blobs deduplicate)."""
    weights = rand(3 * CHUNK + 5, 1)
    src = write_tree(
        tmp_path / "src",
        {"checkpoint-1000/model.bin": weights, "checkpoint-1000/config.json": b"{}"},
    )
    os.symlink("checkpoint-1000", src / "latest")
    os.symlink("checkpoint-1000/config.json", src / "config.json")  # a file link: its content
    m = roundtrip(any_store, src, tmp_path / "dest")
    dest = tmp_path / "dest"
    assert files_under(dest) == [
        "checkpoint-1000/config.json",
        "checkpoint-1000/model.bin",
        "config.json",
        "latest/config.json",
        "latest/model.bin",
    ]
    # Loaded checkpoints hold only regular files and directories.
    assert not (dest / "latest").is_symlink() and not (dest / "config.json").is_symlink()
    assert (dest / "latest" / "model.bin").read_bytes() == weights
    # The aliased files (same inode) are read once and stored once.
    assert sum(o.size for o in any_store.storage.list("blobs/")) == len(weights) + 2
    assert m.stats["bytes_read"] == len(weights) + 2
    assert m.stats["bytes_deduplicated"] == len(weights) + 2 * 2


def test_only_true_cycles_are_cut(store, tmp_path):
    """A link to a directory on its own walk path (itself or an ancestor) is cut; the same
    directory reached through a sibling link is an alias and is kept."""
    src = write_tree(tmp_path / "src", {"a/f.txt": b"f", "a/b/g.txt": b"g"})
    os.symlink("../..", src / "a" / "b" / "up")  # -> src: a cycle from anywhere below it
    os.symlink(".", src / "a" / "self")  # -> a itself
    os.symlink("a", src / "alias")  # -> a, not an ancestor of alias: kept
    files, dirs = saved_paths(store, src)
    assert files == ["a/b/g.txt", "a/f.txt", "alias/b/g.txt", "alias/f.txt"]
    assert dirs == []


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: os.symlink("missing.bin", d / "dangling"), "symbolic link to 'missing.bin'"),
        (lambda d: os.symlink("loop", d / "loop"), "symbolic link loop"),
        (lambda d: os.symlink("b", d / "a") or os.symlink("a", d / "b"), "symbolic link loop"),
    ],
    ids=["dangling", "self-loop", "two-link-loop"],
)
def test_a_broken_symlink_is_an_error_naming_it_before_any_upload(
    memory, store, tmp_path, make, message
):
    """A dangling link or a link loop fails the save (cp -rL does too) instead of silently
    saving the tree without it; nothing is uploaded."""
    src = write_tree(tmp_path / "src", {"model.bin": rand(CHUNK, 2)})
    make(src)
    with pytest.raises(CheckpointConfigError, match=message) as err:
        store.save(str(src), make_scope())
    assert str(src) in str(err.value)
    assert blob_keys(memory) == set()


def test_a_backslash_in_a_name_is_refused_when_saving(memory, store, tmp_path):
    """No checkpoint path can hold a backslash (a separator on Windows): refused at save, naming
    the file, instead of committing a checkpoint that no load could read."""
    src = write_tree(tmp_path / "src", {"ok.txt": b"ok", "a\\b.txt": b"x"})
    with pytest.raises(CheckpointConfigError, match=r"a\\b\.txt: its name contains a backslash"):
        store.save(str(src), make_scope())
    assert blob_keys(memory) == set()


def test_sockets_and_fifos_are_skipped(store, tmp_path):
    """Special files hold no data: they are not saved (and reading a FIFO would hang)."""
    src = write_tree(tmp_path / "src", {"a.txt": b"a"})
    os.mkfifo(src / "pipe")
    assert saved_paths(store, src) == (["a.txt"], [])


# ------------------------------------------------------------------------------ unreadable
def _save_as_nobody(src: str, store_dir: str) -> str:
    """Save ``src`` (to a local store at ``store_dir``, or memory if empty); return the error."""
    storage = LocalStorage(store_dir) if store_dir else MemoryStorage()
    try:
        CheckpointStore(storage, options()).save(src, make_scope())
    except CheckpointConfigError as exc:
        return "CheckpointConfigError: %s" % exc
    except Exception as exc:  # noqa: BLE001 - reported to the test as text
        return "%s: %s" % (type(exc).__name__, exc)
    return "saved"


@pytest.mark.parametrize(
    "target, mode, culprit",
    [
        ("sub", 0o000, "sub"),  # cannot list
        ("sub", 0o644, "sub"),  # can list, cannot enter (no x bit)
        ("sub/w.bin", 0o000, "sub/w.bin"),  # a small file: read through memory
        ("big.bin", 0o000, "big.bin"),  # a multi-chunk file: the local store's in-kernel path
    ],
    ids=["dir-000", "dir-no-x", "small-file", "large-file"],
)
@pytest.mark.parametrize("backend", ["memory", "local"])
def test_an_unreadable_directory_or_file_is_an_error_naming_it(target, mode, culprit, backend):
    """Never a silent omission, never a raw OSError or a StorageError blaming the store: the
    message names the path and says what to do.  Runs as an unprivileged user (root reads all).
    """
    with world_tmpdir() as tmp:
        src = write_tree(
            Path(tmp) / "src",
            {"a.txt": b"a", "sub/w.bin": b"w" * 100, "big.bin": rand(3 * CHUNK, 3)},
        )
        os.chmod(src / target, mode)
        store_dir = os.path.join(tmp, "store") if backend == "local" else ""
        result = run_unprivileged(_save_as_nobody, str(src), store_dir)
        os.chmod(src / target, 0o755)
    assert result.startswith("CheckpointConfigError: "), result
    assert "%s: permission denied" % (src / culprit) in result, result
    assert "chmod" in result


# ------------------------------------------------------------------------------ changing files
def _change(path: Path, how: str) -> None:
    st = os.stat(path)
    if how == "grow":
        with open(path, "ab") as f:
            f.write(b"more")
    elif how == "shrink":
        os.truncate(path, st.st_size - 1)
    elif how == "rewrite":  # same size, new bytes, an mtime that differs for sure
        path.write_bytes(rand(st.st_size, 99))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    elif how == "replace":  # another file renamed over it, same size and mtime
        other = path.with_name("other")
        other.write_bytes(rand(st.st_size, 98))
        os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(other, path)


@pytest.mark.parametrize("how", ["grow", "shrink", "rewrite", "replace"])
@pytest.mark.parametrize("size", [SMALL // 2, 3 * CHUNK + 7], ids=["packed", "chunked"])
@pytest.mark.parametrize("backend", ["memory", "local"])
def test_a_file_that_changes_between_scan_and_read_fails_the_save(tmp_path, how, size, backend):
    """Checked when the file has been read (one fstat, or one stat after the local store's
    in-kernel copy): growing, shrinking, rewriting or replacing it is a clear error."""
    storage = MemoryStorage() if backend == "memory" else LocalStorage(str(tmp_path / "store"))
    src = write_tree(tmp_path / "src", {"a.bin": rand(size, 1), "b.txt": b"b"})
    files, _dirs, _kind = scan(str(src))
    _change(src / "a.bin", how)
    with pytest.raises(CheckpointConfigError, match=r"a\.bin changed while save\(\) was reading"):
        upload_tree(files, BlobWriter(storage), options(), SaveStats())


def test_a_file_written_during_a_real_save_fails_it(any_store, tmp_path):
    """A training loop still appending to a log while save() reads it: the save fails instead
    of committing a torn copy."""
    src = write_tree(tmp_path / "src", {"log.bin": rand(8 * CHUNK, 4), "w.bin": rand(CHUNK, 5)})
    stop = threading.Event()
    started = threading.Event()

    def append() -> None:
        with open(src / "log.bin", "ab") as f:
            while not stop.is_set():
                f.write(b"x" * 512)
                f.flush()
                started.set()

    writer = threading.Thread(target=append)
    writer.start()
    try:
        started.wait(10)
        # A save that no write overlapped is a consistent copy and may commit; on a busy
        # machine the writer can be descheduled for a whole save, so allow a few tries.
        for _ in range(20):
            try:
                any_store.save(str(src), make_scope())
            except CheckpointConfigError as exc:
                assert "log.bin changed while save() was reading it (it grew" in str(exc)
                break
        else:
            pytest.fail("20 saves beside a writer never saw log.bin change")
    finally:
        stop.set()
        writer.join()


def test_a_file_deleted_while_scanning_is_named(store, tmp_path):
    src = write_tree(tmp_path / "src", {"a.bin": rand(100, 1)})
    files, _dirs, _kind = scan(str(src))
    os.unlink(src / "a.bin")
    with pytest.raises(CheckpointConfigError, match=r"a\.bin disappeared while save\(\)"):
        upload_tree(files, BlobWriter(MemoryStorage()), options(), SaveStats())


# ------------------------------------------------------------------------------ names, holes, modes
def test_names_up_to_255_bytes_load(any_store, tmp_path):
    """Temp names are short, so a name at the filesystem's limit loads (it used to get a
    suffix and fail with ENAMETOOLONG)."""
    ascii_name = "n" * 255
    utf8_name = "é" * 127 + "x"  # 255 bytes in UTF-8
    assert len(utf8_name.encode()) == 255
    src = write_tree(
        tmp_path / "src",
        {
            ascii_name: b"a",
            utf8_name + "/" + ascii_name: rand(2 * CHUNK + 1, 6),
            "d/" + utf8_name: b"",
        },
    )
    roundtrip(any_store, src, tmp_path / "dest")
    assert snapshot(tmp_path / "dest") == snapshot(src)


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def _sparse(path: Path, size: int, data: dict) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, chunk in data.items():
            f.seek(offset)
            f.write(chunk)


def test_sparse_files_stay_sparse(any_store, tmp_path):
    """64 MiB with a few KiB of data loads with about as few blocks, on the generic path
    (memory store) and the in-kernel copy (local store); holes at the end included."""
    src = tmp_path / "src"
    src.mkdir()
    data = {0: rand(4 * KIB, 7), 40 * MIB + 123: rand(3 * KIB, 8), 64 * MIB - 4 * KIB: b"e" * 4096}
    _sparse(src / "disk.img", 64 * MIB, data)
    _sparse(src / "tail_hole.img", 8 * MIB, {0: b"head"})  # ends in a hole
    _sparse(src / "zeros.bin", 12 * KIB, {})  # a small, packed, all-zero file
    assert _allocated(src / "disk.img") < 1 * MIB  # the filesystem keeps holes
    dest = tmp_path / "dest"
    roundtrip(any_store, src, dest)
    for name in ("disk.img", "tail_hole.img", "zeros.bin"):
        assert (dest / name).stat().st_size == (src / name).stat().st_size
        assert (dest / name).read_bytes() == (src / name).read_bytes()
    assert _allocated(dest / "disk.img") < 1 * MIB  # 64 MiB if the zeros were written
    assert _allocated(dest / "tail_hole.img") < 1 * MIB
    assert _allocated(dest / "zeros.bin") == 0


def test_modes_load_within_0o777(any_store, tmp_path):
    """Permission bits come back; setuid, setgid and sticky bits never do."""
    spec = {
        "suid": (b"1", 0o4755),
        "sgid": (b"2", 0o2750),
        "sticky": (b"3", 0o1640),
        "plain": (b"4", 0o640),
        "big": (rand(2 * CHUNK, 9), 0o6711),
    }
    src = write_tree(tmp_path / "src", spec)
    saved = {n: os.stat(src / n).st_mode & 0o7777 for n in spec}
    dest = tmp_path / "dest"
    roundtrip(any_store, src, dest)
    for name in spec:
        assert os.stat(dest / name).st_mode & 0o7777 == saved[name] & 0o777, name


@pytest.mark.parametrize("mode", [-1, 0o10000, 2**40])
def test_a_bogus_mode_is_a_manifest_error_before_anything_is_written(store, tmp_path, mode):
    src = write_tree(tmp_path / "src", {"a.txt": b"a", "b.txt": b"b"})
    m = store.read(store.save(str(src), make_scope()).key)
    m.files[1].mode = mode
    with pytest.raises(ManifestError, match="b.txt has the invalid mode"):
        store.load(m, str(tmp_path / "dest"))
    assert not (tmp_path / "dest").exists()


# ------------------------------------------------------------------------------ forced loads
@pytest.fixture
def named(tmp_path):
    """A client on a local root holding one checkpoint: a.txt, b/c.txt, d/e.bin (2 chunks)."""
    from metaflow import Checkpoint

    src = write_tree(
        tmp_path / "ckpt",
        {"a.txt": b"new a", "b/c.txt": b"new c", "d/e.bin": rand(20 * MIB, 10)},
    )
    client = Checkpoint(root=str(tmp_path / "store"))
    return client, client.save(str(src), name="trees").key, src


FILE_FOR_DIR = "is a file where the checkpoint has a directory"
DIR_FOR_FILE = "is a directory where the checkpoint has a file"


@pytest.mark.parametrize(
    "in_the_way, expected",
    [
        ({"b": b"a file"}, [("b", FILE_FOR_DIR)]),
        ({"d/e.bin/x": b"x"}, [("d/e.bin", DIR_FOR_FILE)]),
        ({"b": b"a file", "d/e.bin/x": b"x"}, [("b", FILE_FOR_DIR), ("d/e.bin", DIR_FOR_FILE)]),
    ],
    ids=["file-for-dir", "dir-for-file", "both"],
)
def test_a_forced_load_checks_every_conflict_before_changing_anything(
    named, tmp_path, in_the_way, expected
):
    """``load(..., force=True)`` into a directory where something is in the way names every
    such path and changes nothing (it used to replace some files, then fail half-way)."""
    client, key, _src = named
    dest = write_tree(tmp_path / "dest", {"a.txt": b"old a", "mine.txt": b"keep", **in_the_way})
    before = snapshot(dest)
    with pytest.raises(CheckpointConfigError) as err:
        client.load(key, str(dest), force=True)
    message = str(err.value)
    assert "%d path" % len(expected) in message and "Nothing was changed" in message
    for rel, what in expected:
        assert "%s %s" % (dest / rel, what) in message
    assert snapshot(dest) == before


def test_a_forced_load_replaces_same_named_files_and_keeps_others(named, tmp_path):
    client, key, src = named
    dest = write_tree(tmp_path / "dest", {"a.txt": b"old a", "mine.txt": b"keep", "b/z": b"z"})
    client.load(key, str(dest), force=True)
    assert (dest / "a.txt").read_bytes() == b"new a"
    assert (dest / "d" / "e.bin").read_bytes() == (src / "d" / "e.bin").read_bytes()
    assert files_under(dest) == ["a.txt", "b/c.txt", "b/z", "d/e.bin", "mine.txt"]


def _load_failing_in_d(root: str, key: str, dest: str) -> tuple:
    """As nobody: fill ``dest``, then force-load while ``dest/d`` turns read-only mid-load, so
    the rename of ``d/e.bin`` fails after ``a.txt`` and ``b/c.txt`` were renamed."""
    from metaflow import Checkpoint

    write_tree(Path(dest), {"a.txt": b"old a", "d/e.bin": b"old e", "mine.txt": b"keep"})
    before = snapshot(Path(dest))

    def lock_d(_n: int) -> None:
        os.chmod(os.path.join(dest, "d"), 0o555)

    try:
        Checkpoint(root=root).load(key, dest, force=True, progress=lock_d)
    except StorageError as exc:
        os.chmod(os.path.join(dest, "d"), 0o755)
        return str(exc), before, snapshot(Path(dest))
    return "loaded", before, snapshot(Path(dest))


def test_a_rename_failing_part_way_puts_back_what_was_replaced():
    """The renames are the last step; if one fails (here: a directory turned read-only), the
    files already renamed are put back, so the forced load changes nothing.  The part file it
    could not remove from the read-only directory is removed by the next load."""
    from metaflow import Checkpoint

    with world_tmpdir() as tmp:
        src = write_tree(Path(tmp) / "src", {"a.txt": b"new a", "b/c.txt": b"c", "d/e.bin": b"e"})
        client = Checkpoint(root=tmp + "/store")
        key = client.save(str(src), name="trees").key
        dest = Path(tmp) / "dest"
        error, before, after = run_unprivileged(_load_failing_in_d, tmp + "/store", key, str(dest))
        assert "failed writing %s" % (dest / "d" / "e.bin") in error, error
        assert "Permission denied" in error and "Nothing was changed" in error
        # All but the part file left in the read-only directory and the lock file kept to
        # mark it as a dead load's (temp names: never saved).
        extra = sorted(k for k in after if k not in before)
        assert len(extra) == 2 and all(is_temp_name(k.split("/")[-1]) for k in extra), extra
        assert extra[1].startswith("d/")
        assert {k: v for k, v in after.items() if k in before} == before
        client.load(key, str(dest), force=True)
        assert all_names(dest) == ["a.txt", "b", "b/c.txt", "d", "d/e.bin", "mine.txt"]


# ------------------------------------------------------------------------------ killed loads
_STALLED_LOAD = r"""
import os, sys, time
import metaflow  # noqa: F401
from metaflow import Checkpoint

root, key, dest, marker = sys.argv[1:]


def stall(n):
    # The first file is written but nothing renamed yet: tell the test, then hang.
    with open(marker, "a"):
        pass
    time.sleep(600)


Checkpoint(root=root).load(key, dest, force=True, progress=stall)
"""


@contextmanager
def stalled_load(named, dest: Path, tmp_path: Path):
    """A real process loading the checkpoint into ``dest``, stopped mid-way (files written
    under temp names, none renamed); yields the process, SIGKILLs it on exit."""
    client, key, _src = named
    marker = tmp_path / ("stalled-%d" % time.monotonic_ns())
    proc = subprocess.Popen(
        [sys.executable, "-c", _STALLED_LOAD, client._root, key, str(dest), str(marker)],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the load never started"
            time.sleep(0.01)
        yield proc
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


def test_a_killed_load_leaves_nothing_a_save_picks_up(named, tmp_path, store):
    """SIGKILL mid-load into an existing directory: its temp files are skipped by a save, left
    alone by a load running beside it, and removed by the next load once their owner died."""
    client, key, src = named
    dest = write_tree(tmp_path / "dest", {"mine.txt": b"keep"})
    with stalled_load(named, dest, tmp_path):
        leftovers = [n for n in all_names(dest) if is_temp_name(os.path.basename(n))]
        assert leftovers, all_names(dest)  # mid-way indeed
        # A second load beside the running one completes and leaves its files alone.
        client.load(key, str(dest), force=True)
        assert set(leftovers) <= set(all_names(dest))
    # The loader is dead now: a save sees exactly the user's files and the loaded ones.
    expected = ["a.txt", "b/c.txt", "d/e.bin", "mine.txt"]
    assert saved_paths(store, dest) == (expected, [])
    client.load(key, str(dest), force=True)  # removes the dead load's leftovers
    assert all_names(dest) == ["a.txt", "b", "b/c.txt", "d", "d/e.bin", "mine.txt"]


def test_a_killed_load_into_a_new_directory_leaves_nothing_a_save_picks_up(named, tmp_path, store):
    """A new target is downloaded into a staging directory beside it: a killed load's staging
    directory is skipped by saves of the parent and removed by the next load there."""
    client, key, _src = named
    parent = write_tree(tmp_path / "work", {"mine.txt": b"keep", "empty": None})
    with stalled_load(named, parent / "model", tmp_path):
        assert [n for n in os.listdir(parent) if is_temp_name(n)]
    assert saved_paths(store, parent) == (["mine.txt"], ["empty"])
    client.load(key, str(parent / "model"))
    assert sorted(os.listdir(parent)) == ["empty", "mine.txt", "model"]
    assert files_under(parent / "model") == ["a.txt", "b/c.txt", "d/e.bin"]


def test_a_directory_holding_only_a_killed_loads_leftovers_counts_as_empty(named, tmp_path):
    """Loading again after a killed load needs no --force: its leftovers do not make the
    directory non-empty, and the load removes them."""
    client, key, _src = named
    dest = tmp_path / "dest"
    dest.mkdir()
    with stalled_load(named, dest, tmp_path):
        assert os.listdir(dest)
    client.load(key, str(dest))
    assert all_names(dest) == ["a.txt", "b", "b/c.txt", "d", "d/e.bin"]


def test_a_directory_holding_only_leftovers_is_not_saved(store, tmp_path):
    """A directory a killed load created holds only its temp files: not even an empty dir."""
    src = write_tree(tmp_path / "src", {"a.txt": b"a", "made/by/load": None, "real_empty": None})
    (src / "made" / "by" / "load" / ".mfckpt-part-0123456789ab-3").write_bytes(b"partial")
    assert saved_paths(store, src) == (["a.txt"], ["real_empty"])


# ------------------------------------------------------------------------------ disk full
@pytest.mark.parametrize("backend", ["memory", "local"])
def test_disk_full_during_load_is_a_storage_error_naming_the_path(tmp_path, backend):
    """ENOSPC from a real full filesystem (a 2 MiB tmpfs, 5 MiB with the local store on it):
    ``StorageError`` naming the file, nothing left behind, the space given back.  The local
    store sits on the same tmpfs, so its in-kernel copy (copy_file_range) is the one that
    fails."""
    with tiny_filesystem(tmp_path / "fs", "5m" if backend == "local" else "2m") as fs:
        storage = LocalStorage(str(fs / "store")) if backend == "local" else MemoryStorage()
        store = CheckpointStore(storage, options())
        src = write_tree(tmp_path / "src", {"a.txt": b"a", "w/big.bin": rand(3 * MIB, 11)})
        m = store.read(store.save(str(src), make_scope()).key)
        free = os.statvfs(fs).f_bfree
        dest = fs / "dest"
        with pytest.raises(StorageError) as err:
            store.load(m, str(dest))
        message = str(err.value)
        assert "No space left on device" in message and "the filesystem is full" in message
        # The file whose write failed first: big.bin's chunks fill the filesystem, and a.txt,
        # written beside them by another worker, may meet the full filesystem first.
        assert any(str(dest / p) in message for p in ("w/big.bin", "a.txt")), message
        assert not dest.exists()  # the directories it made are removed too
        assert os.statvfs(fs).f_bfree == free


_FSIZE_LOAD = r"""
import resource, signal, sys
import metaflow  # noqa: F401
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import TransferOptions
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

root, key, dest = sys.argv[1:]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills us at the limit
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
store = CheckpointStore(LocalStorage(root), TransferOptions(chunk_size=65536, small_size=16384))
try:
    store.load(store.read(key), dest)
except Exception as exc:
    print("%s: %s" % (type(exc).__name__, exc))
"""


def test_a_file_size_limit_during_load_is_a_storage_error_naming_the_path(tmp_path):
    """EFBIG (``ulimit -f``, in a real child process) is reported like a full disk."""
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    src = write_tree(tmp_path / "src", {"small.txt": b"s", "big.bin": rand(3 * MIB, 12)})
    m = store.save(str(src), make_scope())
    dest = tmp_path / "dest"
    out = subprocess.run(
        [sys.executable, "-c", _FSIZE_LOAD, str(tmp_path / "store"), m.key, str(dest)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.startswith("StorageError: "), out.stdout + out.stderr
    assert str(dest / "big.bin") in out.stdout and "ulimit -f" in out.stdout
    assert not dest.exists()
