"""An alias's candidates over every store a caller lists: what ``Checkpoint().list()`` merges.

A flow's checkpoints may live in several stores (a run on S3 and one local, a step with
``@checkpoint(root=...)``).  ``Flow@best:loss``, ``Flow@last`` and ``Flow@k=v`` pick among
exactly the checkpoints ``list("Flow")`` shows, so each candidate keeps the store it came from
(ADR 005, "fix-refs").
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..core.manifest import ManifestHeader
from ..core.policies import sort_key
from ..core.store import CheckpointStore
from .refspec import Target

#: The store a chosen header is read from.
StoreOf = Callable[[ManifestHeader], CheckpointStore]


def every_store(view: Any, target: Target) -> tuple[StoreOf, list[ManifestHeader], Optional[dict]]:
    """The checkpoints under ``target`` in every store ``view`` lists, newest first.

    A view with a ``parts(target)`` method (the client's: one ``(store, headers)`` pair per
    readable store, an unreadable one warned about as ``list()`` warns) is merged; any other
    view lists one store (a task's own).

    Returns
    -------
    (store_of, headers, summaries)
        ``store_of(header)`` is the store that listed ``header``; ``summaries`` maps each key
        to its summary when several stores were merged (None: read them from the one store).
    """
    parts = getattr(view, "parts", None)
    found = parts(target) if parts is not None else [view.listing(target)]
    if len(found) == 1:
        store, headers = found[0]
        return (lambda _h: store), headers, None
    owner: dict[int, CheckpointStore] = {}
    summaries: dict = {}
    for store, headers in found:
        owner.update({id(h): store for h in headers})
        if headers:
            summaries.update(store.summaries(headers))
    key = sort_key(within_task=target.task is not None)
    merged = sorted((h for _, hs in found for h in hs), key=key, reverse=True)
    return (lambda h: owner[id(h)]), merged, summaries
