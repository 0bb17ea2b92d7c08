"""Helpers shared by the core tests: small transfer options, scopes, and file trees."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path
from typing import Optional

from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.transfer import TransferOptions
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.base import Storage
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage

KIB = 1024
CHUNK = 64 * KIB
SMALL = 16 * KIB


def options(**kwargs) -> TransferOptions:
    """Transfer options with small chunks so multi-chunk files stay tiny."""
    kw = {"chunk_size": CHUNK, "small_size": SMALL, "workers": 4}
    kw.update(kwargs)
    return TransferOptions(**kw)


def make_scope(**kwargs) -> Scope:
    """A scope with sensible defaults; override any field."""
    kw = {
        "namespace": "user:alice",
        "flow": "TrainFlow",
        "step": "train",
        "foreach": "_",
        "run": "100",
        "task": "7",
        "attempt": 0,
    }
    kw.update(kwargs)
    return Scope(**kw)


def rand(n: int, seed: int) -> bytes:
    """Deterministic incompressible bytes."""
    return random.Random(seed).randbytes(n)


def write_tree(root: Path, spec: dict) -> Path:
    """Create files and dirs under ``root``.

    ``spec`` maps relative paths to bytes (a file), ``(bytes, mode)`` (a file with a mode) or
    ``None`` (an empty directory).
    """
    root.mkdir(parents=True, exist_ok=True)
    for rel, value in spec.items():
        path = root / rel
        if value is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        data, mode = value if isinstance(value, tuple) else (value, 0o644)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, mode)
    return root


def snapshot(root: Path) -> dict:
    """Everything a user sees under ``root``: {relpath: (bytes, mode)} and {dir/: None}."""
    out: dict = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel_dir, d)).replace(os.sep, "/") + "/"] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            rel = os.path.normpath(os.path.join(rel_dir, f)).replace(os.sep, "/")
            out[rel] = (Path(p).read_bytes(), stat.S_IMODE(os.lstat(p).st_mode))
    return out


def files_under(root: Path) -> list:
    """Relative paths of every file (not directory) under ``root``."""
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _dirs, fs in os.walk(root) for f in fs
    )


def sample_spec(seed: int = 0) -> dict:
    """A checkpoint-like tree: multi-chunk, chunk-aligned, packed, empty, modes, nested dirs."""
    return {
        "model/weights.bin": rand(4 * CHUNK + 1234, 100 * seed),  # 5 chunks, last partial
        "model/exact.bin": rand(2 * CHUNK, 100 * seed + 1),  # exactly 2 chunks
        "model/at_small.bin": rand(SMALL, 100 * seed + 2),  # not packed: size == small_size
        "model/config.json": b'{"lr": 0.1, "seed": %d}' % seed,
        "model/sub/deep/leaf.txt": b"leaf %d" % seed,
        "optimizer.pt": rand(3000, 100 * seed + 3),
        "empty.txt": b"",
        "run.sh": (b"#!/bin/sh\necho %d\n" % seed, 0o755),
        "secret.key": (b"k%d" % seed, 0o600),
        "logs/empty_dir": None,
        "a/b/c": None,
    }


def blob_keys(storage: Storage) -> set:
    return {o.key for o in storage.list("blobs/")}


def manifest_keys(storage: Storage) -> set:
    return {o.key for o in storage.list("manifests/")}


def tiny(tmp_path: Path, content: Optional[bytes] = None, name: str = "state.txt") -> Path:
    """A one-file directory to save quickly (distinct content per call unless given)."""
    tiny.counter = getattr(tiny, "counter", 0) + 1
    d = tmp_path / ("tiny-%d" % tiny.counter)
    d.mkdir()
    (d / name).write_bytes(content if content is not None else b"state %d" % tiny.counter)
    return d


def in_forked_child(start) -> bool:
    """Whether ``start(done)``, called in a forked child, sets ``done`` (a
    ``threading.Event``) within 10 s: a child must not rely on its parent's threads."""
    import threading

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            done = threading.Event()
            start(done)
            os.write(w, b"ok" if done.wait(10) else b"no")
        finally:
            os._exit(0)
    os.close(w)
    try:
        return os.read(r, 2) == b"ok"
    finally:
        os.close(r)
        os.waitpid(pid, 0)


class CountingStorage(MemoryStorage):
    """An in-memory backend that records each read: its key, in order, and the bytes returned."""

    def __init__(self):
        super().__init__()
        self.bytes_read = 0
        self.gets: list[str] = []

    def _get_bytes(self, key, start, length):
        data = super()._get_bytes(key, start, length)
        self.bytes_read += len(data)
        self.gets.append(key)
        return data
