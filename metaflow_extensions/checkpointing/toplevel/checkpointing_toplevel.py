"""Names this extension adds to ``metaflow`` (``from metaflow import Checkpoint``).

This is the one place public top-level names are declared; ``tests/test_packaging.py`` locks
the list.  Loaded on every ``import metaflow``: keep it light (``frameworks.pytorch`` imports
torch only inside its methods, ``frameworks.lightning`` imports Lightning only when a
``CheckpointCallback`` is created, ``frameworks.hf_trainer`` transformers only when an
``HFCheckpointCallback`` is).  The exception classes are here so a step or notebook catches
them as ``from metaflow import CheckpointNotFound`` (``StorageNotFound`` is internal: callers
only ever see it translated), and the two warnings so code can filter them.
"""

from ..plugins.checkpointing.client import Checkpoint
from ..plugins.checkpointing.client.base import CheckpointListWarning
from ..plugins.checkpointing.common.reference import CheckpointReference
from ..plugins.checkpointing.errors import (
    CheckpointConfigError,
    CheckpointDependencyError,
    CheckpointException,
    CheckpointIncomplete,
    CheckpointIntegrityError,
    CheckpointInterrupted,
    CheckpointMetadataError,
    CheckpointMetadataWarning,
    CheckpointNotEnabled,
    CheckpointNotFound,
    CheckpointPaused,
    CheckpointScopeError,
    ManifestError,
    StorageError,
)
from ..plugins.checkpointing.frameworks.hf_trainer import HFCheckpointCallback
from ..plugins.checkpointing.frameworks.lightning import CheckpointCallback
from ..plugins.checkpointing.frameworks.pytorch import TrainingState, TrainingStateError
from ..plugins.checkpointing.frameworks.schedule import Every
from ..plugins.checkpointing.task.refused import artifact_store_from
from .models import delete_model, load_model

__mf_extensions__ = "checkpointing"
__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointReference",
    "TrainingState",
    "Every",
    "CheckpointCallback",
    "HFCheckpointCallback",
    # the reference extension's @model functions (toplevel/models.py)
    "load_model",
    "delete_model",
    # errors (and the one warning), as in errors.py's tree
    "CheckpointException",
    "CheckpointConfigError",
    "CheckpointMetadataError",
    "CheckpointDependencyError",
    "CheckpointNotEnabled",
    "CheckpointNotFound",
    "CheckpointScopeError",
    "CheckpointIncomplete",
    "CheckpointIntegrityError",
    "ManifestError",
    "StorageError",
    "CheckpointInterrupted",
    "CheckpointPaused",
    "TrainingStateError",
    "CheckpointMetadataWarning",
    "CheckpointListWarning",
    # the reference extension's name, refused on call with a message naming our equivalent
    "artifact_store_from",
]
