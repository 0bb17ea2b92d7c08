"""Human-readable formatting shared by log lines, the CLI and the card."""

from __future__ import annotations

import json
import math
from typing import Any

#: Significant digits of a float in a table cell (CLI tables, the card's table; ``--json``
#: keeps every digit).
TABLE_FLOAT_DIGITS = 4


def human_size(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; whole bytes below 1 KiB."""
    if n < 1024:
        return "%d B" % n
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024.0
        if n < 1024 or unit == "TiB":
            return "%.1f %s" % (n, unit)
    return "%d B" % n  # not reached


def describe_error(error: BaseException) -> str:
    """``"Type: message"`` of an exception (our errors' ``message``, else ``str()``), or just
    the type's name when it has no message: how log lines and errors name another error."""
    message = getattr(error, "message", None) or str(error)
    return "%s: %s" % (type(error).__name__, message) if message else type(error).__name__


def cell_json(value: Any) -> str:
    """``value`` as JSON for a table cell: every float, also inside lists and dicts, as
    :func:`round_float` writes it; keys sorted."""
    if isinstance(value, float):
        return round_float(value)
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return "{%s}" % ", ".join("%s: %s" % (json.dumps(str(k)), cell_json(v)) for k, v in items)
    if isinstance(value, (list, tuple)):
        return "[%s]" % ", ".join(cell_json(v) for v in value)
    return json.dumps(value, default=str)


def round_float(x: float, digits: int = TABLE_FLOAT_DIGITS) -> str:
    """A float for a table: ``digits`` significant digits, never fewer than its integer digits,
    without trailing zeros: ``0.30000000000000004`` -> ``0.3``, ``0.123456`` -> ``0.1235``,
    ``12345.678`` -> ``12346``, ``2.0`` -> ``2``; tiny or huge magnitudes in exponent form
    (``1.235e-07``); ``nan``/``inf`` as Python spells them."""
    if not math.isfinite(x):
        return repr(float(x))
    if x == 0:
        return "0"
    exponent = math.floor(math.log10(abs(x)))
    if exponent < -4 or exponent >= 15:
        return "%.*g" % (digits, x)
    decimals = max(0, digits - 1 - exponent)
    text = "%.*f" % (decimals, x)
    return text.rstrip("0").rstrip(".") if "." in text else text
