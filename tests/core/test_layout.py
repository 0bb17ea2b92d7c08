"""The store's key layout (core/layout.py): every key it builds parses back to what built it,
keys of different scopes never share a prefix they should not, and no other module spells a
top-level prefix itself.

Property tests (hypothesis) build keys from arbitrary scope components (slashes, dots, percent
signs, colons, any script) and names, and parse them back; a table saves real checkpoints on a
memory store under tricky scopes and checks that each load-policy prefix lists exactly the
checkpoints of its scope.  A source scan keeps the layout in one module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core import layout
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import (
    MAX_CREATED_MS,
    parse_key,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.position import (
    MAX_INDEX,
    RANK0,
    Position,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import (
    Scope,
    library_scope,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import ManifestError
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.base import validate_key

from .helpers import write_tree

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Scope components as users and Metaflow spell them, and worse: any character but a surrogate.
component = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
    st.sampled_from([".", "..", "/", "a/b", "%2F", "%", "user:alice", "_", "é", " ", "a%2Fb"]),
)
names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,30}", fullmatch=True).filter(
    lambda n: ".." not in n
)
ids = st.from_regex(r"[0-9A-Za-z]{1,64}", fullmatch=True)
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
scopes = st.builds(
    Scope,
    component,
    component,
    component,
    component,
    component,
    component,
    st.integers(0, 2**63 - 1),
)
LEVELS = ("namespace", "flow", "step", "foreach", "run", "task")
#: Writers (ADR 004): a position, or rank 0 with a sharded checkpoint.
positions = st.builds(Position, st.integers(0, MAX_INDEX), st.integers(0, MAX_INDEX))
writers = st.one_of(st.tuples(positions, st.just(False)), st.just((RANK0, True)))


def _prefixes(s: Scope) -> dict[str, str]:
    """The prefix of each level of ``s``, most general first."""
    return {
        "namespace": layout.namespace_prefix(s.namespace),
        "flow": layout.flow_prefix(s.namespace, s.flow),
        "step": s.step_prefix(),
        "foreach": s.lineage_prefix(),
        "run": s.run_prefix(),
        "task": s.task_prefix(),
    }


# ------------------------------------------------------------------------------ round trips
@PROPS
@given(
    scopes,
    st.integers(0, MAX_CREATED_MS),
    st.integers(0, 2**63 - 1),
    st.booleans(),
    ids,
    names,
    writers,
)
def test_manifest_keys_parse_back_to_what_built_them(scope, created, seq, latest, id, name, writer):
    position, sharded = writer
    key = layout.manifest_key(
        scope.task_prefix(), created, scope.attempt, seq, latest, id, name, position, sharded
    )
    validate_key(key)  # a valid key on every backend, whatever the components
    parts = layout.split_manifest_key(key)
    assert parts == layout.ManifestKey(
        *(getattr(scope, level) for level in LEVELS),
        created,
        scope.attempt,
        seq,
        latest,
        id,
        name,
        position,
        sharded,
    )
    header = parse_key(key)
    assert (
        header.scope,
        header.created_ms,
        header.seq,
        header.latest,
        header.id,
        header.position,
        header.sharded,
    ) == (scope, created, seq, latest, id, position, sharded)
    assert layout.manifest_components(key) == tuple(getattr(scope, level) for level in LEVELS)
    assert layout.step_prefix_of(key) == scope.step_prefix()
    assert layout.task_prefix_of(key) == scope.task_prefix()
    prefixes = list(_prefixes(scope).values())
    assert all(key.startswith(p) for p in prefixes)
    assert all(b.startswith(a) for a, b in zip(prefixes, prefixes[1:]))


@PROPS
@given(scopes, scopes, ids, names)
def test_a_prefix_holds_exactly_the_keys_of_its_scope(a, b, id, name):
    # What makes every load policy one listing: a key of ``a`` is under ``b``'s prefix of a
    # level exactly when the two scopes agree down to that level (encoding is injective).
    key = layout.manifest_key(a.task_prefix(), 1, a.attempt, 0, True, id, name)
    for depth, (level, prefix) in enumerate(_prefixes(b).items()):
        same = all(getattr(a, lv) == getattr(b, lv) for lv in LEVELS[: depth + 1])
        assert key.startswith(prefix) == same, level


@PROPS
@given(scopes, ids, names, component, component)
def test_keys_beside_a_manifest_parse_back(scope, id, name, namespace, version):
    key = layout.manifest_key(scope.task_prefix(), 7, scope.attempt, 3, False, id, name)
    pin = layout.pin_key(key)
    assert pin.startswith(layout.PINS_PREFIX) and layout.pinned_manifest(pin) == key
    assert pin.startswith(layout.pin_key(scope.step_prefix()))  # a step's pins: one listing
    part = layout.part_key(scope.task_prefix(), id, 3)
    assert part.startswith(layout.parts_prefix(scope.task_prefix(), id)) and layout.is_part_key(
        part
    )
    assert layout.split_manifest_key(part) is None and layout.split_manifest_key(pin) is None
    index = layout.task_summary_key(scope.task_prefix(), scope.attempt)
    assert index.startswith(layout.task_summaries_prefix(scope.task_prefix()))
    assert layout.is_task_summary_key(index)
    node_index = layout.task_summary_key(scope.task_prefix(), scope.attempt, Position(3, 0))
    assert node_index != index and layout.is_task_summary_key(node_index)
    assert node_index.startswith(layout.task_summaries_prefix(scope.task_prefix()))
    gone = layout.gone_key(scope.task_prefix(), scope.attempt, "node", 3)
    assert gone.startswith(layout.gone_prefix(scope.task_prefix(), scope.attempt))
    assert layout.gone_of(gone) == ("node", 3)
    assert layout.gone_of(layout.gone_key(scope.task_prefix(), 0, "rank", 12)) == ("rank", 12)
    assert not layout.gone_prefix(scope.task_prefix(), 1).startswith(
        layout.gone_prefix(scope.task_prefix(), 0)
    )  # attempt 1's markers are not attempt 0's (nor 10's under 1's: the prefix ends in /)
    assert layout.step_index_key(scope.step_prefix()).startswith(layout.INDEXES + "/")
    marker = layout.promotion_key(name, namespace, version)
    assert marker.startswith(layout.promoted_to_prefix(name, namespace))
    assert layout.promotion_of(marker, name) == (namespace, version)
    log = layout.promotion_log_key(name, 5, "abcd1234")
    assert log.startswith(layout.promotion_log_prefix(name))
    assert layout.promotion_of(log, name) is None
    run_pause = layout.pause_run_key(scope.flow, scope.run)
    task_pause = layout.pause_task_key(scope.flow, scope.run, scope.step, scope.task)
    for k in (pin, part, index, node_index, gone, marker, log, run_pause, task_pause):
        validate_key(k)


@PROPS
@given(st.lists(st.tuples(component, component), min_size=2, max_size=2, unique=True))
def test_pause_requests_of_different_runs_never_share_a_key(runs):
    (flow_a, run_a), (flow_b, run_b) = runs
    assert layout.pause_run_key(flow_a, run_a) != layout.pause_run_key(flow_b, run_b)


@PROPS
@given(hex64, st.text("0123456789abcdef", min_size=32, max_size=32), st.integers(0, 10**6))
def test_blob_lease_and_gc_run_keys_parse_back(digest, session, n):
    key = layout.blob_key(digest)
    assert key.startswith(layout.BLOBS_PREFIX) and layout.blob_of(key) == digest
    for name in (layout.LEASE_START, layout.LEASE_ALIVE):
        assert layout.lease_of(layout.lease_key(session, name)) == (session, name)
    names = layout.lease_names_key(session, n)
    assert layout.lease_of(names) == (session, "%s%06d" % (layout.LEASE_NAMES, n))
    assert names.startswith(layout.lease_prefix(session))
    run = "%013d-%s" % (n, session[:8])
    assert layout.gc_run_of(layout.gc_run_key(run, "sweep")) == (run, "sweep")
    assert layout.gc_run_of(key) is None and layout.lease_of(key) is None


@pytest.mark.parametrize(
    "digest", ["", "AB" * 32, "ab" * 31, "../" + "a" * 61, "g" * 64, None, 12, "ab" * 32 + "\n"]
)
def test_blob_keys_are_made_of_digests_only(digest):
    with pytest.raises(ManifestError, match="not a blob name"):
        layout.blob_key(digest)


@PROPS
@given(
    st.sampled_from(["s3://bucket", "s3://bucket/manifests/root", "/data/manifests", "gs://b/x"]),
    scopes,
    ids,
    names,
)
def test_a_manifest_url_splits_into_its_root_and_key(root, scope, id, name):
    key = layout.manifest_key(scope.task_prefix(), 9, scope.attempt, 1, True, id, name)
    assert layout.split_manifest_url("%s/%s" % (root, key)) == (root, key)
    assert layout.mentions_manifests(key) and layout.mentions_manifests(root + "/" + key)
    assert not layout.mentions_manifests("Flow/123/train/4")


# ------------------------------------------------------------------------------ real saves
TRICKY = [
    Scope("user:alice", "TrainFlow", "train", "_", "12", "34"),
    Scope("user:alice", "TrainFlow", "train", "_", "1", "234"),  # "1"+"234" vs "12"+"34"
    Scope("production:a/b", "TrainFlow", "train", "3.0", "12", "34"),
    Scope("production:a%2Fb", "TrainFlow", "train", "3.0", "12", "34"),  # encodes apart
    Scope("user:alice", "TrainFlow", "..", ".", "12", "34"),
    Scope("user:alice", "TrainFlow", "tráin", "_", "12", "34"),
    library_scope("resnet50"),
]


def test_each_policy_prefix_lists_exactly_the_checkpoints_of_its_scope(store, tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"w.bin": b"weights"})
    saved = {scope: store.save(str(src), scope).key for scope in TRICKY}
    for scope, key in saved.items():
        assert parse_key(key).scope == scope
        for depth, prefix in enumerate(_prefixes(scope).values()):
            listed = {h.key for h in store.headers(prefix)}
            expected = {
                k
                for s, k in saved.items()
                if all(getattr(s, lv) == getattr(scope, lv) for lv in LEVELS[: depth + 1])
            }
            assert listed == expected, prefix
    assert {h.key for h in store.headers(layout.library_prefix())} == {
        saved[library_scope("resnet50")]
    }
    assert {h.key for h in store.headers(layout.MANIFESTS_PREFIX)} == set(saved.values())
    # Every object the saves wrote sits under a top-level prefix of the layout.
    top = tuple(p + "/" for p in layout.TOP_LEVEL)
    assert all(o.key.startswith(top) for o in store.storage.list())


# ------------------------------------------------------------------------------ one owner
PACKAGE = (
    Path(__file__).resolve().parents[2]
    / "metaflow_extensions"
    / "checkpointing"
    / "plugins"
    / "checkpointing"
)
_TOP = "|".join(re.escape(p) for p in layout.TOP_LEVEL)
#: A string that spells a key under a top-level prefix: ``manifests/...``, ``.../blobs/...``.
_KEY_LIKE = re.compile(r"(?:^|/)(?:%s)/" % _TOP)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = body[0] if body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _spells_a_key(text: str) -> bool:
    return _KEY_LIKE.search(text) is not None or layout.GC_RUNS in text


def prefix_literals(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of every place ``source`` spells a top-level prefix of the store: a
    string (not a docstring) holding ``<prefix>/``, the prefix ``gc/runs``, or a module or class
    constant whose value is a bare prefix (``MANIFESTS = "manifests"``).  Bare words elsewhere
    are JSON fields and progress phases (``report["blobs"]``), not keys."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        text = node.value if isinstance(node, ast.Constant) else None
        if isinstance(text, str) and id(node) not in docs and _spells_a_key(text):
            found.append((node.lineno, text))
        if isinstance(node, (ast.Module, ast.ClassDef)):
            for stmt in node.body:
                value = getattr(stmt, "value", None)
                if (
                    isinstance(stmt, (ast.Assign, ast.AnnAssign))
                    and isinstance(value, ast.Constant)
                    and value.value in layout.TOP_LEVEL
                ):
                    found.append((stmt.lineno, value.value))
    return found


@pytest.mark.parametrize(
    "source, spelled",
    [
        ('KEYS = "manifests"\n', True),
        ('def f(h):\n    return "blobs/%s/%s" % (h[:2], h)\n', True),
        ('PREFIX = "gc/runs"\n', True),
        ('def f(root):\n    return root.partition("/manifests/")\n', True),
        ('def f(x):\n    return f"leases/{x}/start"\n', True),
        ('def f(report):\n    return report["blobs"], report["manifests"]\n', False),
        ('def f():\n    """Lists ``manifests/`` of a step."""\n', False),
        ("from .layout import MANIFESTS_PREFIX\n", False),
    ],
)
def test_the_scan_finds_a_spelled_prefix(source, spelled):
    assert bool(prefix_literals(source)) is spelled


def test_no_module_but_layout_spells_a_top_level_prefix():
    spelled = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "layout.py" and path.parent.name == "core":
            continue
        for line, text in prefix_literals(path.read_text()):
            spelled.append("%s:%d %r" % (path.relative_to(PACKAGE), line, text))
    assert not spelled, (
        "keys are built and parsed by core/layout.py only; use its functions instead of:\n"
        + "\n".join(spelled)
    )


def test_the_layout_docstring_draws_every_top_level_prefix():
    doc = layout.__doc__ or ""
    missing = [p for p in layout.TOP_LEVEL if "%s/" % p not in doc]
    assert not missing, "core/layout.py's tree lacks %s" % missing
