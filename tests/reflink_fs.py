"""Loop-mounted XFS (``reflink=1``) and btrfs filesystems for the reflink-clone tests.

The suite runs as root (CI and the machines it runs on): :func:`reflink_mounts` makes a sparse
image of each kind under a temp directory, formats it (``mkfs.xfs``/``mkfs.btrfs``, installed by
``make test``), loop-mounts it and unmounts it at the end.  Anything missing fails the tests
that use it, naming what: a skip would hide that the install step is broken.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

KINDS = ("xfs", "btrfs")
_MKFS = {
    "xfs": ["mkfs.xfs", "-q", "-m", "reflink=1"],
    "btrfs": ["mkfs.btrfs", "-q"],
}


@contextmanager
def mounted(kind: str, base: Path, size: int = 512 << 20) -> Iterator[Path]:
    """A fresh ``kind`` filesystem of ``size`` bytes (sparse) mounted at ``base/<kind>``."""
    if os.geteuid() != 0:
        raise RuntimeError("the reflink tests loop-mount filesystems: run the suite as root")
    if shutil.which(_MKFS[kind][0]) is None:
        raise RuntimeError(
            "%s is missing: `make test` installs it (xfsprogs, btrfs-progs)" % _MKFS[kind][0]
        )
    image, mnt = base / (kind + ".img"), base / kind
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run([*_MKFS[kind], str(image)], check=True, capture_output=True)
    mnt.mkdir()
    for attempt in range(5):
        # Two workers mounting at once may draw the same free loop device: one fails, retries.
        done = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True)
        if done.returncode == 0:
            break
        time.sleep(0.2 * (attempt + 1))
    else:
        raise RuntimeError("mount -o loop %s failed: %s" % (image, done.stderr.decode().strip()))
    try:
        yield mnt
    finally:
        # A lazy unmount still frees the loop device once nothing holds a file open.
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        image.unlink()


@pytest.fixture(scope="session")
def reflink_mounts(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """``{"xfs": <mount point>, "btrfs": <mount point>}`` for the session (one per worker)."""
    base = tmp_path_factory.mktemp("reflink")
    with ExitStack() as stack:
        yield {kind: stack.enter_context(mounted(kind, base)) for kind in KINDS}


@pytest.fixture(params=KINDS)
def reflink_dir(request, reflink_mounts, tmp_path) -> Path:
    """An empty directory on a filesystem that clones (each test: XFS, then btrfs)."""
    d = reflink_mounts[request.param] / tmp_path.name
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)
