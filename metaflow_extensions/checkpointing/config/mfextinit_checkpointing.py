"""``METAFLOW_CHECKPOINT_*`` settings, merged into ``metaflow.metaflow_config``.

Each is read from the environment, then ``.metaflow/config.json`` up the cwd, then the Metaflow
profile (``from_conf``).  Remote pods do not receive a laptop's environment: settings that must
reach a remote task belong in ``@checkpoint`` attributes (see docs/configuration.md).

Every default here is None, so Metaflow keeps the raw value and never converts it: a typed
default makes ``from_conf`` convert at ``import metaflow``, and a value such as ``1.5`` for an
integer default would then crash every Metaflow command.  Defaults, ranges and the errors
naming a bad value live in ``plugins/checkpointing/common/settings.py``, where each is read.
"""

from metaflow.metaflow_config_funcs import from_conf

# Store root; default: <datastore root>/mf.checkpointing of the flow's datastore.
CHECKPOINT_ROOT = from_conf("CHECKPOINT_ROOT", None)
# Size of content-addressed chunks of large files, bytes (default 16 MiB).
CHECKPOINT_CHUNK_SIZE = from_conf("CHECKPOINT_CHUNK_SIZE", None)
# Files smaller than this are packed together instead of stored one object each, bytes (1 MiB).
CHECKPOINT_SMALL_FILE_SIZE = from_conf("CHECKPOINT_SMALL_FILE_SIZE", None)
# Parallel transfers; default scales with the CPU count (4 per core, 4..64).
CHECKPOINT_WORKERS = from_conf("CHECKPOINT_WORKERS", None)
# Bounded retries of transient storage errors: tries per call (6) and total seconds per call (120).
CHECKPOINT_RETRY_ATTEMPTS = from_conf("CHECKPOINT_RETRY_ATTEMPTS", None)
CHECKPOINT_RETRY_SECONDS = from_conf("CHECKPOINT_RETRY_SECONDS", None)
# Per-request timeout of network backends, seconds (60).
CHECKPOINT_TIMEOUT_SECONDS = from_conf("CHECKPOINT_TIMEOUT_SECONDS", None)
# fsync local writes before renaming them into place (off).
CHECKPOINT_FSYNC = from_conf("CHECKPOINT_FSYNC", None)
# Staged bytes of background (blocking=False) saves a task may hold before save() waits (4 GiB).
CHECKPOINT_ASYNC_BUDGET = from_conf("CHECKPOINT_ASYNC_BUDGET", None)
# Seconds between two looks at the store for a pause request (should_pause()) (5).
CHECKPOINT_PAUSE_POLL_SECONDS = from_conf("CHECKPOINT_PAUSE_POLL_SECONDS", None)
# Seconds a @parallel rank waits for the other ranks' shards (rank 0) or for the commit (600).
CHECKPOINT_PARALLEL_TIMEOUT = from_conf("CHECKPOINT_PARALLEL_TIMEOUT", None)
# Lifetime (seconds) of a writer's lease, which keeps GC from deleting what a save relies on (1800).
CHECKPOINT_LEASE_SECONDS = from_conf("CHECKPOINT_LEASE_SECONDS", None)
# Preemption watchers (@checkpoint(preemption=...)): base URL of the metadata service polled
# instead of the cloud's http://169.254.169.254, and seconds between two polls (5).
CHECKPOINT_PREEMPTION_ENDPOINT = from_conf("CHECKPOINT_PREEMPTION_ENDPOINT", None)
CHECKPOINT_PREEMPTION_POLL_SECONDS = from_conf("CHECKPOINT_PREEMPTION_POLL_SECONDS", None)
# Seconds from the first SIGTERM/SIGINT to the end of a task's checkpointing; saves not
# committed by then are abandoned (3).
CHECKPOINT_INTERRUPT_SECONDS = from_conf("CHECKPOINT_INTERRUPT_SECONDS", None)
# Directory of the local tier of @checkpoint(upload="end") (default: the system temp directory).
CHECKPOINT_LOCAL_TIER = from_conf("CHECKPOINT_LOCAL_TIER", None)
# Days after which a task start removes the local tier's checkpoints of any task (7).
CHECKPOINT_LOCAL_TIER_DAYS = from_conf("CHECKPOINT_LOCAL_TIER_DAYS", None)
