"""User metadata as users log it, made plain JSON: the values a save's ``metadata`` accepts.

Training code logs metrics as torch tensors, NumPy scalars and floats that may be NaN.  This
module turns them into JSON values (``.item()`` of a one-value array or tensor; NaN/inf to
``None``, reported to the caller) or refuses a value naming its key path and what to pass
instead.  It is duck-typed: core/ imports neither torch nor NumPy.  The size and depth limits
and the warning are :func:`.manifest_format.validate_metadata`'s.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

from ..errors import CheckpointMetadataError

#: What metadata may hold, as every refusal says: exactly what :func:`plain_json` accepts.
ACCEPTED = (
    "pass str/int/float/bool/None, lists or tuples (stored as lists), or dicts whose keys are "
    "strings, or int/float/bool/None (stored as JSON writes them: 1 -> '1', True -> 'true')"
)

#: Types stored as they are (bool is an int; NumPy's float64 is a float).
_JSON_SCALARS = (str, int, float, type(None))


def plain_json(value: Any, where: str, max_depth: int, nonfinite: list, depth: int = 0) -> Any:
    """``value`` as plain JSON types: one-value arrays/tensors and NumPy scalars converted with
    ``.item()``, NaN/inf replaced by None (their key paths appended to ``nonfinite``).
    ``where`` is the key path of ``value``, ``depth`` its nesting depth (counted as
    ``manifest_format.json_depth`` does) and deeper than ``max_depth`` is refused, before
    recursion could run out."""
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        nonfinite.append(where)
        return None
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, (dict, list, tuple)):
        if depth + 1 > max_depth:
            raise CheckpointMetadataError(
                "Checkpoint metadata is nested more than %d levels deep (dicts and lists within "
                "each other); flatten it." % max_depth,
                reason="nested too deep",
            )
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                name = _key_string(key)
                if name is None:
                    raise _refused(
                        where,
                        "has the key %r (a %s)" % (key, type(key).__name__),
                        "a dict key must be a str, int, finite float, bool or None",
                    )
                out[name] = plain_json(
                    item, "%s[%r]" % (where, key), max_depth, nonfinite, depth + 1
                )
            return out
        return [
            plain_json(item, "%s[%d]" % (where, i), max_depth, nonfinite, depth + 1)
            for i, item in enumerate(value)
        ]
    count = _one_value_count(value)
    if count is None:
        raise _refused(
            where,
            "(a %s) is not JSON-serialisable" % _type_name(value),
            ACCEPTED,
        )
    if count != 1:
        raise _refused(
            where,
            "is a %s of shape %s (%d values), not a single value"
            % (_type_name(value), tuple(_shape(value) or ()), count),
            "pass one value (e.g. loss.item()), or .tolist() to store them all as a list",
        )
    try:
        item = value.item()
    except Exception as exc:  # a device or library error: name the value, not an internal
        msg = "could not be read with .item() (%s)" % exc
        raise _refused(where, msg, "pass a number") from exc
    if isinstance(item, _JSON_SCALARS):  # bool, int, float (NaN too) or str
        return plain_json(item, where, max_depth, nonfinite, depth)
    raise _refused(
        where,
        "(a %s) is not JSON-serialisable: its .item() is a %s"
        % (_type_name(value), type(item).__name__),
        "pass a str/int/float/bool",
    )


def _key_string(key: Any) -> Optional[str]:
    """``key`` as the string ``json.dumps`` writes for it (``1`` -> ``"1"``, ``True`` ->
    ``"true"``, ``None`` -> ``"null"``), or None when JSON has no key for it."""
    if isinstance(key, str):
        return str(key)
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    if isinstance(key, int):
        return str(int(key))
    if isinstance(key, float) and math.isfinite(key):
        return repr(float(key))
    return None


def _refused(where: str, what: str, todo: str) -> CheckpointMetadataError:
    return CheckpointMetadataError(
        "%s %s; %s." % (where, what, todo), reason="%s %s" % (where, what)
    )


def _type_name(value: Any) -> str:
    cls = type(value)
    module = cls.__module__.split(".")[0]
    return cls.__name__ if module == "builtins" else "%s.%s" % (module, cls.__name__)


def _shape(value: Any) -> Optional[tuple]:
    shape = getattr(value, "shape", None)
    try:
        return tuple(int(n) for n in shape) if shape is not None else None
    except (TypeError, ValueError):
        return None


def _one_value_count(value: Any) -> Optional[int]:
    """How many values an array-like ``value`` holds (a torch tensor, a NumPy array or scalar:
    duck-typed, core/ imports neither), or None when it is not one (no callable ``.item``,
    or no ``shape``/``ndim`` to say how many values it holds)."""
    if not callable(getattr(value, "item", None)):
        return None
    shape = _shape(value)
    if shape is not None:
        return math.prod(shape)
    ndim = getattr(value, "ndim", None)
    if isinstance(ndim, int) and ndim == 0:
        return 1
    return None
