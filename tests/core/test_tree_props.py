"""Property: any generated tree saved and loaded comes back exactly as a user expects.

Trees have unicode names (spaces, leading dots, 255-byte names), files of 0 to a few chunks
(random, all zeros, or mixed: holes on load), empty directories, modes with setuid/setgid/
sticky bits, and symlinks to files and directories (aliases, and links to an ancestor: cycles).
The expected tree is computed from the generated model alone: links materialised as copies,
cycles cut, modes within 0o777.  Run on the memory store (generic load path) and the local
store (in-kernel copies).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.tempnames import is_temp_name
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.memory import MemoryStorage

from .helpers import make_scope, options, rand, snapshot

CHUNK = 4096  # the smallest chunk size: a few chunks stay tiny
SMALL = 1024


@dataclass(frozen=True)
class File:
    size: int
    kind: str  # "random" | "zeros" | "mixed"
    seed: int
    mode: int

    def content(self) -> bytes:
        if self.kind == "zeros":
            return bytes(self.size)
        data = rand(self.size, self.seed)
        if self.kind == "mixed":  # every other chunk zeroed: holes between data
            buf = bytearray(data)
            for off in range(0, self.size, 2 * CHUNK):
                buf[off : off + CHUNK] = bytes(len(buf[off : off + CHUNK]))
            data = bytes(buf)
        return data


@dataclass(frozen=True)
class Link:
    target: tuple  # path of a file or directory of the tree, from its root
    absolute: bool


Node = Union[File, Link, dict]

#: Names a filesystem accepts: no "/" or NUL; no backslash (manifest paths refuse it, and
#: scan says so); not "." or ".."; at most 255 bytes; not one of the package's temp names.
_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00")
names = st.one_of(
    st.text(_chars, min_size=1, max_size=8),
    st.sampled_from(
        [" lead", "trail ", "in side", ".hidden", "..dots", "-dash", "日本語.txt", "n" * 255]
        + ["é" * 127 + "x"]  # 255 bytes in UTF-8
    ),
).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 255 and not is_temp_name(n))

sizes = st.one_of(
    st.integers(0, 3 * CHUNK + 100),
    st.sampled_from([0, SMALL - 1, SMALL, CHUNK, 2 * CHUNK, 3 * CHUNK]),
)
modes = st.sampled_from([0o644, 0o600, 0o755, 0o400, 0o700, 0o777, 0o4755, 0o2750, 0o1644])
files = st.builds(
    File, sizes, st.sampled_from(["random", "zeros", "mixed"]), st.integers(0, 9), modes
)
nodes = st.recursive(files, lambda kids: st.dictionaries(names, kids, max_size=4), max_leaves=10)


def _walk(tree: dict, path: tuple = ()):
    """Yield (path, node) of every file and directory of the model, the root included."""
    yield path, tree
    for name, node in tree.items():
        if isinstance(node, dict):
            yield from _walk(node, path + (name,))
        elif isinstance(node, File):
            yield path + (name,), node


@st.composite
def trees(draw) -> dict:
    """A directory model, then up to 3 symlinks to its files and directories."""
    tree = draw(st.dictionaries(names, nodes, max_size=5))
    entries = list(_walk(tree))
    dirs = [p for p, n in entries if isinstance(n, dict)]
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(dirs))
        parent = _get(tree, where)
        name = draw(names.filter(lambda n, parent=parent: n not in parent))
        parent[name] = Link(draw(st.sampled_from([p for p, _ in entries])), draw(st.booleans()))
    return tree


def _get(tree: dict, path: tuple) -> Node:
    node: Node = tree
    for part in path:
        node = node[part]
    return node


def expected(tree: dict) -> dict:
    """What a load must give, in the shape of helpers.snapshot: links become copies of their
    target; a link to a directory on its own walk path (a cycle) is left out."""
    out: dict = {}

    def walk(real: tuple, rel: str, on_path: frozenset) -> None:
        for name, node in _get(tree, real).items():
            target = real + (name,)
            if isinstance(node, Link):
                target = node.target
                node = _get(tree, target)
            if isinstance(node, dict):
                if target in on_path:
                    continue
                out[rel + name + "/"] = None
                walk(target, rel + name + "/", on_path | {target})
            else:
                out[rel + name] = (node.content(), node.mode & 0o777)

    walk((), "", frozenset({()}))
    return out


def materialise(tree: dict, root: Path) -> None:
    root.mkdir()
    for path, node in _walk(tree):
        here = root.joinpath(*path)
        if isinstance(node, File):
            here.write_bytes(node.content())
            os.chmod(here, node.mode)
        else:
            here.mkdir(exist_ok=True)
            for name, child in node.items():
                if isinstance(child, Link):
                    target = root.joinpath(*child.target)
                    text = str(target) if child.absolute else os.path.relpath(target, here)
                    os.symlink(text, here / name)


@pytest.mark.parametrize("backend", ["memory", "local"])
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(tree=trees())
def test_any_tree_loads_as_saved(backend, tree):
    with tempfile.TemporaryDirectory() as tmp:
        storage = MemoryStorage() if backend == "memory" else LocalStorage(tmp + "/store")
        store = CheckpointStore(storage, options(chunk_size=CHUNK, small_size=SMALL, workers=2))
        src, dest = Path(tmp) / "src", Path(tmp) / "dest"
        materialise(tree, src)
        store.load(store.read(store.save(str(src), make_scope()).key), str(dest))
        assert snapshot(dest) == expected(tree)
