"""``METAFLOW_CHECKPOINT_*`` settings, merged into ``metaflow.metaflow_config``.

Each is read from the environment, then ``.metaflow/config.json`` up the cwd, then the Metaflow
profile (``from_conf``).  Remote pods do not receive a laptop's environment: settings that must
reach a remote task belong in ``@checkpoint`` attributes (see docs/configuration.md).
"""

from metaflow.metaflow_config_funcs import from_conf

# Store root; default: <datastore root>/mf.checkpointing of the flow's datastore.
CHECKPOINT_ROOT = from_conf("CHECKPOINT_ROOT", None)
# Size of content-addressed chunks of large files, bytes.
CHECKPOINT_CHUNK_SIZE = from_conf("CHECKPOINT_CHUNK_SIZE", 16 * 1024 * 1024)
# Files smaller than this are packed together instead of stored one object each, bytes.
CHECKPOINT_SMALL_FILE_SIZE = from_conf("CHECKPOINT_SMALL_FILE_SIZE", 1024 * 1024)
# Parallel transfers; default scales with the CPU count (4 per core, 4..64).
CHECKPOINT_WORKERS = from_conf("CHECKPOINT_WORKERS", None)
# Bounded retries of transient storage errors: tries per call and total seconds per call.
CHECKPOINT_RETRY_ATTEMPTS = from_conf("CHECKPOINT_RETRY_ATTEMPTS", 6)
CHECKPOINT_RETRY_SECONDS = from_conf("CHECKPOINT_RETRY_SECONDS", 120)
# Per-request timeout of network backends, seconds.
CHECKPOINT_TIMEOUT_SECONDS = from_conf("CHECKPOINT_TIMEOUT_SECONDS", 60)
# fsync local writes before renaming them into place.
CHECKPOINT_FSYNC = from_conf("CHECKPOINT_FSYNC", False)
# Staged bytes of background (blocking=False) saves a task may hold before save() waits.
CHECKPOINT_ASYNC_BUDGET = from_conf("CHECKPOINT_ASYNC_BUDGET", 4 * 1024 * 1024 * 1024)
# Seconds between two looks at the store for a pause request (should_pause()).
CHECKPOINT_PAUSE_POLL_SECONDS = from_conf("CHECKPOINT_PAUSE_POLL_SECONDS", 5.0)
# Seconds a @parallel rank waits for the other ranks' shards (rank 0) or for the commit.
CHECKPOINT_PARALLEL_TIMEOUT = from_conf("CHECKPOINT_PARALLEL_TIMEOUT", 600)
# Lifetime (seconds) of a writer's lease, which keeps GC from deleting what a save relies on.
CHECKPOINT_LEASE_SECONDS = from_conf("CHECKPOINT_LEASE_SECONDS", 1800)
