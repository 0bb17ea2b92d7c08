"""Card type ``"checkpoint"``: ``@card(type="checkpoint")`` on a ``@checkpoint`` step.

Metaflow imports every package under ``metaflow_extensions.<org>.plugins.cards`` on
``import metaflow`` and registers the ``MetaflowCard`` subclasses listed in ``CARDS``.
"""

from .card import CheckpointCard

CARDS = [CheckpointCard]
