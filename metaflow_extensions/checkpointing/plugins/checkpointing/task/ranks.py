"""Where one process of a task stands among its writers (ADR 004): its writer position, how it
takes part in sharded saves, and what it records about itself.

The step's own process of ``@parallel`` node *n* of *N* is writer ``(n, 0)`` and participant
*n* of *N* nodes (node 0 of 1 outside ``@parallel``).  A process the task started
(``Checkpoint()`` through ``METAFLOW_CHECKPOINT_TASK``) is writer ``(n, LOCAL_RANK or 0)``; with
``RANK`` and ``WORLD_SIZE`` set (a ``torchrun`` worker) it is participant ``RANK`` of
``WORLD_SIZE`` ranks, in restart ``TORCHELASTIC_RESTART_COUNT`` of its worker group, else it
stands for its node as the step does.  The variables are read and checked here, once, when the
process builds its runtime; a malformed one is a :class:`CheckpointConfigError` naming it.

The number of each sharded save is counted here too, per process (:func:`sharded_number`):
``current.checkpoint`` and every ``Checkpoint()`` of the process share one count, so a
``Checkpoint()`` made per save (a framework callback) still agrees with the other
participants on which save this is.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

from ..core.gang import Participant, mark_gone
from ..core.position import MAX_INDEX, RANK0, Position
from ..core.scope import Scope
from ..errors import CheckpointConfigError
from ..storage.base import Storage

#: The ``torchrun`` variables a subprocess reads, and the smallest value each may take.
WORKER_VARIABLES = {
    "LOCAL_RANK": 0,
    "RANK": 0,
    "WORLD_SIZE": 1,
    "LOCAL_WORLD_SIZE": 1,
    "TORCHELASTIC_RESTART_COUNT": 0,
}


@dataclass(frozen=True)
class Ranks:
    """This process among its task's writers.

    Attributes
    ----------
    position : Position
        The writer its plain saves record (and the checkpoints its loads prefer).
    participant : Participant
        Its part in sharded saves (node *n* of *N*, or ``RANK`` of ``WORLD_SIZE``).
    gang : bool
        The step's own process of a ``@parallel`` node: it publishes its node's gone marker
        when its step fails.
    source : mapping
        Recorded in the ``source`` of its checkpoints (``rank``, ``local_rank``,
        ``world_size`` of a subprocess, where set).
    problem : str, optional
        Why sharded saves are refused in this process (its variables do not say which group
        it belongs to); plain saves are unaffected.
    warning : str, optional
        What to tell the user once, when its runtime is built (``RANK`` 0 that is not its
        node's local rank 0 on node 0: its plain saves are not the gang's).
    """

    position: Position = RANK0
    participant: Participant = field(default_factory=Participant)
    gang: bool = False
    source: Mapping[str, int] = field(default_factory=dict)
    problem: Optional[str] = None
    warning: Optional[str] = None

    @classmethod
    def of_step(cls, node: int = 0, nodes: int = 1, gang: bool = False) -> Ranks:
        """The step's own process of node ``node`` of ``nodes`` (``gang``: in ``@parallel``)."""
        return cls(Position(node, 0), Participant("node", node, nodes), gang=gang)

    @classmethod
    def of_subprocess(
        cls, node: int = 0, nodes: int = 1, environ: Mapping[str, str] = os.environ
    ) -> Ranks:
        """A process started by the step of node ``node`` of ``nodes``, from its ``torchrun``
        variables.

        Raises
        ------
        CheckpointConfigError
            A variable that is set but not a whole number in range, or ``RANK`` not below
            ``WORLD_SIZE``: naming the variable, its value and where it comes from.
        """
        env = {name: _read(environ, name, low) for name, low in WORKER_VARIABLES.items()}
        local, rank, world = env["LOCAL_RANK"], env["RANK"], env["WORLD_SIZE"]
        source = {
            k: v
            for k, v in (("rank", rank), ("local_rank", local), ("world_size", world))
            if v is not None
        }
        position = Position(node, local or 0)
        if rank is None or world is None:
            problem = None
            if (rank is None) != (world is None):
                problem = (
                    "save(sharded=True) in this process: %s is set but %s is not, so it is "
                    "not known which group of ranks the save belongs to. Start the workers "
                    "with torchrun (it sets both), or set both."
                    % (("RANK", "WORLD_SIZE") if world is None else ("WORLD_SIZE", "RANK"))
                )
            participant = Participant("node", node, nodes)
            return cls(position, participant, source=source, problem=problem)
        if rank >= world:
            raise CheckpointConfigError(
                "RANK=%d is not below WORLD_SIZE=%d: these torchrun variables of this process "
                "do not describe a rank of a worker group. Unset them, or start the process "
                "with torchrun." % (rank, world)
            )
        participant = Participant("rank", rank, world, env["TORCHELASTIC_RESTART_COUNT"] or 0)
        warning = None
        local_world = env["LOCAL_WORLD_SIZE"]
        own_group = local_world is not None and world <= local_world  # one group per node
        if rank == 0 and not position.is_rank0 and not own_group:
            # torchrun's dynamic rendezvous (c10d) hands out node ranks by arrival.
            warning = (
                "this process has RANK=0 but is %s (LOCAL_RANK=%s): its plain saves are node "
                "%d's checkpoints, not the gang's, so on a retry the other nodes and workers "
                "do not load them. Start torchrun with a static "
                "--node_rank=<current.parallel.node_index> (as "
                "examples/distributed/ddp_flow.py does), so that RANK 0 is LOCAL_RANK 0 of "
                "node 0." % (position, "unset" if local is None else local, node)
            )
        problem = None
        if nodes > 1 and own_group:
            # Each node runs its own worker group: their ranks 0..n-1 would be one another's.
            problem = (
                "save(sharded=True) in a torchrun worker group local to node %d of a %d-node "
                "@parallel gang (WORLD_SIZE=%d, LOCAL_WORLD_SIZE=%d): the groups of the "
                "nodes would save as the same ranks. Run one worker group across the nodes "
                "(torchrun --nnodes=%d), or save without sharded=True (each rank's own "
                "checkpoint)." % (node, nodes, world, local_world, nodes)
            )
        return cls(position, participant, source=source, problem=problem, warning=warning)

    def shard_of(self, by: str) -> Optional[int]:
        """Which shard of a checkpoint sharded ``by`` participants of that kind this process
        loads: its node's of a node-sharded one, its rank's of a rank-sharded one; None
        (every shard, under ``rank-<i>/``) when it has no rank."""
        if by == "node":
            return self.position.node
        return self.participant.index if self.participant.kind == "rank" else None


#: Set to -1 by Hugging Face (``TrainingArguments.local_rank``) and others for "not
#: distributed": the same as unset.
NOT_DISTRIBUTED = {"LOCAL_RANK", "RANK"}


def _read(environ: Mapping[str, str], name: str, low: int) -> Optional[int]:
    raw = environ.get(name)
    if raw is None or not raw.strip() or (name in NOT_DISTRIBUTED and raw.strip() == "-1"):
        return None
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= MAX_INDEX:
        raise CheckpointConfigError(
            "%s=%r is not a whole number in %d..%d: Checkpoint() in a process started by a "
            "@checkpoint task reads it to know which rank saves (torchrun sets it). Unset it "
            "or fix its value." % (name, raw, low, MAX_INDEX)
        )
    return int(text)


#: Sharded saves made so far in this process: by (store, task prefix, attempt, participant
#: kind, index, restart), a count per name.
_SHARDED: dict[tuple, dict[str, int]] = {}
_SHARDED_LOCK = threading.Lock()


def sharded_number(root: str, scope: Scope, participant: Participant, name: str) -> int:
    """The number (from 0) of this process's next sharded save of ``name`` as ``participant``
    of the attempt ``scope`` in the store at ``root``; counted once per call, by every object
    of the process (``current.checkpoint``, any number of ``Checkpoint()``), so the ``n``-th
    sharded save of a name is number ``n - 1`` on every participant that makes them all in
    one process."""
    with _SHARDED_LOCK:
        counts = _SHARDED.setdefault(_who(root, scope, participant), {})
        number = counts.get(name, 0)
        counts[name] = number + 1
    return number


#: Worker ranks of this process that made sharded saves: their exit markers are written at
#: exit (by who, the storage and scope to write them to).
_EXITS: dict[tuple, tuple] = {}


def mark_exit(storage: Storage, root: str, scope: Scope, participant: Participant) -> None:
    """Have this process write ``participant``'s exit marker when it exits (once, however
    many times it is called): the other ranks' sharded saves that it never makes stop at
    once, naming it (``core/gang.py``), instead of waiting for their timeout."""
    who = _who(root, scope, participant)
    with _SHARDED_LOCK:
        if not _EXITS:
            atexit.register(_write_exit_markers)
        _EXITS.setdefault(who, (storage, scope, participant))


def _write_exit_markers() -> None:
    with _SHARDED_LOCK:
        exits = [(entry, dict(_SHARDED.get(who, {}))) for who, entry in _EXITS.items()]
        _EXITS.clear()
    for (storage, scope, p), saves in exits:
        try:
            mark_gone(
                storage, scope, (p.kind, p.index), "its process exited", p.restart, saves=saves
            )
        except Exception:  # noqa: BLE001 - exiting: the others then wait for their timeout
            pass


def _who(root: str, scope: Scope, participant: Participant) -> tuple:
    p = participant
    return (root, scope.task_prefix(), scope.attempt, p.kind, p.index, p.restart)
