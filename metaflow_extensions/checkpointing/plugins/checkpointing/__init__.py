"""metaflow-checkpointing implementation package.

Layers (imports point down only)::

    decorator.py -> runtime.py -> core/store.py -> core/* -> storage/base.py
    storage/{local,s3,fsspec_store,memory}.py implement storage/base.py

Nothing here may import torch or boto3 at module import time: decorator modules are imported by
every ``import metaflow``.
"""

# Metaflow first: errors.py subclasses metaflow.exception, and importing that before metaflow is
# initialised re-enters this package half-loaded through Metaflow's plugin loading.
import metaflow  # noqa: E402,F401
