"""How the ``checkpoint`` commands print: tables, labels of checkpoints, JSON, progress bars.

Shared by every command module; it knows nothing about commands or the client (only click and
the fields of a :class:`~..common.reference.CheckpointReference` and the key layout).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Optional

from metaflow._vendor import click

from ..common.reference import SHORT_ID_LENGTH, CheckpointReference
from ..core.layout import split_manifest_key
from ..fmt import TABLE_FLOAT_DIGITS, cell_json, round_float  # noqa: F401 (shared with the card)

#: Metadata fields shown per row of ``list`` (the rest is summarised as "+N").
TABLE_METADATA_FIELDS = 3
#: Seconds between two redraws of a progress bar (callbacks arrive per block, from threads).
PROGRESS_REDRAW_SECONDS = 0.1


# ---------------------------------------------------------------------------------- labels
def version(ref: CheckpointReference) -> str:
    """The version id of a checkpoint: the ``<id>`` field of its manifest file name.

    Key file names are ``<created>-<attempt>-<seq>-<L|N>-<id>-<name>.json`` (names may contain
    '-', ids never do); :func:`..core.layout.split_manifest_key` reads them.
    """
    if ref.get("version"):
        return ref["version"]
    key = split_manifest_key(ref.key)
    return key.id if key is not None else ""


def short_id(ref: CheckpointReference) -> str:
    """The ``ID`` column: the short id of the version (``TASK@<id>`` and ``name@<id>`` accept
    it back); for a reference without a ``version`` field (a damaged one), the same prefix of
    the id its key names."""
    return ref.short_id or version(ref)[:SHORT_ID_LENGTH]


def reference_label(ref: CheckpointReference) -> str:
    """How a user refers to exactly this checkpoint: ``TASK@<short_id>`` or
    ``name@<short_id>`` (:attr:`CheckpointReference.spelling`; a bare task pathspec would be
    the task's latest, maybe another one)."""
    return ref.spelling or "%s@%s" % (ref.pathspec or ref.name, short_id(ref))


def with_spelling(ref: CheckpointReference) -> dict:
    """``ref`` for ``--json``: its fields and ``"ref"``, the spelling that designates it."""
    return dict(ref, ref=reference_label(ref))


def publisher_label(ref: CheckpointReference) -> str:
    """The namespace that published a named checkpoint's version (``unknown`` if not recorded)."""
    return (ref.get("publisher") or {}).get("namespace") or "unknown"


def attempt_label(ref: CheckpointReference) -> str:
    """The ``ATTEMPT`` cell of a task's checkpoint: its attempt and how it ended, when it did not
    simply succeed: ``0``, ``0 paused`` (stopped in ``current.checkpoint.pause()``: to be
    resumed, never shown as failed), ``0 failed``.  A running attempt, or one whose end was not
    recorded, shows its number alone."""
    ended = ref.get("task_status")
    return str(ref.attempt) if ended in (None, "succeeded") else "%s %s" % (ref.attempt, ended)


def task_status_label(ref: CheckpointReference) -> str:
    """How ``show`` says the attempt that saved a checkpoint ended."""
    return ref.get("task_status") or "unknown (running, or its end was not recorded)"


def created(ref: CheckpointReference) -> str:
    """Creation time to the second: ``2025-01-02T03:04:05.678+00:00`` -> ``2025-01-02 03:04:05``."""
    return (ref.created_on or "")[:19].replace("T", " ")


def metadata_summary(metadata: dict, first: str = "") -> str:
    """Up to ``TABLE_METADATA_FIELDS`` ``key=value`` pairs: the ordering field, then numbers
    (metrics, epochs), then the rest, each group by key."""

    def rank(item: tuple) -> tuple:
        key, value = item
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (key != first, not number, key)

    items = sorted(metadata.items(), key=rank)
    shown = ["%s=%s" % (k, _short(v)) for k, v in items[:TABLE_METADATA_FIELDS]]
    if len(items) > TABLE_METADATA_FIELDS:
        shown.append("+%d" % (len(items) - TABLE_METADATA_FIELDS))
    return " ".join(shown)


def _short(value: Any, width: int = 24) -> str:
    text = value if isinstance(value, str) else cell_json(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def one_line(message: str) -> str:
    """A multi-line message as one line (what an ``Error:`` or ``Warning:`` line shows)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


# ---------------------------------------------------------------------------------- echo
def table_lines(rows: list[list[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join(["%-*s" % (w, c) for w, c in zip(widths, row)] + [row[-1]]).rstrip()
        for row in rows
    ]


def echo_table(rows: list[list[str]]) -> None:
    """Print ``rows`` as a table (see :func:`table_lines`)."""
    for line in table_lines(rows):
        click.echo(line)


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON with sorted keys (dates and other objects as strings)."""
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


# ---------------------------------------------------------------------------------- progress
@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Optional[Callable[[int], None]]]:
    """A progress callback drawing a bar on stderr when it is a terminal, else None.

    The client calls it from its worker threads with byte counts: updates are taken under a
    lock and the bar is redrawn at most every ``PROGRESS_REDRAW_SECONDS``.
    """
    stream = click.get_text_stream("stderr")
    if total <= 0 or not stream.isatty():
        yield None
        return
    lock = threading.Lock()
    pending = [0, time.monotonic()]  # bytes not drawn yet, time of the last redraw

    with click.progressbar(length=total, label=label, file=stream) as bar:

        def update(n: int) -> None:
            with lock:
                pending[0] += n
                now = time.monotonic()
                if now - pending[1] >= PROGRESS_REDRAW_SECONDS:
                    bar.update(pending[0])
                    pending[0], pending[1] = 0, now

        yield update
        with lock:
            bar.update(pending[0])


@contextmanager
def phase_progress(
    labels: Mapping[str, Callable[[int], str]],
) -> Iterator[Optional[Callable[[str, int, int], None]]]:
    """A ``progress(phase, done, total)`` callback drawing one bar per phase on stderr when it
    is a terminal, else None (each bar is a :func:`progress_bar`).

    ``labels`` maps a phase to its bar label given the phase's total; an unknown phase is
    labelled with its own name.
    """
    if not click.get_text_stream("stderr").isatty():
        yield None
        return
    lock = threading.Lock()
    state: dict = {"phase": None, "drawn": 0, "bar": None, "update": None}

    def report(phase: str, done: int, total: int) -> None:
        with lock:
            if phase != state["phase"]:
                if state["bar"] is not None:
                    state["bar"].close()
                state["bar"] = ExitStack()
                label = labels[phase](total) if phase in labels else phase
                state["update"] = state["bar"].enter_context(progress_bar(label, total))
                state["phase"], state["drawn"] = phase, 0
            if state["update"] is not None and done > state["drawn"]:
                state["update"](done - state["drawn"])
                state["drawn"] = done

    try:
        yield report
    finally:
        if state["bar"] is not None:
            state["bar"].close()
