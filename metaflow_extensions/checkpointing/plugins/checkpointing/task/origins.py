"""The origin runs of a ``resume``, oldest last: where ``load_policy="fresh"`` looks for a
checkpoint when the resumed task's own origin has none (a resume of a resume)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

# How many older origins of a resume chain to follow looking for a checkpoint.
_MAX_ORIGIN_DEPTH = 8


def origin_chain(flow_name: str, step_name: str, origin: Optional[str]) -> Iterator[str]:
    """The origin run of a ``resume``, then that run's own origin, and so on.

    Older origins come from the ``origin-run-id`` metadata of the step's tasks in the previous
    origin; if the client cannot tell (e.g. metadata unavailable), the chain just stops.
    """
    seen = set()
    for _ in range(_MAX_ORIGIN_DEPTH):
        if not origin or origin in seen:
            return
        seen.add(origin)
        yield origin
        origin = origin_of(flow_name, step_name, origin)


def origin_of(flow_name: str, step_name: str, run_id: str) -> Optional[str]:
    try:
        from metaflow import Step

        for task in Step("%s/%s/%s" % (flow_name, run_id, step_name), _namespace_check=False):
            value = task.metadata_dict.get("origin-run-id")
            if value and value != "None":
                return str(value)
    except Exception:  # noqa: BLE001 - the chain is best effort beyond the first origin
        return None
    return None
