"""Finding the code blocks of the user docs, checking what needs no run, and turning the rest
into something that runs.

Used by ``tests/test_doc_snippets.py`` (its docstring documents the contexts a block runs in):
here are the markdown reading, the checks of command lines against the click group and of
documented signatures against the code, and the generated flow source; running flows and
client code happens in the test.
"""

from __future__ import annotations

import ast
import inspect
import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]

#: The pages whose blocks are checked: the README and the user docs (not docs/design/).
PAGES = ["README.md"] + sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))

#: The kinds a ``<!-- snippet: KIND -->`` marker may name.
KINDS = ("flow", "step", "subprocess", "client", "signature", "skip")

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*snippet:\s*(?P<kind>[\w-]+)(?P<rest>.*?)-->\s*$")
_REASON = re.compile(r'^\s*reason="(?P<reason>[^"]+)"\s*$')
_FLOW_CLASS = re.compile(r"^class\s+(\w+)\s*\(\s*FlowSpec\s*\)\s*:", re.M)


@dataclass
class Block:
    """One fenced code block of a page."""

    page: str  # path relative to the repo
    line: int  # line of the opening fence (1-based)
    lang: str  # "python", "bash", "" ...
    code: str  # dedented content
    marker: Optional[str]  # the kind named by the marker right before the fence, if any
    marker_rest: str = ""  # what follows the kind in the marker (e.g. reason="...")

    @property
    def where(self) -> str:
        return "%s:%d" % (self.page, self.line)

    @property
    def kind(self) -> Optional[str]:
        """The marker's kind, else ``flow`` for a python block defining a FlowSpec, else None."""
        if self.marker:
            return self.marker
        if self.lang == "python" and self.flow_name():
            return "flow"
        return None

    @property
    def reason(self) -> Optional[str]:
        m = _REASON.match(self.marker_rest)
        return m.group("reason").strip() if m else None

    def flow_name(self) -> Optional[str]:
        m = _FLOW_CLASS.search(self.code)
        return m.group(1) if m else None

    @property
    def ident(self) -> str:
        """An identifier naming this block (a step name in generated flows)."""
        stem = re.sub(r"\W", "_", Path(self.page).stem.lower())
        return "%s_l%d" % (stem, self.line)


def page_blocks(page: str) -> list[Block]:
    """Every fenced block of ``page`` (relative to the repo), with its marker if any."""
    lines = (REPO / page).read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, indent, lang = i, m.group("indent"), m.group("lang")
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            j += 1
        body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[i + 1 : j]]
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        mm = _MARKER.match(lines[k]) if k >= 0 else None
        out.append(
            Block(
                page=page,
                line=start + 1,
                lang=lang,
                code=textwrap.dedent("\n".join(body)) + "\n",
                marker=mm.group("kind") if mm else None,
                marker_rest=mm.group("rest") if mm else "",
            )
        )
        i = j + 1
    return out


def all_blocks(pages: list[str] = PAGES) -> list[Block]:
    return [b for page in pages for b in page_blocks(page)]


# --- shell lines -------------------------------------------------------------------------------

_CLI_LINE = re.compile(r"^(?:\$\s+)?(?:metaflow|python3?\s+\S+\.py)\s+checkpoint\s+(?P<rest>.*)$")


@dataclass
class ShellCommand:
    where: str
    text: str
    command: str
    args: list[str]  # the tokens after the command, usage brackets and bars removed


def cli_lines(block: Block) -> list[ShellCommand]:
    """The ``metaflow checkpoint CMD ...``/``python F.py checkpoint CMD ...`` lines of a block.

    Usage notation is understood: ``[--dry-run]``, ``[TARGET | --flow F]``, ``REF / unpin REF``
    (several commands on one line), ``COMMAND`` (a placeholder, not checked).  Comments after
    ``#`` are dropped.
    """
    out = []
    for n, raw in enumerate(block.code.splitlines(), start=block.line + 1):
        line = raw.strip()
        if line.startswith("#"):
            continue
        m = _CLI_LINE.match(line)
        if not m:
            continue
        rest = m.group("rest")
        try:
            tokens = shlex.split(rest, comments=True)
        except ValueError:
            tokens = rest.split("#", 1)[0].split()
        # "pin REF / unpin REF": several commands on one usage line.
        groups: list[list[str]] = [[]]
        for t in tokens:
            if t == "/":
                groups.append([])
            else:
                groups[-1].append(t)
        for g in groups:
            if not g or g[0] in ("COMMAND", "CMD", "..."):
                continue
            args = [p for t in g[1:] for p in re.split(r"[\[\]|]", t) if p.strip()]
            for command in g[0].split("/"):  # "show/load/delete"
                out.append(ShellCommand("%s:%d" % (block.page, n), line, command, args))
    return out


def inline_blocks(page: str) -> list[Block]:
    """The inline code spans of ``page`` outside fences that are a checkpoint command line
    (`` `metaflow checkpoint gc --dry-run` ``), each as a one-line block."""
    out, in_fence = [], False
    for n, line in enumerate((REPO / page).read_text().splitlines(), start=1):
        if _FENCE.match(line) or re.match(r"^\s*```\s*$", line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for span in re.findall(r"`([^`]+)`", line):
            if _CLI_LINE.match(span.strip()):
                out.append(Block(page, n - 1, "inline", span.strip() + "\n", None))
    return out


def is_usage(text: str) -> bool:
    """A usage line (``[--dry-run]``, ``TARGET | --flow F``, ``<key>``, ``...``), not a command
    to type as it is."""
    return bool(re.search(r"[\[\]|<>]|\.\.\.|\b[A-Z]{2,}\b|\w/\w+/", text.split("#")[0]))


# --- signatures --------------------------------------------------------------------------------

_SIG_LINE = re.compile(r"^(?P<recv>@?[\w.]+(?:\(\))?)\.?(?P<meth>\w*)\((?P<params>.*)\)\s*(#.*)?$")


@dataclass
class DocSignature:
    where: str
    receiver: str  # "current.checkpoint", "Checkpoint()", "@checkpoint"
    method: str  # "" for the decorator
    params: ast.arguments


def signatures(block: Block) -> list[DocSignature]:
    """The documented call signatures of a block: ``recv.method(p, *, k=default)  # -> ...``.

    A statement may span lines (an open parenthesis continues it).  ``@checkpoint(a=1)``
    lines are the decorator's keyword arguments.
    """
    out = []
    lines = block.code.splitlines()
    i = 0
    while i < len(lines):
        first = i
        text = lines[i].split("  #", 1)[0].rstrip()
        while text.count("(") > text.count(")") and i + 1 < len(lines):
            i += 1
            text += " " + lines[i].split("  #", 1)[0].strip()
        i += 1
        text = text.strip()
        if not text or text.startswith(("#", "from ", "import ")):
            continue
        if text.startswith("@"):
            name, _, params = text[1:].partition("(")
            recv, meth = "@" + name, ""
            params = params[:-1] if params.endswith(")") else params
        else:
            m = re.match(r"^(?P<recv>[\w.]+(?:\(\))?)\.(?P<meth>\w+)\((?P<params>.*)\)$", text)
            if not m:
                raise ValueError(
                    "%s:%d: not a signature: %r" % (block.page, block.line + 1 + first, text)
                )
            recv, meth, params = m["recv"], m["meth"], m["params"]
        if recv.startswith("@"):
            # decorator usage: keyword arguments as they are written
            call = ast.parse("f(%s)" % params).body[0].value  # type: ignore[attr-defined]
            args = ast.arguments(
                posonlyargs=[],
                args=[],
                vararg=None,
                kwonlyargs=[ast.arg(k.arg) for k in call.keywords],
                kw_defaults=[k.value for k in call.keywords],
                kwarg=None,
                defaults=[],
            )
        else:
            args = ast.parse("def f(%s): pass" % params).body[0].args  # type: ignore[attr-defined]
        out.append(DocSignature("%s:%d" % (block.page, block.line + 1 + first), recv, meth, args))
    return out


# --- checks against the code ------------------------------------------------------------------


def cli_group():
    """The ``checkpoint`` click group both entry points serve."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.cli import cli

    return cli.commands["checkpoint"]


def option_problems(c: ShellCommand, cmd) -> list[str]:
    """Unknown options of a documented command line (an option's value is not an option)."""
    by_name = {o: p for p in cmd.params for o in p.opts + p.secondary_opts}
    by_name["--help"] = None
    out, args, i = [], c.args, 0
    while i < len(args):
        tok = args[i]
        i += 1
        if not tok.startswith("-") or tok == "-" or re.match(r"^-\d", tok):
            continue
        name = tok.split("=", 1)[0]
        if name not in by_name:
            out.append(
                "%s: `checkpoint %s` has no option %s (options: %s): %s"
                % (c.where, c.command, name, ", ".join(sorted(by_name)), c.text)
            )
            continue
        param = by_name[name]
        if param is not None and not param.is_flag and "=" not in tok:
            i += 1  # its value, which may start with "-" (--order-by -val_loss)
    return out


def shell_problems(pages: list[str]) -> tuple[list[str], int]:
    """Problems of the checkpoint command lines of ``pages`` (blocks and inline code), and how
    many lines were checked."""
    from metaflow._vendor import click

    group = cli_group()
    problems, seen = [], 0
    blocks = all_blocks(pages) + [b for page in pages for b in inline_blocks(page)]
    for b in blocks:
        for c in cli_lines(b):
            seen += 1
            cmd = group.commands.get(c.command)
            if cmd is None:
                problems.append(
                    "%s: no command %r (commands: %s): %s"
                    % (c.where, c.command, ", ".join(sorted(group.commands)), c.text)
                )
                continue
            found = option_problems(c, cmd)
            problems += found
            if not found and b.lang != "inline" and not is_usage(c.text):
                # A block's line to type as it is: click parses it (arguments, values).
                # (Prose may name a command without its arguments: `metaflow checkpoint gc`.)
                try:
                    cmd.make_context(cmd.name, list(c.args))
                except click.exceptions.Exit:
                    pass
                except click.UsageError as exc:
                    problems.append("%s: %s: %s" % (c.where, exc.format_message(), c.text))
    return problems, seen


def real_callable(receiver: str, method: str):
    """What a documented receiver means: ``current.checkpoint`` is the task's runtime,
    ``Checkpoint()`` the client, ``@checkpoint`` the decorator class."""
    from metaflow import Checkpoint

    from metaflow_extensions.checkpointing.plugins.checkpointing.task.decorator import (
        CheckpointDecorator,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.runtime import (
        CheckpointRuntime,
    )

    if receiver == "@checkpoint":
        return CheckpointDecorator
    owner = {"current.checkpoint": CheckpointRuntime, "Checkpoint()": Checkpoint}[receiver]
    return getattr(owner, method)


def signature_problems(sig: DocSignature) -> list[str]:
    """How a documented signature differs from the real one: a parameter it does not have, a
    positional one out of place, a keyword-only one that is positional-only, another default."""
    real = real_callable(sig.receiver, sig.method)
    label = "%s.%s" % (sig.receiver, sig.method) if sig.method else sig.receiver
    if sig.receiver == "@checkpoint":
        names = set(real.defaults)
        return [
            "%s: @checkpoint has no attribute %r (it has: %s)" % (sig.where, a.arg, sorted(names))
            for a in sig.params.kwonlyargs
            if a.arg not in names
        ]
    params = dict(inspect.signature(real).parameters)
    params.pop("self", None)
    out = []
    a = sig.params
    positional = a.posonlyargs + a.args
    pos_defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    real_positional = [
        n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    documented = [(arg, d, True) for arg, d in zip(positional, pos_defaults)] + [
        (arg, d, False) for arg, d in zip(a.kwonlyargs, a.kw_defaults)
    ]
    for i, (arg, default, is_pos) in enumerate(documented):
        p = params.get(arg.arg)
        if p is None:
            out.append(
                "%s: %s has no parameter %r (real: %s)"
                % (sig.where, label, arg.arg, inspect.signature(real))
            )
            continue
        if is_pos and (i >= len(real_positional) or real_positional[i] != arg.arg):
            out.append(
                "%s: %s: %r is not positional parameter #%d (real: %s)"
                % (sig.where, label, arg.arg, i + 1, inspect.signature(real))
            )
        if not is_pos and p.kind == p.POSITIONAL_ONLY:
            out.append("%s: %s: %r is positional-only" % (sig.where, label, arg.arg))
        if default is not None:
            doc_default = ast.literal_eval(default)
            if p.default is p.empty or p.default != doc_default:
                out.append(
                    "%s: %s: %s defaults to %r, the docs say %r"
                    % (
                        sig.where,
                        label,
                        arg.arg,
                        None if p.default is p.empty else p.default,
                        doc_default,
                    )
                )
    return out


# --- generated flows ---------------------------------------------------------------------------

#: What a generated flow imports for its step fragments (documented in the test's docstring).
STEP_PRELUDE = """\
import os
import subprocess
import sys

from metaflow import (
    Checkpoint, Every, FlowSpec, TrainingState, card, checkpoint, current, environment, retry,
    step,
)


class _Torch:
    # torch, imported on first use: a step that does not use it does not pay for it.

    def __getattr__(self, name):
        import torch

        return getattr(torch, name)


torch = _Torch()
"""


def _as_step(block: Block) -> ast.FunctionDef:
    """The block as a step method named after it: its own decorated ``def``, its statements as
    the body of a ``@checkpoint`` step, or (``subprocess``) a script that step runs."""
    if block.kind == "subprocess":
        # A script a step starts: run as `python -c CODE` by a @checkpoint step.
        code = "subprocess.run([sys.executable, '-c', %r], check=True)" % block.code
        tree = ast.parse(code)
    else:
        tree = ast.parse(block.code)
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if len(tree.body) == 1 and defs:
        fn = defs[0]
    else:
        fn = ast.parse("@checkpoint\n@step\ndef f(self):\n    pass\n").body[0]
        fn.body = tree.body  # type: ignore[attr-defined]
    fn.name = block.ident  # type: ignore[attr-defined]
    return fn  # type: ignore[return-value]


def step_flow(blocks: list[Block], name: str = "DocStepsFlow") -> str:
    """Source of one flow running each block as a step: start -> block 1 -> ... -> end."""
    steps = [_as_step(b) for b in blocks]
    names = [s.name for s in steps] + ["end"]
    for fn, nxt in zip(steps, names[1:]):
        fn.body.append(ast.parse("self.next(self.%s)" % nxt).body[0])
    body = ["class %s(FlowSpec):" % name]
    body.append("    @step\n    def start(self):\n        self.next(self.%s)\n" % names[0])
    for fn in steps:
        body.append(textwrap.indent(ast.unparse(fn), "    ") + "\n")
    body.append("    @step\n    def end(self):\n        pass\n")
    main = '\nif __name__ == "__main__":\n    %s()\n' % name
    return STEP_PRELUDE + "\n\n" + "\n".join(body) + main
