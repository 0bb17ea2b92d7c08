"""The package's layering rules, checked on its source (docs/design/layers.md draws them).

- Imports point down only: ``errors``/``fmt`` < ``storage/`` < ``core/`` < ``common/`` <
  ``task/`` < ``client/`` < ``cli/`` < ``frameworks/`` < the card and toplevel exports.
  Lazy imports inside functions count: they are still dependencies, and a lazy import upward is
  how loops hide.
- No import loops between modules (``if TYPE_CHECKING:`` imports excepted: they never run).
- ``core/`` and ``storage/`` import neither Metaflow nor torch: they are pure logic on the
  storage protocol, testable without a flow.
- A module over ~400 lines says why at the top of its docstring (``Long module:``).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

EXT = Path(__file__).resolve().parents[1] / "metaflow_extensions" / "checkpointing"
PKG = "metaflow_extensions.checkpointing"
IMPL = PKG + ".plugins.checkpointing"

#: Layer rank of each part of the extension: a module may import its own rank or lower.
LAYERS = [
    (IMPL + ".errors", 0),
    (IMPL + ".fmt", 0),
    (IMPL + ".storage", 1),
    (IMPL + ".core", 2),
    (IMPL + ".common", 3),
    (IMPL + ".task", 4),
    (IMPL + ".client", 5),
    (IMPL + ".cli", 6),
    (IMPL + ".frameworks", 7),
    (PKG + ".plugins.cards", 8),
    (PKG + ".toplevel", 9),
    (PKG + ".plugins", 10),  # registration (mfextinit_*): names strings, imports nothing
    (PKG + ".cmd", 10),
    (PKG + ".config", 10),
]
#: Modules that may not import Metaflow or torch (nor lightning, safetensors).
PURE = (IMPL + ".core", IMPL + ".storage")
FORBIDDEN_IN_PURE = ("metaflow", "torch", "lightning", "pytorch_lightning", "safetensors")
LONG_MODULE_LINES = 420
LONG_MODULE_MARKER = "Long module:"


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (package ``package``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([package, *parts])] = path
    return found


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports_of(
    name: str, path: Path, known: dict[str, Path], runtime_only: bool
) -> set[tuple[str, int]]:
    """``(imported module, line)`` for every import in the module ``name`` (absolute names;
    ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    nodes = _runtime_nodes(tree) if runtime_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = "%s.%s" % (target, alias.name)
                found.add((sub if sub in known else target, node.lineno))
    return found


def layer_of(name: str) -> Optional[int]:
    for prefix, rank in LAYERS:
        if name == prefix or name.startswith(prefix + "."):
            return rank
    return None


def import_graph(root: Path, package: str, runtime_only: bool) -> dict[str, set]:
    known = modules(root, package)
    return {
        name: {(t, line) for t, line in imports_of(name, path, known, runtime_only) if t in known}
        for name, path in known.items()
    }


def cycles(graph: dict[str, set]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or a self-import."""
    edges = {n: sorted({t for t, _ in targets}) for n, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(n: str) -> None:
        index[n] = low[n] = len(index)
        stack.append(n)
        on_stack.add(n)
        for m in edges.get(n, ()):
            if m not in index:
                visit(m)
                low[n] = min(low[n], low[m])
            elif m in on_stack:
                low[n] = min(low[n], index[m])
        if low[n] == index[n]:
            component = []
            while True:
                m = stack.pop()
                on_stack.discard(m)
                component.append(m)
                if m == n:
                    break
            if len(component) > 1 or n in edges.get(n, ()):
                found.append(sorted(component))

    for n in sorted(edges):
        if n not in index:
            visit(n)
    return found


# ---------------------------------------------------------------------------------- the rules
def test_no_import_loops():
    loops = cycles(import_graph(EXT, PKG, runtime_only=True))
    assert not loops, "import loops (break them by moving code down a layer): %s" % loops


def test_imports_point_down_only():
    upward = []
    for name, targets in import_graph(EXT, PKG, runtime_only=False).items():
        rank = layer_of(name)
        assert rank is not None, "%s belongs to no layer: add it to LAYERS" % name
        for target, line in sorted(targets):
            if layer_of(target) > rank:
                upward.append("%s:%d imports %s" % (name, line, target))
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)


def test_core_and_storage_import_neither_metaflow_nor_torch():
    known = modules(EXT, PKG)
    bad = []
    for name, path in known.items():
        if not name.startswith(PURE):
            continue
        for target, line in imports_of(name, path, known, runtime_only=False):
            if target.split(".")[0] in FORBIDDEN_IN_PURE:
                bad.append("%s:%d imports %s" % (path.relative_to(EXT), line, target))
    assert not bad, "core/ and storage/ must stay free of Metaflow and torch:\n" + "\n".join(bad)


def test_long_modules_say_why():
    unexplained = []
    for path in modules(EXT, PKG).values():
        lines = path.read_text().count("\n")
        if lines <= LONG_MODULE_LINES:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if LONG_MODULE_MARKER not in doc:
            unexplained.append("%s (%d lines)" % (path.relative_to(EXT), lines))
    assert not unexplained, (
        "modules over %d lines without a '%s' reason in their docstring (split them, or say "
        "why they are one module): %s" % (LONG_MODULE_LINES, LONG_MODULE_MARKER, unexplained)
    )


# ------------------------------------------------------------------- the checker can fail
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    "files, loop",
    [
        # a lazy import inside a function closes the loop as surely as a top-level one
        (
            {
                "__init__.py": "",
                "a.py": "from . import b\n",
                "b.py": "def f():\n    from . import a\n",
            },
            ["p.a", "p.b"],
        ),
        (
            {
                "__init__.py": "",
                "x/__init__.py": "",
                "x/one.py": "from ..y.two import T\n",
                "y/__init__.py": "",
                "y/two.py": "from ..x import one\nT = 1\n",
            },
            ["p.x.one", "p.y.two"],
        ),
        # TYPE_CHECKING imports never run: not a loop
        (
            {
                "__init__.py": "",
                "a.py": "from . import b\n",
                "b.py": (
                    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
                ),
            },
            None,
        ),
    ],
)
def test_the_loop_check_finds_loops(tmp_path, files, loop):
    found = cycles(import_graph(_package(tmp_path, files), "p", runtime_only=True))
    assert found == ([loop] if loop else [])


def test_the_layer_check_resolves_relative_imports(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "core/__init__.py": "",
            "core/m.py": "def f():\n    from ..task import t\n",
            "task/__init__.py": "",
            "task/t.py": "",
        },
    )
    graph = import_graph(root, "p", runtime_only=False)
    assert {t for t, _ in graph["p.core.m"]} == {"p.task.t"}
    assert os.path.basename(str(modules(root, "p")["p.task"])) == "__init__.py"
