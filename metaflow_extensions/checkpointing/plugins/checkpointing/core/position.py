"""Writers: the position ``(node, local)`` of the process that saved a checkpoint (ADR 004).

``node`` is the ``@parallel`` node index of the writer's task (0 outside ``@parallel``);
``local`` is the writer's ``LOCAL_RANK`` (0 for the step's own process and for a subprocess
without one).  ``(0, 0)``, :data:`RANK0`, is the writer whose checkpoints are the gang's; every
checkpoint saved before writers were recorded is rank 0's.  Manifest keys spell the writer
(:mod:`.layout`), so load policies choose without reading manifests (:mod:`.policies`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

#: Largest node index or local rank a key spells (nine digits: far beyond any real gang).
MAX_INDEX = 999_999_999


def check_index(value: Any, what: str) -> int:
    """``value`` if it is an ``int`` (not a bool) in ``0..MAX_INDEX``.

    Raises
    ------
    ValueError
        Naming ``what`` and the value.
    """
    if type(value) is not int or not 0 <= value <= MAX_INDEX:
        raise ValueError("%s must be a whole number in 0..%d, not %r" % (what, MAX_INDEX, value))
    return value


@dataclass(frozen=True, order=True)
class Position:
    """Where the process that saved a checkpoint stands: ``node`` (its task's ``@parallel``
    node index) and ``local`` (its ``LOCAL_RANK``).

    Raises
    ------
    ValueError
        If either is not a whole number in ``0..MAX_INDEX``.
    """

    node: int = 0
    local: int = 0

    def __post_init__(self) -> None:
        check_index(self.node, "A writer's node index")
        check_index(self.local, "A writer's local rank")

    @property
    def is_rank0(self) -> bool:
        """Whether this is rank 0, the writer whose checkpoints are the gang's."""
        return self.node == 0 and self.local == 0

    def to_json(self) -> dict:
        """``{"node": n, "local": l}`` (what manifests and references show)."""
        return {"node": self.node, "local": self.local}

    @classmethod
    def from_json(cls, value: Any) -> Position:
        """The position :meth:`to_json` wrote.

        Raises
        ------
        ValueError
            ``value`` is not an object with exactly ``node`` and ``local`` whole numbers.
        """
        if type(value) is not dict or set(value) != {"node", "local"}:
            raise ValueError('must be an object {"node": n, "local": l}, not %r' % (value,))
        return cls(value["node"], value["local"])

    def __str__(self) -> str:
        return "node %d, local rank %d" % (self.node, self.local)


#: The writer whose checkpoints every process of a task loads when it has none of its own.
RANK0 = Position()


def writer_of(position: Position, sharded: bool) -> Optional[dict]:
    """What a reference shows as ``writer``: the position, or None for a sharded checkpoint
    (every participant wrote a part of it)."""
    return None if sharded else position.to_json()
