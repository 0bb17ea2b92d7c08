"""Every reference spelling means the same checkpoint in every context (issue 12, item 1).

One table: each row is a spelling (docs/api.md, docs/cli.md "References") and what it must give
in each context, a checkpoint (by its label) or an error type and a message fragment:

* ``task``: ``current.checkpoint.load(spelling, path)``, a runtime on the scope of the
  ``train`` task of a real run (built as the task builds it, ``TaskContext.runtime``);
* ``subprocess``: ``Checkpoint().load(spelling, path)`` in a process of that task (the task's
  context in the environment, as the decorator exports it), and ``Checkpoint().get`` there;
* ``client``: ``Checkpoint().get(spelling)`` outside any task, in a fresh Python process
  pointed at the run's metadata (Metaflow's client finds runs and flows);
* ``cli``: ``metaflow checkpoint show SPELLING --json`` through click in that process.

The flow (tests/flows/resolver_flow.py) runs once for the module, and so does a flow called
``resnet50`` that saves no checkpoint (tests/flows/resnet50_flow.py), like the named checkpoint
``resnet50``; named checkpoints (one published from another namespace) and a checkpoint in a
second store are saved next to them.  The rows marked "was:" failed on the code before the
resolver (the parsers disagreed) or before its fixes (issue 12 follow-up F1).
"""

from __future__ import annotations

import json
import os
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest
from conftest import flow_environment

from metaflow_extensions.checkpointing.plugins.checkpointing.common.reference import (
    reference_of,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.manifest import parse_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.promotions import (
    publisher_record,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import library_scope
from metaflow_extensions.checkpointing.plugins.checkpointing.task.context import (
    TASK_ENV,
    TaskContext,
)

from .flowrun import FLOWS, PROBE_PRELUDE, local_root, local_store, run_flow, run_subprocess

pytestmark = pytest.mark.flow

FLOW = "ResolverFlow"
CONTEXTS = ("task", "subprocess", "client", "cli")


@dataclass(frozen=True)
class Err:
    """An expected error: its type (the CLI prints only the message) and a message fragment."""

    type: str
    fragment: str


Expected = Union[str, Err, None]  # a checkpoint label, an error, or None: not applicable


@dataclass
class World:
    """What the rows are spelled with: the run, its tasks, keys and the second store."""

    tmp: Path
    env: dict
    run: str
    train: str  # task pathspecs
    evaluate: str
    keys: dict  # label -> manifest key
    root: str  # the flow's checkpoint store
    other_root: str
    other_key: str
    v3: str  # version id of resnet50 published from another namespace
    v1: str


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    tmp = tmp_path_factory.mktemp("resolver")
    (tmp / "home").mkdir()
    env = flow_environment(tmp)
    result = run_flow(FLOWS / "resolver_flow.py", env, tmp)
    run_flow(FLOWS / "resnet50_flow.py", env, tmp)  # a flow named like a named checkpoint
    root = local_root(tmp)
    store = local_store(root)
    keys = {}
    for h in store.headers("manifests/"):
        keys[store.read(h.key).metadata["label"]] = h.key
    by_label = {}
    src = tmp / "named"
    src.mkdir()
    for label, acc, namespace in (
        ("resnet50-v1", 0.95, "user:tester"),
        ("resnet50-v2", 0.6, "user:tester"),
        ("resnet50-v3", 0.99, "user:someone"),
        ("theirs-v1", 0.5, "user:someone"),
    ):
        (src / "label.txt").write_text(label)
        name = label.split("-")[0]
        m = store.save(
            str(src),
            library_scope(name),
            name=name,
            metadata={"label": label, "acc": acc},
            publisher=publisher_record(namespace.split(":")[1], namespace, "client"),
        )
        by_label[label] = m
        keys[label] = m.key
    other = local_store(tmp / "other-store")
    (src / "label.txt").write_text("other")
    elsewhere = other.save(
        str(src), library_scope("elsewhere"), name="elsewhere", metadata={"label": "other"}
    )
    tasks = {t.parent.id: t.pathspec for s in result.run for t in s}
    return World(
        tmp=tmp,
        env=env,
        run=result.run.id,
        train=tasks["train"],
        evaluate=tasks["evaluate"],
        keys=keys,
        root=str(root),
        other_root=other.url,
        other_key=elsewhere.key,
        v3=by_label["resnet50-v3"].id,
        v1=by_label["resnet50-v1"].id,
    )


def everywhere(expected: Expected, cli: Any = "same") -> dict:
    return {c: expected for c in CONTEXTS[:3]} | {"cli": expected if cli == "same" else cli}


def inside_outside(inside: Expected, outside: Expected) -> dict:
    return {"task": inside, "subprocess": inside, "client": outside, "cli": outside}


NOT_SPELLED_IN_CLI = None
BARE_ALIAS = Err("CheckpointConfigError", "there is no running task here")
OTHER_STORE = Err("CheckpointScopeError", "pass namespace_check=False to load it from there")
UNTRUSTED = Err("CheckpointScopeError", "No version of 'theirs' was published from namespace")


def _id(w: World, label: str) -> str:
    return parse_key(w.keys[label]).id


def _absent_id(w: World) -> str:
    """8 hex digits no checkpoint's id starts with."""
    ids = [parse_key(k).id for k in w.keys.values()]
    return next(p for p in ("%08x" % n for n in range(99)) if not any(i.startswith(p) for i in ids))


def _url(w: World, label: str) -> str:
    return "%s/%s" % (w.root, w.keys[label])


def _relative(w: World) -> str:
    """The flow's store as a path relative to every context's working directory."""
    return os.path.relpath(w.root, w.tmp)


#: A word before '@' is the named checkpoint if the caller's store has one, else the flow.
NEITHER = Err("CheckpointNotFound", "there is no checkpoint named 'nosuch' in")


#: (id, spelling of the world, {context: expected}).
ROWS: list[tuple[str, Callable[[World], Any], dict]] = [
    # -- by key
    ("reference", lambda w: ("ref", w.keys["train-0"]), everywhere("train-0", NOT_SPELLED_IN_CLI)),
    ("dict", lambda w: {"key": w.keys["train-0"]}, everywhere("train-0", NOT_SPELLED_IN_CLI)),
    ("key", lambda w: w.keys["train-1"], everywhere("train-1")),
    ("key of a named version", lambda w: w.keys["resnet50-v3"], everywhere("resnet50-v3")),
    ("url", lambda w: _url(w, "train-1"), everywhere("train-1")),
    (
        "dict of another store",  # a task refuses another store unless namespace_check=False
        lambda w: {"key": w.other_key, "root": w.other_root},
        {"task": OTHER_STORE, "subprocess": OTHER_STORE, "client": "other", "cli": None},
    ),
    (
        "url of another store",  # was: a "Cannot load" config error in a task
        lambda w: "%s/%s" % (w.other_root, w.other_key),
        inside_outside(OTHER_STORE, "other"),
    ),
    # -- the caller's own store spelled differently (was: refused as another store in a task)
    (
        "dict, root with a trailing slash",
        lambda w: {"key": w.keys["train-1"], "root": w.root + "/"},
        everywhere("train-1", NOT_SPELLED_IN_CLI),
    ),
    (
        "dict, relative root",
        lambda w: {"key": w.keys["train-1"], "root": _relative(w)},
        everywhere("train-1", NOT_SPELLED_IN_CLI),
    ),
    ("url, file://", lambda w: "file://" + _url(w, "train-1"), everywhere("train-1")),
    ("url, //", lambda w: "%s//%s" % (w.root, w.keys["train-1"]), everywhere("train-1")),
    ("url, /./", lambda w: "%s/./%s" % (w.root, w.keys["train-1"]), everywhere("train-1")),
    (
        "url, ..",
        lambda w: "%s/../%s/%s" % (w.root, os.path.basename(w.root), w.keys["train-1"]),
        everywhere("train-1"),
    ),
    ("url, relative", lambda w: "%s/%s" % (_relative(w), w.keys["train-1"]), everywhere("train-1")),
    # -- a task: its newest latest=True checkpoint
    ("task pathspec", lambda w: w.train, everywhere("train-2")),
    ("task object", lambda w: ("task", w.evaluate), everywhere("eval-0", NOT_SPELLED_IN_CLI)),
    # -- named checkpoints: a bare name among the versions the reader's namespace trusts
    ("name", lambda w: "resnet50", everywhere("resnet50-v2")),
    ("name@latest", lambda w: "resnet50@latest", everywhere("resnet50-v2")),
    ("name@version", lambda w: "resnet50@" + w.v3, everywhere("resnet50-v3")),
    ("name@prefix", lambda w: "resnet50@" + w.v1[:8], everywhere("resnet50-v1")),
    # was: the flow resnet50 (no checkpoint) for the client and the CLI, which asked
    # Metaflow whether a flow has that name; the named checkpoint in a task
    ("name@last", lambda w: "resnet50@last", everywhere("resnet50-v2")),
    ("name@best", lambda w: "resnet50@best:acc", everywhere("resnet50-v2")),
    # was: CheckpointNotFound in a task ('best:acc:max' taken for a version)
    ("name@best:max", lambda w: "resnet50@best:acc:max", everywhere("resnet50-v1")),
    ("untrusted name", lambda w: "theirs", everywhere(UNTRUSTED)),
    ("untrusted name@last", lambda w: "theirs@last", everywhere(UNTRUSTED)),
    (
        "no such name",
        lambda w: "nosuch",
        everywhere(Err("CheckpointNotFound", "No checkpoint named 'nosuch'")),
    ),
    (
        "no such version",
        lambda w: "resnet50@ffffffffff",
        everywhere(Err("CheckpointNotFound", "has no version matching 'ffffffffff'")),
    ),
    # -- aliases of the caller's own task: only inside a task (was: a lookup of a name outside)
    ("last", lambda w: "last", inside_outside("train-2", BARE_ALIAS)),
    ("best:acc", lambda w: "best:acc", inside_outside("train-side", BARE_ALIAS)),
    ("best:acc:max", lambda w: "best:acc:max", inside_outside("train-1", BARE_ALIAS)),
    # -- aliases of a target (was: a "Cannot load" config error in a task)
    ("Flow@last", lambda w: FLOW + "@last", everywhere("eval-0")),  # no checkpoint is so named
    ("Flow/@last", lambda w: FLOW + "/@last", everywhere("eval-0")),  # always the flow
    ("Flow/@best:max", lambda w: FLOW + "/@best:acc:max", everywhere("train-1")),
    (
        "flow named like a checkpoint",  # was: "Resnet50 has no checkpoint."
        lambda w: "resnet50/@last",
        everywhere(Err("CheckpointNotFound", "No checkpoint in flow resnet50.")),
    ),
    ("neither a name nor a flow", lambda w: "nosuch@last", everywhere(NEITHER)),
    ("Flow@best", lambda w: FLOW + "@best:acc", everywhere("train-side")),
    ("Flow/run@best:max", lambda w: "%s/%s@best:acc:max" % (FLOW, w.run), everywhere("train-1")),
    ("Flow/run/step@last", lambda w: "%s/%s/train@last" % (FLOW, w.run), everywhere("train-2")),
    ("task@best", lambda w: w.train + "@best:acc", everywhere("train-side")),
    ("task@best:max", lambda w: w.evaluate + "@best:acc:max", everywhere("eval-0")),
    (
        "no metric",
        lambda w: w.train + "@best:nope",
        everywhere(Err("CheckpointNotFound", "has a numeric metadata field 'nope'")),
    ),
    # -- malformed: a config error naming the input, before any I/O
    ("empty", lambda w: "", everywhere(Err("CheckpointConfigError", "it is empty"))),
    (
        "a run",
        lambda w: "%s/%s" % (FLOW, w.run),
        everywhere(Err("CheckpointConfigError", "say which, e.g. '%s/" % FLOW)),
    ),
    (
        "too deep",
        lambda w: "a/b/c/d/e",
        everywhere(Err("CheckpointConfigError", "is not a pathspec")),
    ),
    (
        "bad alias",
        lambda w: "best:acc:median",
        everywhere(Err("CheckpointConfigError", "is not an alias")),
    ),
    (
        "bad target alias",
        lambda w: FLOW + "@best:acc:median",
        everywhere(Err("CheckpointConfigError", "is not an alias")),
    ),
    (
        "bad version",
        lambda w: "resnet50@v-1",
        everywhere(Err("CheckpointConfigError", "unknown alias 'v-1'")),
    ),
    # -- short names (issue 15 items 4, 5): TASK@<id prefix>, TASK@field=value, typos
    ("task@short id", lambda w: w.train + "@" + _id(w, "train-0")[:8], everywhere("train-0")),
    ("task@ID", lambda w: w.train + "@" + _id(w, "train-1").upper(), everywhere("train-1")),
    (
        "task@no such id",
        lambda w: w.train + "@" + _absent_id(w),
        everywhere(Err("CheckpointNotFound", "has no checkpoint whose id starts with")),
    ),
    ("task@field=value", lambda w: w.train + "@label=train-1", everywhere("train-1")),
    ("task@number", lambda w: w.train + "@acc=0.5", everywhere("train-0")),
    ("task@side", lambda w: w.train + "@acc=0.1,label=train-side", everywhere("train-side")),
    ("run@field=value", lambda w: "%s/%s@acc=0.8" % (FLOW, w.run), everywhere("eval-0")),
    ("Flow/@field=value", lambda w: FLOW + "/@label=train-0", everywhere("train-0")),
    ("field=value", lambda w: "label=train-0", inside_outside("train-0", BARE_ALIAS)),
    (
        "no match",
        lambda w: w.train + "@label=nope",
        everywhere(Err("CheckpointNotFound", '(values seen: label: "train-0", "train-1"')),
    ),
    (
        "typo of last",
        lambda w: FLOW + "@lastt",
        everywhere(Err("CheckpointConfigError", "unknown alias 'lastt' (did you mean 'last'?)")),
    ),
    (
        "typo of best",
        lambda w: w.train + "@bset:acc",
        everywhere(Err("CheckpointConfigError", "(did you mean 'best:acc'?)")),
    ),
    (
        "a flow as a name",
        lambda w: FLOW + "@latest",
        everywhere(Err("CheckpointNotFound", "ResolverFlow is a flow with checkpoints: say which")),
    ),
    (
        "latest of a flow",
        lambda w: FLOW + "/@latest",
        everywhere(Err("CheckpointConfigError", "'latest' is the newest version of a named")),
    ),
    (
        "misspelt step",  # the client lists the run's steps (client/locate.py)
        lambda w: "%s/%s/trian@last" % (FLOW, w.run),
        inside_outside(
            Err(
                "CheckpointNotFound",
                "there is no step 'trian' with checkpoints in run %s/" % FLOW,
            ),
            Err("CheckpointNotFound", "trian"),
        ),
    ),
    (
        "bad name",
        lambda w: "bad name",
        everywhere(Err("CheckpointConfigError", "'bad name' is invalid")),
    ),
    (
        "dict without key",
        lambda w: {"nokey": 1},
        everywhere(Err("CheckpointConfigError", "needs a 'key' entry"), NOT_SPELLED_IN_CLI),
    ),
]


def _materialize(w: World, spelling: Any) -> Any:
    """The in-process value of a row's spelling (a reference object, a task object)."""
    if isinstance(spelling, tuple) and spelling[0] == "ref":
        store = local_store(w.root)
        return reference_of(store, store.read(spelling[1]))
    if isinstance(spelling, tuple) and spelling[0] == "task":
        return types.SimpleNamespace(pathspec=spelling[1])  # has what a Metaflow Task has
    return spelling


def _outcome(fn: Callable[..., Any], *args: Any) -> Any:
    """What ``fn(*args)`` returns, or the Metaflow error it raises (type name and message)."""
    from metaflow.exception import MetaflowException

    try:
        return fn(*args)
    except MetaflowException as exc:
        return {"error": type(exc).__name__, "message": exc.message}


def _check(row: str, context: str, got: Any, expected: Expected) -> Optional[str]:
    """A line saying what is wrong, or None."""
    if isinstance(expected, Err):
        if not isinstance(got, dict) or "error" not in got:
            return "%s [%s]: expected %s, got %r" % (row, context, expected, got)
        if (context != "cli" and got["error"] != expected.type) or (
            expected.fragment not in got["message"]
        ):
            return "%s [%s]: expected %s, got %r" % (row, context, expected, got)
        return None
    if got != expected:
        return "%s [%s]: expected %r, got %r" % (row, context, expected, got)
    return None


def _task_context(w: World, tmp: Path) -> TaskContext:
    store = local_store(w.root)
    scope = parse_key(w.keys["train-0"]).scope
    assert scope.pathspec == w.train
    directory = tmp / "task-dir"
    directory.mkdir()
    return TaskContext(root=store.url, scope=scope, directory=str(directory))


def _loaded(loader: Any, value: Any, path: Path) -> str:
    """The label of the checkpoint ``loader.load(value, path)`` wrote."""
    return Path(loader.load(value, str(path)), "label.txt").read_text()


def test_every_spelling_in_a_task_and_its_subprocess(world, tmp_path, monkeypatch):
    """current.checkpoint.load and Checkpoint() in a process of the task agree on every row."""
    from metaflow import Checkpoint

    monkeypatch.chdir(world.tmp)  # relative spellings: the cwd of the other contexts
    context = _task_context(world, tmp_path)
    runtime = context.runtime()
    monkeypatch.setenv(TASK_ENV, context.to_env())
    client = Checkpoint()
    problems = []
    for n, (row, spell, expected) in enumerate(ROWS):
        value = _materialize(world, spell(world))
        got = {
            "task": _outcome(_loaded, runtime, value, tmp_path / ("a%d" % n)),
            "subprocess": _outcome(_loaded, client, value, tmp_path / ("b%d" % n)),
        }
        for c in ("task", "subprocess"):
            problems.append(_check(row, c, got[c], expected[c]))
        # get() in the task's process resolves as load() does; a client reads any store.
        want = expected["subprocess"]
        if want == OTHER_STORE:
            want = expected["client"]
        got_get = _outcome(lambda v: client.get(v).metadata["label"], value)
        problems.append(_check(row, "subprocess get", got_get, want))
    assert [p for p in problems if p] == []


_PROBE = (
    PROBE_PRELUDE
    + """
from metaflow import Task
from metaflow._vendor.click.testing import CliRunner
from metaflow_extensions.checkpointing.plugins.checkpointing.cli import cli
from metaflow_extensions.checkpointing.plugins.checkpointing.common.reference import (
    CheckpointReference,
)

rows = json.loads(sys.argv[1])
for row, kind, value in rows:
    if kind == "ref":
        value = CheckpointReference(Checkpoint(root=sys.argv[2]).get(value))
    elif kind == "task":
        value = Task(value)
    attempt(row + "|client", lambda: Checkpoint().get(value).metadata["label"])
    if kind == "text":
        res = CliRunner().invoke(cli, ["checkpoint", "show", value, "--json"])
        if res.exit_code == 0:
            out[row + "|cli"] = json.loads(res.output)["metadata"]["label"]
        else:
            out[row + "|cli"] = {"error": "exit %d" % res.exit_code, "message": res.output}
print(json.dumps(out))
"""
)


def test_every_spelling_outside_a_task_and_in_the_cli(world):
    rows = []
    for row, spell, _ in ROWS:
        value = spell(world)
        if isinstance(value, tuple):
            rows.append((row, value[0], value[1]))
        else:
            rows.append((row, "dict" if isinstance(value, dict) else "text", value))
    script = world.tmp / "probe.py"
    script.write_text(_PROBE)
    proc = run_subprocess([script, json.dumps(rows), world.root], world.env, world.tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    problems = []
    for row, _, expected in ROWS:
        for c in ("client", "cli"):
            if expected[c] is not None:
                problems.append(_check(row, c, got.get(row + "|" + c), expected[c]))
    assert [p for p in problems if p] == []


def test_a_task_of_another_namespace_loads_with_namespace_check_false(world, tmp_path):
    """``current.checkpoint.load("Flow/run/step/task", namespace_check=False)`` in a task of
    another namespace loads that task's checkpoint, as loading by key does (issue 15 item 8;
    was: "has no checkpoint", the flag ignored); without the flag the error says whose it is."""
    import dataclasses

    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
        CheckpointScopeError,
    )

    theirs = parse_key(world.keys["eval-0"]).scope
    mine = dataclasses.replace(theirs, namespace="user:someone-else", run="999")
    directory = tmp_path / "dir"
    directory.mkdir()
    runtime = TaskContext(root=world.root, scope=mine, directory=str(directory)).runtime()
    short = world.train + "@" + parse_key(world.keys["train-1"]).id[:8]
    for spelling, label in ((world.train, "train-2"), (short, "train-1")):
        with pytest.raises(CheckpointScopeError, match="pass namespace_check=False"):
            runtime.load(spelling, str(tmp_path / "refused"))
        got = runtime.load(spelling, str(tmp_path / label), namespace_check=False)
        assert Path(got, "label.txt").read_text() == label
