"""metaflow-checkpointing implementation package.

Layers (imports point down only)::

    decorator.py -> runtime.py -> core/store.py -> core/* -> storage/base.py
    storage/{local,s3,fsspec_store,memory}.py implement storage/base.py

Nothing here may import torch or boto3 at module import time: decorator modules are imported by
every ``import metaflow``.
"""
