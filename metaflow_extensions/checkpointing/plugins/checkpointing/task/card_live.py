"""The live ``checkpoint`` card: the task pushes its saves to the card while it runs.

A step with a ``checkpoint`` card (``@checkpoint(show_card=True)`` or its own
``@card(type="checkpoint")``) gets a :class:`LiveCard` listening to the task's saves
(``TaskSaves.add_listener``); a step without any ``@card`` gets nothing (no listener, no cost).
After a commit or a status change the listener renders the card again through Metaflow's
runtime card machinery (``card create --mode render_runtime`` in a subprocess Metaflow starts
and does not wait for), with the data the task already has in memory: the references of its
saves, their status, what retention pruned.  No thread, no polling of the store.

At most one render per the card's ``refresh_interval`` (a commit inside it is shown by the
next render); when the task fails or pauses, one last render says so (Metaflow renders no
final card for a task that did not succeed; a successful task's final card is Metaflow's
``render``, which reads the store).

Why Metaflow's private card manager: ``current.card[...].refresh(data)`` re-renders the HTML
only on its first call or with ``force=True``, which waits for the previous render and then
runs a second subprocess synchronously (seconds inside ``save()``); later calls only write a
data update for a card's JavaScript, and this card has none.  So the render is asked for the
way ``refresh`` asks for it, without the wait; if the manager lacks those attributes (another
Metaflow release) there is no runtime render, and the final card is rendered as before.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from ..common.reference import CheckpointReference
    from .saves import TaskSaves

#: The card type registered by ``plugins/cards/checkpoint_card`` (``card_attach.CARD_TYPE``).
CARD_TYPE = "checkpoint"
#: Marks the data a task pushes (``data["user"]`` of ``render_runtime``).
FORMAT = "metaflow-checkpointing-live/1"
#: Newest saves pushed with their whole metadata (the card's table shows 20); older ones carry
#: only their numeric fields (what the plots use), so a push stays small in a long training.
FULL_METADATA = 50
#: Reference fields the card uses (the rest, e.g. ``stats``, stays in the task).
FIELDS = (
    "key",
    "name",
    "pathspec",
    "attempt",
    "created_on",
    "metadata",
    "latest",
    "size",
    "writer",
    "status",
    "task_status",
)


def step_has_card(step_name: str) -> bool:
    """Whether the step has any ``@card`` (Metaflow counts them in ``step_init``, which ran in
    this process before any task hook): without one there is nothing to refresh."""
    try:
        from metaflow.plugins.cards.card_decorator import CardDecorator
    except ImportError:  # pragma: no cover - cards are part of every Metaflow
        return False
    return bool(CardDecorator.total_decos_on_step.get(step_name))


def attach(saves: TaskSaves, step_name: str) -> Optional[LiveCard]:
    """Make the step's ``checkpoint`` card live: a :class:`LiveCard` listening to ``saves``,
    or None (nothing registered) when the step has no ``@card``.

    Parameters
    ----------
    saves : TaskSaves
        The task process's saves.
    step_name : str
        The step (its cards were counted by Metaflow's ``step_init``).
    """
    if not step_has_card(step_name):
        return None
    retention = saves.retention
    best = [(r.metric, r.mode) for r in retention.keep_best] if retention is not None else []
    scope = saves.scope
    live = LiveCard("/".join((scope.flow, str(scope.run), scope.step, str(scope.task))), best)
    saves.add_listener(live)
    return live


class LiveCard:
    """The saves a task pushes to its ``checkpoint`` cards (a ``TaskSaves`` listener).

    Parameters
    ----------
    pathspec : str
        The task's pathspec.
    best : list of (metric, mode)
        The step's ``keep_best`` rules (the card marks their best points).
    managers : callable, optional
        Returns the card managers to render (default: ``current.card``'s cards of type
        ``checkpoint``, looked up at the first save, once every ``@card`` is set up).
    clock : callable
        Monotonic seconds (throttling).
    """

    def __init__(
        self,
        pathspec: str,
        best: Sequence[tuple[str, str]] = (),
        managers: Optional[Callable[[], list]] = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._pathspec = pathspec
        self._best = [list(b) for b in best]
        self._find = managers if managers is not None else _checkpoint_cards
        self._cards: Optional[list] = None  # resolved at the first save ([]: no such card)
        self._clock = clock
        self._lock = threading.Lock()  # background saves notify from their own thread
        self._saves: dict[str, dict] = {}  # key -> fields, in commit order
        self._pruned: set[str] = set()
        self._last: Optional[float] = None  # when the last render was asked for
        self.renders = 0  #: renders asked for (for tests and the benchmark)

    def __call__(self, ref: CheckpointReference, pruned: Sequence[str] = ()) -> None:
        """``TaskSaves`` listener: ``ref`` was committed (or its status changed)."""
        with self._lock:
            key = str(ref.get("key"))
            self._saves[key] = _fields(ref)
            self._pruned.update(pruned)
            self._pruned.discard(key)
            cards = self._resolve()
            if not cards:
                return
            now = self._clock()
            if self._last is not None and now - self._last < _interval(cards):
                return  # the next render after the interval shows it
            self._last = now
            self._render(cards, self.data(None), wait=False)

    def finish(self, task_status: str, wait: bool = True) -> None:
        """The task ends ``"failed"`` or ``"paused"``: render the card once more saying so
        (Metaflow renders no final card for a task that did not succeed).  ``"succeeded"``:
        nothing (Metaflow's final ``render`` replaces the live card).

        Parameters
        ----------
        task_status : str
            ``"succeeded"``, ``"failed"`` or ``"paused"``.
        wait : bool
            Wait for the render (False after a signal: the time allowed is for checkpoints).
        """
        if task_status == "succeeded":
            return
        with self._lock:
            cards = self._resolve()
            if cards:
                self._render(cards, self.data(task_status), wait=wait, last=True)

    def data(self, task_status: Optional[str]) -> dict:
        """What a render receives (``render_runtime``'s ``data["user"]``): JSON values only."""
        from ..core.metrics_log import numeric_fields

        items = list(self._saves.items())
        older = len(items) - FULL_METADATA
        saves = []
        for i, (key, save) in enumerate(items):
            save = dict(save, kept=key not in self._pruned)
            if i < older and isinstance(save.get("metadata"), dict):
                save["metadata"] = numeric_fields(save["metadata"])
            saves.append(save)
        return {
            "format": FORMAT,
            "pathspec": self._pathspec,
            "task_status": task_status,
            "saves": saves,
            "best": self._best,
            "pushed_at": time.time(),
        }

    def _resolve(self) -> list:
        if self._cards is None:
            try:
                self._cards = list(self._find())
            except Exception:  # noqa: BLE001 - no card manager: the live card stays off
                self._cards = []
        return self._cards

    def _render(self, cards: list, data: dict, wait: bool, last: bool = False) -> None:
        self.renders += 1
        # The running page reloads itself as often as the card is re-rendered.
        data = dict(data, refresh_seconds=_interval(cards))
        for card in cards:
            _render_runtime(card, data, wait, last)


def _checkpoint_cards() -> list:
    """``current.card``'s managers of the step's cards of type ``checkpoint``."""
    from metaflow import current

    collector = getattr(current, "card", None)
    return list(collector.get(type=CARD_TYPE)) if collector is not None else []


def _interval(cards: list) -> float:
    """The shortest ``refresh_interval`` of ``cards`` (``@card``'s attribute, default 5 s)."""
    values = [getattr(card, "_refresh_interval", None) for card in cards]
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    return min(numbers) if numbers else 5.0


def _render_runtime(card: Any, data: dict, wait: bool, last: bool = False) -> None:
    """Ask Metaflow to render ``card`` with ``data`` now (``render_runtime`` in a subprocess;
    ``wait``: until it is done), as ``CardComponentManager.refresh(force=True)`` does minus
    its synchronous second subprocess.  ``last``: the task's last render, which must not be
    skipped (Metaflow skips an asynchronous render while the card's previous one runs)."""
    creator = getattr(card, "_card_creator", None)
    args = getattr(card, "_card_creator_args", None)
    if creator is None or not isinstance(args, dict) or not hasattr(card, "_render_seq"):
        return  # another Metaflow: no runtime render (the final card is still rendered)
    if last and not wait:
        _stop_running_render(args.get("card_uuid"))
    card._latest_user_data = data
    card._render_seq += 1
    card._last_render = time.time()
    # runtime_card: the card type is not RUNTIME_UPDATABLE (see CheckpointCard), so Metaflow
    # adds no data-update subprocess at the task's end; its runtime renders are ours.
    creator.create(**dict(args, runtime_card=True), mode="render_runtime", sync=wait)


def _stop_running_render(card_uuid: Any) -> None:
    """Stop the card's render still running, if any (it shows older saves than the last)."""
    try:
        from metaflow.plugins.cards.card_creator import CardProcessManager

        proc, _ = CardProcessManager._get_card_process(card_uuid)
        if proc is not None and proc.poll() is None:
            CardProcessManager._remove_card_process(card_uuid)  # kills it, forgets it
    except Exception:  # noqa: BLE001 - another Metaflow: the render may then be skipped
        return


def _fields(ref: CheckpointReference) -> dict:
    """The JSON-safe fields of ``ref`` the card shows."""
    out = {name: ref.get(name) for name in FIELDS}
    return json.loads(json.dumps(out, default=str))
