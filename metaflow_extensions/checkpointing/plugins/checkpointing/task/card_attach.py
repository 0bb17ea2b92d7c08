"""``@checkpoint(show_card=True)``: attach the ``checkpoint`` card to the step.

Metaflow has no public way for a decorator to add another; like the reference extension, this
calls ``metaflow.decorators._attach_decorators_to_step`` from ``step_init``.  ``step_init`` runs
in every process of a run (the launcher, each task, each ``card create``), and a task receives
the card attached by the launcher as ``--with card:...``; so a card is attached only when the
step has no ``checkpoint`` card yet: the user's own ``@card(type="checkpoint")`` or one attached
earlier.  On a datastore Metaflow cannot store cards on (``s3-compatible``, ``coreweave``) no
card is attached and the launcher says so once (task/datastores.py).  Imported by every
``import metaflow`` (through the decorator): nothing heavy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

#: The card type registered by ``plugins/cards/checkpoint_card``.
CARD_TYPE = "checkpoint"
#: The id of the card we attach: ``current.card["checkpoint"]``, ``get_cards(task, id=...)``.
CARD_ID = "checkpoint"


def has_checkpoint_card(decorators: Iterable) -> bool:
    """Whether a ``@card(type="checkpoint")`` is among the step's decorators."""
    return any(
        getattr(deco, "name", None) == "card" and deco.attributes.get("type") == CARD_TYPE
        for deco in decorators
    )


def attach_checkpoint_card(
    flow, step_name: str, decorators: list, ds_type: Optional[str] = None
) -> bool:
    """Attach ``@card(type="checkpoint", id="checkpoint")`` to the step unless it has one.

    Parameters
    ----------
    flow : FlowSpec
        The flow (``step_init``'s ``flow``).
    step_name : str
        The step.
    decorators : list
        The step's decorators (``step_init``'s ``decorators``): the card is appended to this
        list, so Metaflow runs its ``step_init`` after ours in the same loop.
    ds_type : str, optional
        The flow's datastore type: none is attached where Metaflow cannot store cards.

    Returns
    -------
    bool
        True if a card was attached now.
    """
    if has_checkpoint_card(decorators):
        return False
    if ds_type is not None:
        from .datastores import cards_supported, warn_no_cards

        if not cards_supported(ds_type):
            warn_no_cards(ds_type)
            return False
    from metaflow.decorators import _attach_decorators_to_step

    step = getattr(flow, step_name)
    _attach_decorators_to_step(step, ["card:type=%s,id=%s" % (CARD_TYPE, CARD_ID)])
    return True
