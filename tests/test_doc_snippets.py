"""Every code block of the README and the user docs (``docs/*.md``, not ``docs/design/``) runs
as written, or says why it cannot; a failure names the page and line of the block.

How a ```` ```python ```` block runs is decided by the block itself or by an HTML comment on the
line right before its fence (invisible on the rendered page)::

    <!-- snippet: step -->

- **flow** (no marker needed: the block defines a ``FlowSpec``): written to a file and run with
  ``metaflow.Runner`` on the local datastore, in its own temp dir and Metaflow home.  A flow that
  reads another flow's run (``Flow(...)`` in its code) runs where the fixture flow ran.
- **step**: the block is a step: its own decorated ``def`` (any name), or statements that become
  the body of a ``@checkpoint`` step.  All step blocks of all pages are steps of ONE generated
  flow (``start -> block -> block -> ... -> end``, ``self.next`` appended), run where the
  fixture flow ran, beside a ``train.py`` that writes a file into ``$METAFLOW_CHECKPOINT_DIR``;
  the failing step names its block.  The flow file imports ``os``,
  ``subprocess``, ``sys``, ``torch`` and, from ``metaflow``, ``Checkpoint``, ``Every``,
  ``FlowSpec``, ``TrainingState``, ``card``, ``checkpoint``, ``current``, ``environment``,
  ``retry``, ``step``: a block uses nothing else it does not define or import itself.
- **subprocess**: a script a ``@checkpoint`` step starts (a ``torchrun`` worker): a step of that
  generated flow runs it with ``python -c``, so it sees the task's environment.
- **client**: run in a notebook-like process after the fixture flow, each block in a fresh
  working directory holding ``resnet50.pt`` and ``model.pt`` (torch-saved tensors), with
  ``Checkpoint``, ``Flow``, ``os``, ``torch``, ``run`` (the fixture's run) and ``ref`` (its newest
  checkpoint) bound.  All client blocks run in one process, each in its own try.
- **signature**: a documented signature (``Checkpoint().list(target=None, *, name=None)`` or
  ``@checkpoint(load_policy="eager")``): every parameter it names exists in the real one, of
  the same kind (positional / keyword-only), with the same default.
- **skip** ``reason="..."``: only for what cannot run here (a cluster, a cloud account, several
  nodes); the reason is required and ``SKIPS`` below counts the skips of each page, so a new
  skip is a visible change to this file.

The fixture flow (:data:`FIXTURE_FLOW`, once per test session and worker) is ``TrainFlow``
whose step ``train`` saves ``state.pt`` three times with metadata ``epoch``, ``loss`` and
``val_loss`` and keeps the last reference in ``self.final_checkpoint``; then the named checkpoint
``resnet50`` is uploaded.  Shell blocks: every ``metaflow checkpoint CMD ...`` and
``python F.py checkpoint CMD ...`` line names a real command and real options of the click group.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from conftest import flow_environment
from docsnippets import (
    KINDS,
    PAGES,
    all_blocks,
    shell_problems,
    signature_problems,
    signatures,
    step_flow,
)
from integration.flowrun import run_flow, run_subprocess

#: Skipped blocks per page. A new skip changes this (and needs its reason in the marker).
SKIPS = {
    "docs/configuration.md": 1,
    "docs/distributed.md": 4,
    "docs/faq.md": 1,
    "docs/huggingface.md": 1,
    "docs/platforms.md": 1,
    "docs/pytorch.md": 1,
}

#: Every page: the README and docs/*.md (not docs/design/).
COVERED = PAGES

#: torch in every flow uses one thread: the tests share 2 cores with other test processes.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}

FIXTURE_FLOW = """\
import os

import torch
from metaflow import FlowSpec, checkpoint, current, step


class TrainFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @checkpoint
    @step
    def train(self):
        model = torch.nn.Linear(2, 1)
        for epoch in range(3):
            torch.save(model.state_dict(), os.path.join(current.checkpoint.directory, "state.pt"))
            loss = 1.0 / (epoch + 1)
            self.final_checkpoint = current.checkpoint.save(
                metadata={"epoch": epoch, "loss": loss, "val_loss": loss + 0.1}
            )
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TrainFlow()
"""

#: ``train.py`` beside the flows: a training script writing into the task's checkpoint directory.
TRAIN_SCRIPT = """\
import os

with open(os.path.join(os.environ["METAFLOW_CHECKPOINT_DIR"], "weights.txt"), "w") as f:
    f.write("trained")
"""

#: Runs every client block (a JSON list on stdin) in its own dir and try; prints the outcomes.
CLIENT_RUNNER = r"""
import json, os, sys, tempfile, traceback
import torch
from metaflow import Checkpoint, Flow

blocks = json.load(sys.stdin)
base = os.getcwd()
results = {}
for i, (where, code) in enumerate(blocks):
    d = tempfile.mkdtemp(prefix="client-", dir=base)
    torch.save(torch.zeros(2), os.path.join(d, "resnet50.pt"))
    torch.save(torch.zeros(2), os.path.join(d, "model.pt"))
    os.chdir(d)
    run = Flow("TrainFlow").latest_run
    env = {"__name__": "__snippet__", "Checkpoint": Checkpoint, "Flow": Flow, "os": os,
           "torch": torch, "run": run, "ref": Checkpoint().list(run, limit=1)[0]}
    try:
        exec(compile(code, where, "exec"), env)
        results[where] = None
    except BaseException:
        results[where] = traceback.format_exc()
    os.chdir(base)
print("RESULTS:" + json.dumps(results))
"""


def _blocks(kind: str, pages: list[str] = COVERED):
    return [b for b in all_blocks(pages) if b.lang == "python" and b.kind == kind]


def _dedup(blocks):
    """One block per distinct code (the README and index.md share the quick-start flow)."""
    seen: dict[str, object] = {}
    for b in blocks:
        seen.setdefault(b.code, b)
    return list(seen.values())


@pytest.fixture(scope="module", autouse=True)
def _global_client_namespace():
    """Runner's ``Run`` objects are read in this process, whose user name tests don't set."""
    from metaflow import namespace

    namespace(None)
    yield


def _read_flows() -> set[str]:
    """Names of the flows the client blocks read (``Flow("CounterFlow")``)."""
    return {m for b in _blocks("client") for m in re.findall(r'Flow\("(\w+)"\)', b.code)}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The datastore of the fixture ``TrainFlow``, ``resnet50`` and the doc flows client blocks
    read: ``(env, cwd, {code: FlowResult})`` (the doc flows' results, not asserted here)."""
    tmp = tmp_path_factory.mktemp("docs-fixture")
    (tmp / "home").mkdir()
    env = flow_environment(tmp, **ONE_THREAD)
    (tmp / "train_flow.py").write_text(FIXTURE_FLOW)
    (tmp / "train.py").write_text(TRAIN_SCRIPT)
    run_flow(tmp / "train_flow.py", env, tmp)
    upload = run_subprocess(
        [
            "-c",
            "import torch; from metaflow import Checkpoint; torch.save(torch.zeros(2), 'r.pt');"
            "Checkpoint().save('r.pt', name='resnet50')",
        ],
        env,
        tmp,
    )
    assert upload.returncode == 0, upload.stderr
    read = _read_flows() - {"TrainFlow"}
    ran = {}
    for b in _dedup(_blocks("flow")):
        if b.flow_name() in read:
            path = tmp / ("doc_%s.py" % b.ident)
            path.write_text(b.code)
            ran[b.code] = run_flow(path, env, tmp, expect=None)
    return env, tmp, ran


# --- fast checks (no flow runs) ----------------------------------------------------------------


def test_every_python_block_of_the_covered_pages_says_how_it_runs():
    """A python block is a flow or carries a known marker; a skip names its reason."""
    problems = []
    skips: Counter = Counter()
    for b in all_blocks(COVERED):
        if b.marker is not None and b.marker not in KINDS:
            problems.append("%s: unknown snippet kind %r (one of %s)" % (b.where, b.marker, KINDS))
        if b.lang != "python":
            continue
        if b.kind is None:
            problems.append(
                "%s: a python fragment without a marker: add <!-- snippet: step|client|"
                'signature|skip reason="..." --> on the line before its fence, or make it a '
                "complete flow" % b.where
            )
        if b.kind == "skip":
            skips[b.page] += 1
            if not b.reason:
                problems.append('%s: a skip needs reason="..."' % b.where)
    assert not problems, "\n".join(problems)
    expected = {p: n for p, n in SKIPS.items() if p in COVERED and n}
    assert dict(skips) == expected, "skipped blocks per page changed: update SKIPS"


def test_shell_lines_name_real_commands_and_options():
    """Every `metaflow checkpoint CMD --opt` in the docs (blocks and inline code) is a command
    and options that exist; a block's complete line parses as the CLI parses it."""
    problems, seen = shell_problems(COVERED)
    assert not problems, "\n".join(problems)
    assert seen > 50


def test_documented_signatures_match_the_code():
    """Parameter names, kinds and defaults in the docs are those of the real methods."""
    problems, seen = [], 0
    for b in _blocks("signature"):
        for sig in signatures(b):
            seen += 1
            problems += signature_problems(sig)
    assert not problems, "\n".join(problems)


# --- blocks that run ---------------------------------------------------------------------------


def _flow_params():
    return [pytest.param(b, id=b.where) for b in _dedup(_blocks("flow"))]


@pytest.mark.parametrize("block", _flow_params())
def test_flow_block_runs(block, tmp_path, request):
    """A block defining a flow runs to success as written."""
    if block.flow_name() in _read_flows() - {"TrainFlow"}:
        result = request.getfixturevalue("trained")[2][block.code]  # ran there for the client
    else:
        reads = re.search(r"(?<![\w.])Flow\(", block.code)  # Flow("X"), not class XFlow(
        (tmp_path / "home").mkdir()
        own = flow_environment(tmp_path, **ONE_THREAD), tmp_path
        env, cwd = request.getfixturevalue("trained")[:2] if reads else own
        path = Path(cwd) / ("doc_%s.py" % block.ident)
        path.write_text(block.code)
        result = run_flow(path, env, cwd, expect=None)
    assert result.status == "successful", "%s: the flow did not run:\n%s" % (
        block.where,
        result.describe(),
    )


def _run_step_blocks(blocks, trained):
    """Run ``blocks`` as the steps of one flow: (the failing block's place or None, result)."""
    env, cwd, _ = trained
    path = Path(cwd) / "doc_steps.py"
    path.write_text(step_flow(blocks))
    result = run_flow(path, env, cwd, expect=None)
    if result.status == "successful":
        return None, result
    by_step = {b.ident: b for b in blocks}
    failed = [ln.step for ln in _task_lines(result) if ln.msg.strip() == "Task failed."]
    if failed and failed[-1] in by_step:
        return by_step[failed[-1]].where, result
    return "(step %r of the generated flow)" % (failed[-1] if failed else None), result


def test_step_blocks_run_as_steps_of_one_flow(trained):
    """Every step fragment runs as a step; a failure names the block of the failing step."""
    blocks = _dedup(_blocks("step") + _blocks("subprocess"))
    where, result = _run_step_blocks(blocks, trained)
    assert where is None, "%s: the step block failed:\n%s" % (where, result.describe())


def _task_lines(result):
    from integration.flowrun import _TASK_LINE, TaskLine

    out = []
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        m = _TASK_LINE.search(line)
        if m:
            out.append(TaskLine(m["run"], m["step"], m["task"], int(m["pid"]), m["msg"]))
    return out


def _run_client_blocks(blocks, trained) -> dict:
    """Run ``blocks`` in one notebook-like process: {place: traceback} of those that failed."""
    import subprocess

    from integration.flowrun import subprocess_env

    env, cwd, _ = trained
    out = subprocess.run(
        [sys.executable, "-c", CLIENT_RUNNER],
        input=json.dumps([[b.where, b.code] for b in blocks]),
        env=subprocess_env(env),
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULTS:")]
    assert line, out.stdout[-3000:] + out.stderr[-3000:]
    return {w: tb for w, tb in json.loads(line[-1][len("RESULTS:") :]).items() if tb}


def test_client_blocks_run_after_a_flow(trained):
    """Every client block runs against the fixture's run; a failure names its block."""
    failed = _run_client_blocks(_dedup(_blocks("client")), trained)
    assert not failed, "\n".join(
        "%s: the client block failed:\n%s" % (w, textwrap.indent(tb, "    "))
        for w, tb in failed.items()
    )


# --- the checks catch what they are for ---------------------------------------------------------

BROKEN_PAGE = """\
# A page with mistakes

```python
current.checkpoint.save(metadata={"epoch": 1})
```

<!-- snippet: skip -->
```python
print("no reason given")
```

```bash
metaflow checkpoint lst TrainFlow
metaflow checkpoint list TrainFlow --order-by -val_loss --limt 3
metaflow checkpoint gc now
```

<!-- snippet: signature -->
```python
Checkpoint().best(target=None, *, metrics, mode="max")
```

Reclaim space with `metaflow checkpoint gc --dryrun`.
"""


def test_the_checks_name_the_page_and_line_of_each_mistake(tmp_path):
    """An unmarked fragment, a skip without reason, a misspelt command or option (in a block or
    in prose), an extra argument and a wrong signature are each reported with their page and
    line (a value like -val_loss is not an option)."""
    page = tmp_path / "broken.md"
    page.write_text(BROKEN_PAGE)
    blocks = all_blocks([str(page)])
    fragment, skip, shell, sig = blocks
    assert fragment.kind is None and fragment.where == "%s:3" % page
    assert skip.kind == "skip" and skip.reason is None
    problems, seen = shell_problems([str(page)])
    assert seen == 4
    assert [p.split(": ", 1)[0] for p in problems] == [
        "%s:%d" % (page, n) for n in (13, 14, 15, 23)
    ]
    assert "no command 'lst'" in problems[0]
    assert "no option --limt" in problems[1]  # and -val_loss is --order-by's value
    assert "unexpected extra argument" in problems[2]
    assert "no option --dryrun" in problems[3]
    found = signature_problems(signatures(sig)[0])
    assert any("no parameter 'metrics'" in p for p in found), found
    assert any("mode defaults to 'min', the docs say 'max'" in p for p in found), found
    assert all(p.startswith("%s:20:" % page) for p in found), found


def test_a_failing_client_block_is_named_and_the_others_still_run(trained):
    """Each client block runs in its own try: one that fails is reported by its page and line,
    the next one still runs."""
    from docsnippets import Block

    bad = Block("broken.md", 3, "python", 'Checkpoint().list(run, step="nope")\n', "client")
    good = Block("broken.md", 9, "python", "assert run.id and ref.pathspec\n", "client")
    failed = _run_client_blocks([bad, good], trained)
    assert list(failed) == ["broken.md:3"], failed
    assert "nope" in failed["broken.md:3"]


def test_a_failing_step_block_is_named(trained):
    """The step flow's failure names the block of the step that failed, not its neighbours."""
    from docsnippets import Block

    blocks = [
        Block("broken.md", 3, "python", "x = 1\n", "step"),
        Block("broken.md", 9, "python", 'raise ValueError("snippet broke")\n', "step"),
        Block("broken.md", 15, "python", "y = 2\n", "step"),
    ]
    where, result = _run_step_blocks(blocks, trained)
    assert result.status == "failed"
    assert where == "broken.md:9", result.describe()
