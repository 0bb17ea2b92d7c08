"""Helpers shared by bench.py and its flow: peak-RSS sampling and memory recycling."""

import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid

MiB = 1 << 20
#: Where :func:`discard` moves trees of many files until the end of a run.
GRAVEYARD = ".bench-graveyard"


_BLOCK = bytes(16 * MiB)


def recycle_memory(nbytes: int, directory: str) -> None:
    """Write a ballast file of ``nbytes`` in ``directory`` and delete it, before a timed step.

    Why: on this project's VMs (Firecracker; the balloon driver does free page reporting)
    writes into *new* page-cache pages run at 0.3-0.8 GB/s most of the time, but at 4-5 GB/s
    right after a file of the same size was deleted: the pages it frees are reused at once.
    Whether a contender meets fast or slow pages is otherwise luck (``cp -r`` right after
    ``rm -rf`` of the previous copy looks 5x faster than the first ``cp -r``).  Doing this
    before *every* timed operation, ours and the baselines alike, puts all of them in the fast
    state, as on a machine without ballooning, so the comparison measures the code and not the
    hypervisor.  (Touching and freeing anonymous memory does not have this effect here.)
    The ballast is never synced: deleting it drops its dirty pages without disk I/O.
    """
    if nbytes <= 0:
        return
    path = os.path.join(directory, ".bench-ballast-%d" % os.getpid())
    try:
        with open(path, "wb") as f:
            left = nbytes
            while left > 0:
                n = min(left, len(_BLOCK))
                f.write(memoryview(_BLOCK)[:n])
                left -= n
    finally:
        os.unlink(path)


def prepare(nbytes: int, recycle: bool, directory: str) -> None:
    """What precedes every timed operation: ``sync``, then (optionally) recycled memory."""
    os.sync()
    if recycle:
        recycle_memory(nbytes, directory)


def discard(path: str, scratch: str) -> None:
    """Remove what a timed operation wrote: a tree of many files is moved aside instead and
    removed with ``scratch`` at the end of the run.

    Why: this VM's root filesystem is ext4 *without a journal*, where the inode allocator skips
    inodes freed in the last 60-300 s (``recently_deleted`` in fs/ext4/ialloc.c), rescanning
    them for every new file: creating 10,000 files right after deleting 10,000 took 2-7 s
    instead of 0.4 s, for ``cp -r`` and for us alike, depending on what was deleted before.
    (With a journal, as nearly everywhere, ext4 does not do this.)  Moving the tree aside
    frees no inode, so every timed operation creates its files as on a fresh filesystem; its
    cached pages are dropped (:func:`_drop_cached`), as a removal would free them."""
    if not os.path.lexists(path):
        return
    many = sum(len(names) for _d, _ds, names in os.walk(path)) >= 64
    if not many:
        shutil.rmtree(path, ignore_errors=True)
        return
    grave = os.path.join(scratch, GRAVEYARD)
    os.makedirs(grave, exist_ok=True)
    moved = os.path.join(grave, uuid.uuid4().hex)
    os.rename(path, moved)
    _drop_cached(moved)


def _drop_cached(tree: str) -> None:
    """Drop the page cache of the files under ``tree`` (written back first): a tree moved
    aside keeps its pages, so round after round of a 4 GiB case piled up 4 GiB more page
    cache each, the VM reclaimed memory and the loads of the later rounds ran 3-4x slower
    than the first (2026-12-07 13:24 UTC: 1.36 and 1.86 s, then 5.13, 5.79 and 4.77 s)."""
    os.sync()
    for dirpath, _dirs, names in os.walk(tree):
        for name in names:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


@contextlib.contextmanager
def ext4_image(gib: int, parent: str):
    """A journaled ext4 filesystem of ``gib`` GiB (sparse image under ``parent``, loop-mounted
    with direct I/O: :func:`_loop_device`) to work in: yields its mount point, removed
    afterwards.

    Why: see :func:`discard`.  Files other processes deleted in the last minutes (a test run,
    an earlier benchmark) slow down every file created in the same block groups of an ext4
    without a journal, whatever a benchmark defers.  A journaled ext4, the default nearly
    everywhere, has no such effect.  Needs root, ``mkfs.ext4`` and loop devices; raises
    ``RuntimeError`` naming what is missing."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        raise RuntimeError("--ext4-image needs root and mkfs.ext4 (e2fsprogs)")
    os.makedirs(parent, exist_ok=True)  # a fresh clone has no .bench yet
    base = tempfile.mkdtemp(prefix="bench-ext4-", dir=parent)
    image, mnt = os.path.join(base, "fs.img"), os.path.join(base, "mnt")
    os.mkdir(mnt)
    try:
        with open(image, "wb") as f:
            f.truncate(gib << 30)
        subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True)
        dev = _loop_device(image)
        subprocess.run(
            ["mount", dev, mnt] if dev else ["mount", "-o", "loop", image, mnt], check=True
        )
        try:
            yield mnt
        finally:
            subprocess.run(["umount", mnt], check=False)
            if dev:
                subprocess.run(["losetup", "-d", dev], check=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _loop_device(image: str) -> str:
    """A loop device on ``image`` reading and writing it with direct I/O, or "" where that is
    not to be had (``mount -o loop`` then makes one without).

    Why: through a plain loop device every page written to the image is cached twice, by the
    image's filesystem and by the one holding the image file.  A 4 GiB load then needed 8 GiB
    more page cache than on a disk, the VM reclaimed memory throughout (1.7 million pages
    taken back during one load) and both ``cp -r`` and our load ran at a third of their speed
    (2026-12-07 13:10 UTC: load 4.1-7.0 s, ``cp -r`` 2.1-4.0 s; with direct I/O 1.6-2.1 s
    and 1.5-1.8 s, nothing reclaimed)."""
    try:
        out = subprocess.run(
            ["losetup", "--find", "--show", "--direct-io=on", image],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        print("no direct-I/O loop device (%s): mount -o loop" % exc, file=sys.stderr)
        return ""
    return out.stdout.strip()


@contextlib.contextmanager
def ext4_workdir(args):
    """With ``args.ext4_image`` (GiB), point ``args.workdir`` at a fresh journaled ext4
    (:func:`ext4_image`, under the given ``--workdir`` or the temp dir) while the block runs;
    without it, change nothing."""
    if not args.ext4_image:
        yield
        return
    with ext4_image(args.ext4_image, args.workdir or tempfile.gettempdir()) as mnt:
        args.workdir = mnt
        print("working in a fresh journaled ext4 at %s" % mnt, file=sys.stderr, flush=True)
        yield


def recycle_size(data_bytes: int) -> int:
    """Recycled memory for an operation writing ``data_bytes``: the data, half again, 256 MiB."""
    return data_bytes + data_bytes // 2 + 256 * MiB


class PeakRSS:
    """Peak RSS above the level at ``__enter__``, sampled every ``interval`` seconds.

    ``ru_maxrss`` is a lifetime high-water mark and cannot show the peak of one block once an
    earlier block went higher, so a sampling thread reads the current RSS instead.  Both the
    sampled peak and ``ru_maxrss`` before/after are kept for cross-checking.
    """

    def __init__(self, interval: float = 0.005):
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = None
        self.baseline = 0
        self.peak = 0
        self.ru_maxrss_before = 0
        self.ru_maxrss_after = 0

    def _rss(self) -> int:
        return self._proc.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self._interval)

    def __enter__(self) -> "PeakRSS":
        self.baseline = self.peak = self._rss()
        self.ru_maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.ru_maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @property
    def extra(self) -> int:
        """Bytes of the sampled peak above the level at ``__enter__``."""
        return self.peak - self.baseline

    def to_json(self) -> dict:
        return {
            "rss_extra": self.extra,
            "rss_baseline": self.baseline,
            "ru_maxrss_before": self.ru_maxrss_before,
            "ru_maxrss_after": self.ru_maxrss_after,
        }
