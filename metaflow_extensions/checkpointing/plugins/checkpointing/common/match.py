"""Metadata matches as references spell them: ``epoch=3,phase=finetune`` (after ``@`` in
``TASK@epoch=3``, or alone in a task), parsed to ``((field, value), ...)``, written back, and
tested against a checkpoint's metadata.  No I/O; :mod:`.refspec` and :mod:`.resolver` use it.

A value is JSON when it parses as JSON (``3``, ``0.5``, ``true``, ``null``, ``"3"``,
``[1, 2]``), else the text itself (``NaN``/``Infinity`` stay text: metadata stores them as
null); ``,`` separates fields outside brackets and double quotes; a field is the text before
its first ``=``.  ``True`` never matches ``1`` (JSON tells them apart); ``3`` matches ``3.0``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import CheckpointConfigError


def parse_match(text: str) -> tuple:
    """``((field, value), ...)`` of ``field=value[,field=value...]``: a value is JSON when it
    parses as JSON (``3``, ``0.5``, ``true``, ``null``, ``"3"``, ``[1, 2]``), else the text
    itself; ``,`` separates fields outside brackets and double quotes; a field is the text
    before its first ``=``.

    Raises
    ------
    CheckpointConfigError
        A part without ``=`` or without a field name.
    """
    out = []
    for part in _split_fields(text):
        field, eq, raw = part.partition("=")
        field = field.strip()
        if not eq or not field:
            raise CheckpointConfigError(
                "%r is not a metadata match: write '<field>=<value>', several joined with ',' "
                "(e.g. 'epoch=3' or 'epoch=3,phase=finetune')." % (text,)
            )
        out.append((field, _json_or_text(raw.strip())))
    return tuple(out)


def format_match(where: tuple) -> str:
    """The text of a metadata match that :func:`parse_match` reads back as ``where``: values
    as typed where that reads back the same (``epoch=3,phase=finetune``), else as JSON."""
    plain = ",".join("%s=%s" % (k, v if isinstance(v, str) else _dumps(v)) for k, v in where)
    if _reads_back(plain, where):
        return plain
    return ",".join("%s=%s" % (k, _dumps(v)) for k, v in where)


def _reads_back(text: str, where: tuple) -> bool:
    try:
        return text == text.strip() and _same_where(parse_match(text), where)
    except CheckpointConfigError:
        return False


def _same_where(a: tuple, b: tuple) -> bool:
    """Equal, with ``True`` never equal to ``1`` (JSON tells them apart)."""
    return len(a) == len(b) and all(
        ka == kb and type(va) is type(vb) and va == vb for (ka, va), (kb, vb) in zip(a, b)
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _json_or_text(raw: str) -> Any:
    def no_constant(name: str) -> Any:  # NaN/Infinity are text: metadata stores them as null
        raise ValueError(name)

    try:
        return json.loads(raw, parse_constant=no_constant)
    except ValueError:
        return raw


def _split_fields(text: str) -> list[str]:
    """``text`` split at each ``,`` outside brackets and double-quoted strings."""
    parts, depth, quoted, escaped, start = [], 0, False, False, 0
    for i, ch in enumerate(text):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def same_value(want: Any, got: Any) -> bool:
    """Whether a metadata value ``got`` is the value ``want`` a match asks for.

    Numbers match within float noise (``math.isclose``, ``rel_tol=1e-9``): ``loss=0.3``
    matches a saved ``0.1 + 0.2`` (0.30000000000000004), which tables show as 0.3 (ADR 005,
    "fix-refs").  True is not 1."""
    if isinstance(want, bool) or isinstance(got, bool):
        return type(want) is type(got) and want == got
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return want == got or math.isclose(want, got, rel_tol=1e-9)
    return want == got


def shown(value: Any) -> str:
    """``value`` as a match spells it (JSON: ``true``, ``"3"``, ``0.30000000000000004``), so a
    value an error lists can be typed back."""
    try:
        return _dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def matches(metadata: dict, where: tuple) -> bool:
    """Whether ``metadata`` holds every ``(field, value)`` of ``where``."""
    return all(k in metadata and same_value(v, metadata[k]) for k, v in where)
