"""A real full filesystem for fault tests: a small tmpfs mounted for the block."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tiny_filesystem(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (needs root, as CI runs)."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the EFBIG test covers non-root runs)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % mounted.stderr.strip())
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
