"""Turn ``METAFLOW_CHECKPOINT_*`` settings and a datastore into a :class:`CheckpointStore`.

Shared by the decorator, the client and the CLI so that every entry point finds the same root
with the same options.  This is where Metaflow's settings are read: ``storage/`` and ``core/``
are handed what they need (:func:`s3_config`, :func:`azure_endpoint`, :func:`transfer_options`).

It is also where they get their defaults and ranges: ``config/mfextinit_checkpointing.py``
declares every ``METAFLOW_CHECKPOINT_*`` setting with default None (so ``import metaflow`` never
converts, and never fails on, a value), and each reader here checks its value, raising
:class:`CheckpointConfigError` naming the variable, the value and what is accepted.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Optional

from ..core.store import CheckpointStore
from ..core.transfer import TransferOptions
from ..errors import CheckpointConfigError
from ..storage.base import RetryPolicy, Storage, default_workers

if TYPE_CHECKING:  # the S3 backend loads only for s3:// roots
    from ..storage.s3 import S3Config

#: Task metadata field naming the checkpoint root a @checkpoint task used (found by the client).
ROOT_METADATA = "checkpoint-root"


def _setting(name: str, default=None):
    from metaflow import metaflow_config

    value = getattr(metaflow_config, name, None)
    return default if value is None or value == "" else value


#: Largest chunk: S3 takes single objects of at most 5 GiB, and a chunk is one object.
MAX_CHUNK_SIZE = 5 << 30

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _invalid(name: str, value: object, accepted: str, default: object) -> CheckpointConfigError:
    return CheckpointConfigError(
        "METAFLOW_%s=%r is invalid: it must be %s (default: %s)." % (name, value, accepted, default)
    )


def _integer(
    name: str,
    default: Optional[int],
    minimum: int,
    maximum: Optional[int] = None,
    what: str = "",
) -> Optional[int]:
    """An integer setting in ``[minimum, maximum]``; ``default`` when unset.

    Raises
    ------
    CheckpointConfigError
        Naming ``METAFLOW_<name>``, the value and the accepted range.
    """
    value = _setting(name)
    if value is None:
        return default
    number: Optional[int] = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    if number is None or number < minimum or (maximum is not None and number > maximum):
        accepted = "an integer%s, at least %d" % (what, minimum)
        if maximum is not None:
            accepted += " and at most %d" % maximum
        raise _invalid(name, value, accepted, default)
    return number


def _seconds(name: str, default: float, minimum: float = 0.0, inclusive: bool = True) -> float:
    """A number of seconds (integer or not), finite and ``>= minimum`` (``> minimum`` unless
    ``inclusive``); ``default`` when unset.

    Raises
    ------
    CheckpointConfigError
        Naming ``METAFLOW_<name>``, the value and the accepted range.
    """
    value = _setting(name)
    if value is None:
        return float(default)
    number = math.nan
    if not isinstance(value, bool):
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            pass
    if not math.isfinite(number) or number < minimum or (not inclusive and number == minimum):
        accepted = "a number of seconds %s %g" % (">=" if inclusive else ">", minimum)
        raise _invalid(name, value, accepted, default)
    return number


def _bool(name: str) -> bool:
    """An on/off setting: ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``.

    Raises
    ------
    CheckpointConfigError
        For any other spelling, naming ``METAFLOW_<name>``.
    """
    value = _setting(name, False)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise _invalid(name, value, "one of %s or %s" % ("/".join(_TRUE), "/".join(_FALSE)), "off")


def transfer_options() -> TransferOptions:
    """Chunking and concurrency from settings (workers default to 4 per core).

    Raises
    ------
    CheckpointConfigError
        A chunk size outside [4096, 5 GiB], a negative small-file size or fewer than 1
        worker, naming the setting.
    """
    workers = _integer("CHECKPOINT_WORKERS", None, 1, what=" number of threads")
    workers = workers or default_workers()
    chunk = _integer("CHECKPOINT_CHUNK_SIZE", 16 << 20, 4096, MAX_CHUNK_SIZE, " number of bytes")
    small = _integer("CHECKPOINT_SMALL_FILE_SIZE", 1 << 20, 0, what=" number of bytes")
    assert chunk is not None and small is not None
    # Memory bound: 192 MiB of buffers in flight (at least 2), leaving room under the 256 MiB
    # target for clients and connections (measured: ~46 MiB at 15 in flight on S3).
    inflight = max(2, min(workers, (192 << 20) // max(chunk + small, 1)))
    return TransferOptions(chunk_size=chunk, small_size=small, workers=workers, inflight=inflight)


def async_budget() -> int:
    """Bytes of snapshots background saves may hold at once (``CHECKPOINT_ASYNC_BUDGET``, an
    integer >= 0)."""
    return int(_integer("CHECKPOINT_ASYNC_BUDGET", 4 << 30, 0, what=" number of bytes") or 0)


def parallel_timeout() -> float:
    """Seconds a @parallel rank waits for the other ranks' parts (or rank 0's commit); > 0."""
    return _seconds("CHECKPOINT_PARALLEL_TIMEOUT", 600, 0.0, inclusive=False)


def pause_poll_seconds() -> float:
    """Seconds between two looks at the store for a pause request; finite and >= 0."""
    return _seconds("CHECKPOINT_PAUSE_POLL_SECONDS", 5)


def interrupt_seconds() -> float:
    """Seconds from the first SIGTERM/SIGINT a task receives to the end of its checkpointing:
    what has not committed by then is abandoned (``CHECKPOINT_INTERRUPT_SECONDS``; finite and
    > 0, default 3: Metaflow's local runtime kills tasks 4 to 5 s after Ctrl+C)."""
    return _seconds("CHECKPOINT_INTERRUPT_SECONDS", 3, 0.0, inclusive=False)


def preemption_poll_seconds() -> float:
    """Seconds between two polls of a preemption watcher (``@checkpoint(preemption=...)``);
    finite and > 0, default 5."""
    return _seconds("CHECKPOINT_PREEMPTION_POLL_SECONDS", 5, 0.0, inclusive=False)


def preemption_endpoint() -> Optional[str]:
    """Base URL of the metadata service a preemption watcher polls instead of the cloud's
    link-local ``http://169.254.169.254`` (``CHECKPOINT_PREEMPTION_ENDPOINT``; None: default).

    Raises
    ------
    CheckpointConfigError
        A value that is not an ``http://`` or ``https://`` URL with a host.
    """
    from urllib.parse import urlsplit

    value = _setting("CHECKPOINT_PREEMPTION_ENDPOINT")
    if value is None:
        return None
    text = str(value).strip()
    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise _invalid(
            "CHECKPOINT_PREEMPTION_ENDPOINT",
            value,
            "an http:// or https:// URL with a host, e.g. http://127.0.0.1:8080",
            "the cloud's http://169.254.169.254",
        )
    return text.rstrip("/")


def lease_seconds() -> float:
    """Lifetime of a writer's lease, which keeps GC from deleting what a save in flight relies
    on (``CHECKPOINT_LEASE_SECONDS``; a number of seconds in (0, 86400], default 1800)."""
    from ..core.leases import DEFAULT_TTL_SECONDS, validate_ttl

    return validate_ttl(_setting("CHECKPOINT_LEASE_SECONDS", DEFAULT_TTL_SECONDS))


def local_tier_base() -> Optional[str]:
    """Directory under which ``@checkpoint(upload="end")`` keeps its local tier
    (``CHECKPOINT_LOCAL_TIER``; None when unset: ``@checkpoint(temp_dir_root=)`` or the system
    temp directory).  ``~`` is expanded.

    Raises
    ------
    CheckpointConfigError
        A value that is not an absolute path (a relative one would move with the task's working
        directory, and a retry would not find the tier), or names something that is not a
        directory.
    """
    value = _setting("CHECKPOINT_LOCAL_TIER")
    if value is None:
        return None
    path = os.path.expanduser(str(value).strip())
    if not os.path.isabs(path) or (os.path.exists(path) and not os.path.isdir(path)):
        raise _invalid(
            "CHECKPOINT_LOCAL_TIER",
            value,
            "an absolute path of a directory (created if missing), e.g. /scratch/ckpt",
            "the system temp directory",
        )
    return path


def local_tier_days() -> float:
    """Days after which a task's start removes the local tier's checkpoints of any task, but
    ``failed`` ones (``CHECKPOINT_LOCAL_TIER_DAYS``; a finite number > 0, default 7: 0 would
    remove what a task running beside it just saved).

    Raises
    ------
    CheckpointConfigError
        Naming the setting, the value and what is accepted.
    """
    value = _setting("CHECKPOINT_LOCAL_TIER_DAYS")
    if value is None:
        return 7.0
    number = math.nan
    if not isinstance(value, bool):
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            pass
    if not math.isfinite(number) or number <= 0:
        raise _invalid("CHECKPOINT_LOCAL_TIER_DAYS", value, "a number of days > 0", 7)
    return number


def retry_policy() -> RetryPolicy:
    """Tries (an integer >= 1) and seconds (>= 0) of one storage call's retries."""
    return RetryPolicy(
        attempts=int(_integer("CHECKPOINT_RETRY_ATTEMPTS", 6, 1, what=" number of tries") or 1),
        max_seconds=_seconds("CHECKPOINT_RETRY_SECONDS", 120),
    )


def timeout_seconds() -> float:
    """Per-request timeout of network backends (``CHECKPOINT_TIMEOUT_SECONDS``, > 0)."""
    return _seconds("CHECKPOINT_TIMEOUT_SECONDS", 60, 0.0, inclusive=False)


def checkpoint_root(ds_type: str, ds_root: str, override: Optional[str] = None) -> str:
    """``METAFLOW_CHECKPOINT_ROOT``, else ``<datastore root>/mf.checkpointing``."""
    from ..storage.factory import root_for_datastore

    return override or _setting("CHECKPOINT_ROOT") or root_for_datastore(ds_type, ds_root)


def s3_config() -> S3Config:
    """Metaflow's S3 settings for an S3 store: ``DATATOOLS_CLIENT_PARAMS`` (endpoint URL,
    certificate checks), ``DATATOOLS_SESSION_VARS``, ``S3_SERVER_SIDE_ENCRYPTION``, and
    Metaflow's AWS client provider (credentials, sandbox, custom providers)."""
    from metaflow import metaflow_config
    from metaflow.plugins.aws.aws_client import get_aws_client

    from ..storage.s3 import S3Config

    return S3Config(
        client_params=dict(getattr(metaflow_config, "DATATOOLS_CLIENT_PARAMS", None) or {}),
        session_vars=dict(getattr(metaflow_config, "DATATOOLS_SESSION_VARS", None) or {}),
        server_side_encryption=getattr(metaflow_config, "S3_SERVER_SIDE_ENCRYPTION", None),
        client_factory=get_aws_client,
    )


def azure_endpoint() -> Optional[str]:
    """Metaflow's ``AZURE_STORAGE_BLOB_SERVICE_ENDPOINT`` (names the account of ``az://``)."""
    return _setting("AZURE_STORAGE_BLOB_SERVICE_ENDPOINT")


def gcs_options() -> dict:
    """gcsfs options beyond what gcsfs reads itself.

    gcsfs honours ``STORAGE_EMULATOR_HOST`` (as Google's own client, used by Metaflow's ``gs``
    datastore, does) and Google's default credentials.  With an emulator and no credentials
    file the token is anonymous, as Google's client makes it: gcsfs would otherwise probe the
    GCE metadata server, a lookup outside the host.
    """
    if os.environ.get("STORAGE_EMULATOR_HOST") and not os.environ.get(
        "GOOGLE_APPLICATION_CREDENTIALS"
    ):
        return {"token": "anon"}
    return {}


def storage_for_url(url: str, workers: Optional[int] = None) -> Storage:
    """The backend of ``url`` (path or URL) with the configured retries, timeouts, fsync and
    Metaflow's S3, Azure and GCS settings.  ``workers`` sizes S3's connection pool (default: the
    configured transfer workers)."""
    from ..storage.factory import AZURE_SCHEMES, GCS_SCHEMES, url_scheme
    from ..storage.factory import storage_for_url as backend_for_url

    scheme = url_scheme(str(url or "").strip())
    return backend_for_url(
        url,
        retry=retry_policy(),
        workers=workers if workers is not None else transfer_options().workers,
        timeout=timeout_seconds(),
        fsync=_bool("CHECKPOINT_FSYNC"),
        s3=s3_config() if scheme == "s3" else None,
        azure_endpoint=azure_endpoint() if scheme in AZURE_SCHEMES else None,
        fsspec_options=gcs_options() if scheme in GCS_SCHEMES else None,
    )


def store_for_url(url: str) -> CheckpointStore:
    """A store on ``url`` (path or URL) with the configured options."""
    options = transfer_options()
    ttl = lease_seconds()
    storage = storage_for_url(url, workers=options.workers)
    return CheckpointStore(storage, options, lease_seconds=ttl)


def build_store(ds_type: str, ds_root: str, override: Optional[str] = None) -> CheckpointStore:
    """The store of a flow whose datastore is ``ds_type`` rooted at ``ds_root``.

    ``override`` (the decorator's ``root`` attribute) wins over ``METAFLOW_CHECKPOINT_ROOT``,
    which wins over ``<datastore root>/mf.checkpointing``.
    """
    return store_for_url(checkpoint_root(ds_type, ds_root, override))
