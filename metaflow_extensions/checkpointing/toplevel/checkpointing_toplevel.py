"""Names this extension adds to ``metaflow`` (``from metaflow import Checkpoint``).

This is the one place public top-level names are declared; ``tests/test_packaging.py`` locks
the list.  Loaded on every ``import metaflow``: keep it light (``frameworks.pytorch`` imports
torch only inside its methods).
"""

from ..plugins.checkpointing.client import Checkpoint
from ..plugins.checkpointing.common.reference import CheckpointReference
from ..plugins.checkpointing.frameworks.pytorch import TrainingState
from ..plugins.checkpointing.frameworks.schedule import Every

__mf_extensions__ = "checkpointing"
__version__ = "0.1.0"

__all__ = ["Checkpoint", "CheckpointReference", "TrainingState", "Every"]
