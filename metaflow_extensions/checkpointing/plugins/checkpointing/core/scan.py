"""What a save reads: the regular files and empty directories of a source path."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..errors import CheckpointConfigError


@dataclass
class _File:
    rel: str
    abs: str
    size: int
    mode: int
    # What identifies unchanged content for the stat cache (see StatCache).
    fingerprint: tuple = ()


def _fingerprint(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# ---------------------------------------------------------------------------------------- scan
def scan(src: str) -> tuple[list[_File], list[str], str]:
    """List the regular files and empty directories of ``src`` (a file or a directory).

    Symlinks to files are saved as the file they point to; symlinked directories are followed
    once (a cycle is skipped).  Returns (files, empty dirs, "file" | "dir").
    """
    if not os.path.exists(src):
        raise CheckpointConfigError(
            "Cannot save %r: no such file or directory. Pass an existing path, or write your "
            "files into current.checkpoint.directory and call save() without a path." % src
        )
    if os.path.isfile(src):
        st = os.stat(src)
        entry = _File(
            os.path.basename(src), src, st.st_size, stat.S_IMODE(st.st_mode), _fingerprint(st)
        )
        return [entry], [], "file"
    if not os.path.isdir(src):
        raise CheckpointConfigError("Cannot save %r: not a regular file or directory." % src)
    files: list[_File] = []
    empty: list[str] = []
    seen = {os.path.realpath(src)}
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real not in seen:
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        rel_dir = os.path.relpath(dirpath, src)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        regular = 0
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue  # dangling symlink or deleted while scanning
            if not stat.S_ISREG(st.st_mode):
                continue
            regular += 1
            files.append(
                _File(rel_dir + name, path, st.st_size, stat.S_IMODE(st.st_mode), _fingerprint(st))
            )
        if rel_dir and not regular and not dirnames:
            empty.append(rel_dir.rstrip("/"))
    files.sort(key=lambda f: f.rel)
    return files, sorted(empty), "dir"
