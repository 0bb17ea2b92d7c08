"""Every spelling of a checkpoint reference, parsed into one value (:class:`RefSpec`).

This module only reads the spelling: it does no I/O and knows no store.  What a spec designates
is decided by :func:`.resolver.resolve` for a caller (a task or a client).  The spellings:

======================================  ==========  ===========================================
spelling                                kind        designates
======================================  ==========  ===========================================
``CheckpointReference`` / ``{"key":     ``key``     exactly that checkpoint (``root``: the store
...[, "root": ...]}``                               it lives in; absent: the caller's store)
``manifests/<ns>/.../<file>.json``      ``key``     that checkpoint in the caller's store
``<root>/manifests/.../<file>.json``    ``key``     that checkpoint in the store ``<root>``
``Flow/run/step/task`` or a ``Task``    ``task``    the task's newest ``latest=True`` checkpoint
``Flow/run/step/task@<id prefix>``      ``task``    the task's checkpoint whose version id starts
                                                    so (4+ hex digits; ``ref.short_id``)
``resnet50``, ``resnet50@latest``       ``named``   the newest version the reader trusts
``resnet50@<id prefix>``                ``named``   that version, whoever published it
``last``, ``best:<metric>[:min|max]``   ``alias``   among the caller's own task's checkpoints
``<field>=<value>[,<field>=<value>]``   ``alias``   the newest of them whose metadata match
``<target>@last``,                      ``alias``   among the checkpoints of a target: a
``<target>@best:<metric>[:min|max]``,               pathspec ``Flow/``, ``Flow/run[/step[/task]]``
``<target>@<field>=<value>[,...]``                  (always a flow's), or one word: the named
                                                    checkpoint of that name if the caller's
                                                    store has one, else the flow of that name
======================================  ==========  ===========================================

After ``@`` (ADR 005 "refs"): an alias, ``latest``, 4 to 64 hex digits (a version id prefix:
aliases hold non-hex letters), a metadata match (:mod:`.match`: anything with ``=``), else an
unknown alias (``Flow@lastt`` is a typo, never a version ``lastt`` of a named ``Flow``).

A root (a dict's ``root``, the part of a URL before ``/manifests/``) is normalised by
:func:`..storage.factory.normalize_root`, so every spelling of one store is one value.

Anything else raises :class:`~..errors.CheckpointConfigError` naming the input and these forms.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Optional

from ..core import layout
from ..core.manifest import is_manifest_key
from ..core.scope import validate_name
from ..errors import CheckpointConfigError
from ..storage.factory import normalize_root
from .match import format_match, parse_match

KEY, TASK, NAMED, ALIAS = "key", "task", "named", "alias"
#: How a named checkpoint says "the newest trusted version" explicitly.
LATEST = "latest"
LAST = "last"
#: The fewest hex digits of a version id a reference may give (``TASK@1a2b``, ``name@1a2b``).
MIN_ID_PREFIX = 4
#: A version as written after ``@``: a version id (16 hex digits) or a prefix of one.
_VERSION_RE = re.compile(r"[0-9a-f]{%d,64}" % MIN_ID_PREFIX)
_HEX_RE = re.compile(r"[0-9a-f]+")
#: What may follow ``@``, as error messages list it.
AFTER_AT = (
    "'last', 'best:<metric>' or 'best:<metric>:max' (aliases), a version id or its first %d+ "
    "hex digits (the ID column of `metaflow checkpoint list`, ref.short_id), '<field>=<value>' "
    "(newest checkpoint with that metadata; several joined with ','), or 'latest' (the newest "
    "trusted version of a named checkpoint)" % MIN_ID_PREFIX
)
#: One component of a pathspec: Metaflow ids and names hold no '/', '@' nor whitespace.
_COMPONENT_RE = re.compile(r"[^/@\s]+")

FORMS = (
    "a reference returned by save()/list()/get() or a dict with its 'key' (and 'root'), a "
    "manifest key or URL, a task pathspec 'Flow/run_id/step/task_id' or Task (or "
    "'Flow/run_id/step/task_id@<id>'), a name 'resnet50' or 'resnet50@<version>', or an "
    "alias: 'last', 'best:<metric>[:min|max]' or '<field>=<value>' (the running task's "
    "checkpoints) or '<Flow/[run_id[/step[/task_id]]] or name>@last' / "
    "'...@best:<metric>[:max]' / '...@<field>=<value>' (one word before '@': a named "
    "checkpoint, else a flow)"
)


@dataclass(frozen=True)
class Target:
    """A pathspec ``Flow[/run[/step[/task]]]``: what a listing or an alias looks among."""

    flow: str
    run: Optional[str] = None
    step: Optional[str] = None
    task: Optional[str] = None

    @property
    def pathspec(self) -> str:
        return "/".join(p for p in (self.flow, self.run, self.step, self.task) if p)


@dataclass(frozen=True)
class Alias:
    """A checkpoint chosen by role: the newest ``latest=True`` one (``metric`` None: ``last``),
    the best by a numeric metadata field (``best:<metric>``, lowest unless ``mode="max"``), or
    the newest whose metadata holds every ``(field, value)`` of ``where`` (``epoch=3``)."""

    metric: Optional[str] = None
    mode: str = "min"
    where: tuple = ()

    @property
    def text(self) -> str:
        if self.where:
            return format_match(self.where)
        if self.metric is None:
            return LAST
        return "best:%s%s" % (self.metric, ":max" if self.mode == "max" else "")


@dataclass(frozen=True)
class RefSpec:
    """One parsed reference.

    Attributes
    ----------
    kind : str
        ``"key"``, ``"task"``, ``"named"`` or ``"alias"``.
    key : str, optional
        The manifest key (kind ``key``).
    root : str, optional
        The store the key lives in (kind ``key``); None: the caller's store.
    target : Target, optional
        The task (kind ``task``), or the pathspec an alias picks among (kind ``alias``).
    name : str, optional
        The named checkpoint (kind ``named``), or the one word before ``@`` of an alias (kind
        ``alias``): the named checkpoint of that name if the caller's store has one, else the
        flow of that name (``Flow/@last`` is a ``target``: always the flow).  An alias with
        neither ``target`` nor ``name`` picks among the caller's own task's.
    version : str
        A version id or prefix (kind ``named``; kind ``task``: that checkpoint of the task);
        ``""``: the newest trusted version (named), the task's newest ``latest=True`` (task).
    alias : Alias, optional
        The role (kind ``alias``).
    """

    kind: str
    key: Optional[str] = None
    root: Optional[str] = None
    target: Optional[Target] = None
    name: Optional[str] = None
    version: str = ""
    alias: Optional[Alias] = None

    @property
    def pinned(self) -> bool:
        """Whether this names one version explicitly (a key, a task's, ``name@<version>``):
        then who asks does not change which checkpoint it is."""
        return self.kind != NAMED or bool(self.version)

    def text(self) -> str:
        """The string spelling of this spec (``parse(spec.text()) == spec``)."""
        if self.kind == KEY:
            return "%s/%s" % (self.root, self.key) if self.root else str(self.key)
        if self.kind == TASK:
            pathspec = self.target.pathspec  # type: ignore[union-attr]
            return "%s@%s" % (pathspec, self.version) if self.version else pathspec
        if self.kind == NAMED:
            if self.version:
                return "%s@%s" % (self.name, self.version)
            # A checkpoint named like an alias is spelled with @latest.
            return "%s@%s" % (self.name, LATEST) if _is_alias(str(self.name)) else str(self.name)
        role = self.alias.text  # type: ignore[union-attr]
        if self.target is not None:
            # A flow alone keeps its slash: 'Flow@last' could mean a named checkpoint.
            flow_only = self.target.run is None
            before = self.target.pathspec + ("/" if flow_only else "")
        else:
            before = self.name
        return "%s@%s" % (before, role) if before else role

    def __str__(self) -> str:
        return self.text()


# ------------------------------------------------------------------------------ parsing
def parse(reference: Any) -> RefSpec:
    """The :class:`RefSpec` of any spelling of a reference (see the module docstring).

    Raises
    ------
    CheckpointConfigError
        ``reference`` is in none of the accepted forms; the message names it and the forms.
        Nothing is read.
    """
    if isinstance(reference, RefSpec):
        return reference
    if isinstance(reference, dict):
        return _parse_mapping(reference)
    if not isinstance(reference, str):
        pathspec = getattr(reference, "pathspec", None)
        if isinstance(pathspec, str):
            return RefSpec(TASK, target=task_target(reference))
        raise _bad(reference, "it is a %s" % type(reference).__name__)
    text = reference.strip()
    if not text:
        raise _bad(reference, "it is empty")
    by_key = key_spec(text)
    if by_key is not None:
        return by_key
    field = text.partition("@")[0].partition("=")  # names hold no '=': a match, alone
    if field[1] and "/" not in field[0] and not _is_alias(text):
        return RefSpec(ALIAS, alias=Alias(where=parse_match(text)))
    if "@" in text:
        return _parse_at(reference, text)
    if _is_alias(text):
        return RefSpec(ALIAS, alias=parse_alias(text))
    if "/" in text:
        target = _pathspec(reference, text)
        if target.task is None:
            raise _bad(
                reference,
                "a flow, run or step holds many checkpoints: say which, e.g. '%s@last' or "
                "'%s@best:<metric>'" % (target.pathspec, target.pathspec),
            )
        return RefSpec(TASK, target=target)
    if ":" in text and did_you_mean(text):  # 'bset:loss' alone: an alias misspelt, no name
        raise _bad(reference, "unknown alias %r%s" % (text, did_you_mean(text)))
    return RefSpec(NAMED, name=_name(reference, text))


def key_spec(reference: Any) -> Optional[RefSpec]:
    """The spec of a reference given by key (a mapping with ``key``, a manifest key, a manifest
    URL), else None; nothing is read.

    Raises
    ------
    CheckpointConfigError
        A mapping without a manifest key in ``key``.
    """
    if isinstance(reference, dict):
        return _parse_mapping(reference)
    if isinstance(reference, RefSpec):
        return reference if reference.kind == KEY else None
    if not isinstance(reference, str):
        return None
    text = reference.strip()
    if is_manifest_key(text):
        return RefSpec(KEY, key=text)
    split = _split_url(text)
    return None if split is None else RefSpec(KEY, key=split[1], root=split[0])


def task_target(task: Any) -> Target:
    """The task pathspec of a string or a Metaflow ``Task`` object.

    Raises
    ------
    CheckpointConfigError
        Not a task (a flow, run or step, or not a pathspec at all).
    """
    pathspec = getattr(task, "pathspec", task)
    target = None
    if isinstance(pathspec, str):
        parts = pathspec.strip().strip("/").split("/")
        if len(parts) == 4 and all(_COMPONENT_RE.fullmatch(p) for p in parts):
            target = Target(*parts)
    if target is None:
        raise CheckpointConfigError(
            "%r is not a task: pass a Metaflow Task or a pathspec 'Flow/run_id/step/task_id'."
            % (task,)
        )
    return target


def parse_target(target: Any) -> Target:
    """A listing :class:`Target` from a pathspec string or a Metaflow Flow/Run/Step/Task.

    Raises
    ------
    CheckpointConfigError
        Not a pathspec of 1 to 4 components.
    """
    pathspec = getattr(target, "pathspec", target)
    parts = pathspec.strip().strip("/").split("/") if isinstance(pathspec, str) else []
    if not parts or len(parts) > 4 or not all(_COMPONENT_RE.fullmatch(p) for p in parts):
        raise CheckpointConfigError(
            "%r is not a pathspec: use 'Flow', 'Flow/run_id', 'Flow/run_id/step' or "
            "'Flow/run_id/step/task_id', or a Metaflow Flow/Run/Step/Task object." % (target,)
        )
    return Target(*parts)


def parse_alias(text: str) -> Alias:
    """``last`` or ``best:<metric>[:min|max]``.

    Raises
    ------
    CheckpointConfigError
        Anything else (e.g. ``best:`` or ``best:loss:median``).
    """
    if text == LAST:
        return Alias()
    parts = text.split(":")
    if (
        parts[0] != "best"
        or len(parts) not in (2, 3)
        or not parts[1].strip()
        or (len(parts) == 3 and parts[2] not in ("min", "max"))
    ):
        raise CheckpointConfigError(
            "%r is not an alias: use 'last', 'best:<metric>' or 'best:<metric>:max'." % (text,)
        )
    return Alias(parts[1], parts[2] if len(parts) == 3 else "min")


def _parse_mapping(reference: dict) -> RefSpec:
    key, root = reference.get("key"), reference.get("root")
    if not isinstance(key, str) or not is_manifest_key(key.strip()):
        raise CheckpointConfigError(
            "Cannot use %r as a checkpoint reference: a reference mapping needs a 'key' entry "
            "holding a manifest key (as in a reference returned by save() or list())."
            % (reference,)
        )
    if root is not None and not isinstance(root, str):
        raise CheckpointConfigError(
            "Cannot use %r as a checkpoint reference: its 'root' must be a path or URL."
            % (reference,)
        )
    return RefSpec(KEY, key=key.strip(), root=_root(root))


def _parse_at(reference: str, text: str) -> RefSpec:
    # Names and pathspecs hold no '@': the first one ends them (a match value may hold more).
    before, _, after = text.partition("@")
    if not before:
        raise _bad(reference, "nothing before '@'")
    alias = None
    if _is_alias(after):
        alias = parse_alias(after)
    elif "=" in after:
        alias = Alias(where=parse_match(after))
    if alias is not None:
        if "/" in before:
            return RefSpec(ALIAS, target=_pathspec(reference, before), alias=alias)
        return RefSpec(ALIAS, name=_name(reference, before), alias=alias)
    if "/" in before:
        target = _pathspec(reference, before)
        version = _version(reference, after, pathspec=True)
        if target.task is None:
            raise _bad(
                reference,
                "a version id names a checkpoint of one task: '<Flow/run_id/step/task_id>@%s' "
                "(the PATHSPEC of `metaflow checkpoint list`); among a %s use '@last', "
                "'@best:<metric>' or '@<field>=<value>'"
                % (after, "flow" if target.run is None else "run or step"),
            )
        return RefSpec(TASK, target=target, version=version)
    name = _name(reference, before)
    if after == LATEST:
        return RefSpec(NAMED, name=name)
    return RefSpec(NAMED, name=name, version=_version(reference, after, pathspec=False))


def _version(reference: str, after: str, pathspec: bool) -> str:
    """The version id prefix ``after`` (lower-cased), else the error of an unknown alias."""
    token = after.lower()
    if _VERSION_RE.fullmatch(token):
        return token
    if _HEX_RE.fullmatch(token):
        why = "%r is too short for a version id: give at least %d of its hex digits"
        why %= (after, MIN_ID_PREFIX)
    elif after == LATEST:  # after a pathspec: 'latest' is a named checkpoint's word
        why = "'latest' is the newest version of a named checkpoint; a task's newest is 'last'"
    else:
        why = "unknown alias %r%s" % (after, did_you_mean(after))
    raise CheckpointConfigError(
        "%r is not a checkpoint reference: %s. After '@' use %s."
        % (reference, why, AFTER_AT if not pathspec else AFTER_AT.rsplit(", or", 1)[0])
    )


def did_you_mean(word: str) -> str:
    """`` (did you mean 'last'?)`` for a word close to an alias, else ``""``."""
    head, colon, metric = word.partition(":")
    close = difflib.get_close_matches(head, [LAST, LATEST, "best"], n=1, cutoff=0.6)
    guess = close and close[0] + (colon + metric if close[0] == "best" else "")
    return " (did you mean %r?)" % guess if guess else ""


def _split_url(text: str) -> Optional[tuple[str, str]]:
    """``(root, key)`` of ``<root>/manifests/...`` when what follows is a manifest key."""
    split = layout.split_manifest_url(text)
    if split is None or not is_manifest_key(split[1]):
        return None
    return _root(split[0]), split[1]  # type: ignore[return-value]


def _root(root: Optional[str]) -> Optional[str]:
    """The one spelling of a root (None: the caller's store), for ``factory.same_root``."""
    if not root or not root.strip():
        return None
    return normalize_root(root)


def _is_alias(text: str) -> bool:
    return text == LAST or text.startswith("best:")


def _pathspec(reference: Any, text: str) -> Target:
    try:
        return parse_target(text)
    except CheckpointConfigError:
        raise _bad(reference, "%r is not a pathspec of 1 to 4 components" % (text,)) from None


def _name(reference: Any, text: str) -> str:
    try:
        return validate_name(text)
    except CheckpointConfigError as exc:
        raise _bad(reference, exc.message) from None


def _bad(reference: Any, why: str) -> CheckpointConfigError:
    return CheckpointConfigError(
        "%r is not a checkpoint reference (%s). Use %s." % (reference, why.rstrip("."), FORMS)
    )
