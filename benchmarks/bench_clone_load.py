"""Reflink loads: a local load of one large file on a filesystem that clones, against copies.

    sudo .venv/bin/python benchmarks/bench_clone_load.py                    # 256 MiB and 4 GiB, XFS
    sudo .venv/bin/python benchmarks/bench_clone_load.py --fs btrfs
    sudo .venv/bin/python benchmarks/bench_clone_load.py --sizes 64 --runs 2   # smoke run

Makes a sparse image (``--image-gib``, default 16) in a temp directory, formats it (``mkfs.xfs
-m reflink=1`` or ``mkfs.btrfs``), loop-mounts it (root only) and, per size, writes one random
file, saves it with ``CheckpointStore`` (local backend, default 16 MiB chunks) on that
filesystem and times, interleaved, ``--runs`` times each (medians printed):

* ``load (clone)``: ``store.load`` as shipped: each chunk cloned into place, the stored blob
  hashed (BLAKE3, page cache) to verify it;
* ``load (copy)``: the same load with cloning off and the kernel copy forced to a byte copy
  (``sendfile``; this kernel's ``copy_file_range`` would clone too): what a load costs on a
  filesystem that cannot clone;
* ``verify only``: BLAKE3 of every stored blob through a mapping, the part of a load a clone
  cannot remove;
* ``cp -r --reflink=never``, ``cp -r`` (coreutils >= 9 clones when it can), ``cp -r
  --reflink=always``: of the source directory, no verification.

``extra disk`` is the filesystem's used space after the load minus before (a clone shares the
stored blocks: about zero).  Page cache is warm (the file was just written), as after a save.
Nothing here asserts; see benchmarks/README.md, "Reflink loads".
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from metaflow_extensions.checkpointing.plugins.checkpointing.core import download_local  # noqa: E402
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope  # noqa: E402
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import (  # noqa: E402
    CheckpointStore,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import (  # noqa: E402
    TransferOptions,
    digest,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage import clone  # noqa: E402
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import (  # noqa: E402
    LocalStorage,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.oscopy import (  # noqa: E402
    map_readonly,
)

MiB = 1 << 20
MKFS = {"xfs": ["mkfs.xfs", "-q", "-m", "reflink=1"], "btrfs": ["mkfs.btrfs", "-q"]}


@contextmanager
def mounted(kind: str, base: Path, gib: int):
    image, mnt = base / "image", base / "mnt"
    with open(image, "wb") as f:
        f.truncate(gib << 30)
    subprocess.run([*MKFS[kind], str(image)], check=True, capture_output=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _used(path: Path) -> int:
    os.sync()
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _sendfile_copy(src_fd, dst_fd, length, src_off, dst_off, what):
    """copy_range without copy_file_range: a kernel byte copy that never clones."""
    os.lseek(dst_fd, dst_off, os.SEEK_SET)
    done = 0
    while done < length:
        n = os.sendfile(dst_fd, src_fd, src_off + done, length - done)
        if n == 0:
            raise OSError(5, "%s ended early" % what)
        done += n


def _verify_only(store_root: Path) -> None:
    for p in (store_root / "blobs").rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                with map_readonly(fd, os.fstat(fd).st_size) as m:
                    assert digest(m) == p.name
            finally:
                os.close(fd)


def bench_size(mnt: Path, size_mib: int, runs: int) -> list[tuple]:
    work = mnt / ("s%d" % size_mib)
    src = work / "src"
    src.mkdir(parents=True)
    with open(src / "model.bin", "wb") as f:
        for _ in range(0, size_mib, 64):
            f.write(os.urandom(min(64, size_mib) * MiB))
        f.truncate(size_mib * MiB)
    store = CheckpointStore(LocalStorage(str(work / "store")), TransferOptions())
    scope = Scope("user:bench", "F", "s", "_", "1", "1", 0)
    manifest = store.save(str(src), scope)
    out = work / "out"

    def load():
        store.load(manifest, str(out))

    def load_copy():
        clone.set_enabled(False)
        real = download_local.copy_range
        download_local.copy_range = _sendfile_copy
        try:
            store.load(manifest, str(out))
        finally:
            download_local.copy_range = real
            clone.set_enabled(True)

    def cp(*flags):
        return lambda: subprocess.run(["cp", "-r", *flags, str(src), str(out)], check=True)

    contenders = [
        ("load (clone)", load),
        ("load (copy)", load_copy),
        ("verify only", lambda: _verify_only(work / "store")),
        ("cp -r --reflink=never", cp("--reflink=never")),
        ("cp -r", cp()),
        ("cp -r --reflink=always", cp("--reflink=always")),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    extra: dict[str, list[int]] = {name: [] for name, _ in contenders}
    for _ in range(runs):
        for name, fn in contenders:  # interleaved: a busy moment slows every contender
            shutil.rmtree(out, ignore_errors=True)
            before = _used(mnt)
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            extra[name].append(_used(mnt) - before)
            if out.exists() and name.startswith("load"):
                got = out / "model.bin"
                assert got.stat().st_size == size_mib * MiB
            shutil.rmtree(out, ignore_errors=True)
    base = statistics.median(times["cp -r --reflink=never"])
    rows = []
    for name, _ in contenders:
        t = statistics.median(times[name])
        rows.append(
            (size_mib, name, t, size_mib / t, base / t, statistics.median(extra[name]) / MiB)
        )
    shutil.rmtree(work)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fs", choices=sorted(MKFS), default="xfs")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 4096], help="MiB")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--image-gib", type=int, default=16)
    ap.add_argument("--dir", default=None, help="where to put the image (default: temp dir)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_clone_load.py loop-mounts a filesystem: run it as root")
    base = Path(tempfile.mkdtemp(prefix="bench-clone-", dir=args.dir))
    try:
        with mounted(args.fs, base, args.image_gib) as mnt:
            rows = [r for s in args.sizes for r in bench_size(mnt, s, args.runs)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        "\n%s, loop-mounted image, %d runs per contender (medians), ratio = cp -r "
        "--reflink=never time / this time\n" % (args.fs, args.runs)
    )
    print("| size | contender | time (s) | MB/s | ratio | extra disk (MiB) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for size, name, t, mbs, ratio, disk in rows:
        label = "%d MiB" % size if size < 1024 else "%g GiB" % (size / 1024)
        print(
            "| %s | %s | %.3f | %.0f | %.2f | %.0f |"
            % (label, name, t, mbs * MiB / 1e6, ratio, disk)
        )


if __name__ == "__main__":
    main()
