"""What code written for the reference extension (``metaflow-checkpoint``) uses and we do not
provide, refused with a message naming our equivalent, before any data is touched.

- An attribute a decorator does not have (``@checkpoint(show_cards=True)``): Metaflow's own error
  names the attribute and the supported ones, with a traceback while the flow file is imported;
  ours fails the run in ``step_init`` (one line, before any task) and adds the closest name.
- ``@with_artifact_store(type=..., config=...)`` (a flow decorator): fails when the run starts,
  before any task.
- ``artifact_store_from(run=..., task=..., config=...)`` (a context manager): fails on call.

Imported by every ``import metaflow`` (registered flow decorator, toplevel name): nothing heavy.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Optional

from metaflow.decorators import FlowDecorator
from metaflow.exception import InvalidDecoratorAttribute, MetaflowException

from ..errors import CheckpointConfigError

#: Where the store root is chosen with this package (every message below names these).
ROOT_EQUIVALENT = (
    '@checkpoint(root="s3://bucket/prefix") on the step (travels with the flow to remote '
    'tasks), METAFLOW_CHECKPOINT_ROOT in the environment, or Checkpoint(root="s3://...") in '
    "client code; credentials come from Metaflow's own S3 settings (METAFLOW_S3_ENDPOINT_URL, "
    "the AWS profile or role)"
)


class UnknownDecoratorAttribute(InvalidDecoratorAttribute):
    """An attribute a decorator does not have, with the closest supported name.

    A subclass of Metaflow's own :class:`~metaflow.exception.InvalidDecoratorAttribute`, so code
    (and Metaflow) that catches that one still does.
    """

    headline = "Unknown decorator attribute"

    def __init__(
        self, deconame: str, attr: str, supported: Iterable[str], step_name: Optional[str] = None
    ):
        supported = list(supported)
        close = difflib.get_close_matches(attr, supported, n=1, cutoff=0.6)
        msg = "%s@%s does not support the attribute %r%s. Supported attributes: %s." % (
            "Step '%s': " % step_name if step_name else "",
            deconame,
            attr,
            " (did you mean %r?)" % close[0] if close else "",
            ", ".join(supported),
        )
        MetaflowException.__init__(self, msg)


def split_unknown(attributes: Optional[dict], defaults: dict) -> tuple[list[str], dict]:
    """(names not in ``defaults``, the other attributes) of a decorator's ``attributes``.

    Metaflow's private keys (``_unpacked_delayed_*``, from configs) stay with the others.
    """
    unknown = [k for k in attributes or {} if k not in defaults and not str(k).startswith("_")]
    known = {k: v for k, v in (attributes or {}).items() if k not in unknown}
    return unknown, known


class WithArtifactStoreDecorator(FlowDecorator):
    """The reference extension's ``@with_artifact_store``: not provided, refused before any task.

    Parameters
    ----------
    type : str, optional
        Accepted so the flow file loads; the run is refused either way.
    config : dict or callable, optional
        Accepted so the flow file loads; the run is refused either way.
    """

    name = "with_artifact_store"
    defaults = {"type": None, "config": None}

    def flow_init(self, flow, graph, environment, flow_datastore, metadata, logger, echo, options):
        raise CheckpointConfigError(
            "@with_artifact_store (from metaflow-checkpoint) is not provided by "
            "metaflow-checkpointing: remove it from flow %s and choose the checkpoint store "
            "with %s." % (flow.name, ROOT_EQUIVALENT)
        )


def artifact_store_from(run=None, task=None, config=None):
    """The reference extension's ``artifact_store_from``: not provided, refused on call.

    Raises
    ------
    CheckpointConfigError
        Always, naming the equivalent: ``Checkpoint(root=...)`` reads another store, and
        ``Checkpoint().list(run)`` already finds the root each task recorded.
    """
    raise CheckpointConfigError(
        "artifact_store_from(...) (from metaflow-checkpoint) is not provided by "
        "metaflow-checkpointing: Checkpoint().list(run) and load() already find the store each "
        "task of a run used (recorded as task metadata); to read another store use "
        'Checkpoint(root="s3://bucket/prefix"). Store roots are chosen with %s.' % ROOT_EQUIVALENT
    )
