"""Pick a storage backend for a root URL, and derive the root from a Metaflow datastore.

Only :mod:`.base`, :mod:`.local` and this module are imported eagerly; the S3 and fsspec
backends (and boto3, fsspec implementations) load when a URL needs them.  Settings come in as
arguments (``common/settings.py`` reads Metaflow's and passes them): this layer reads none.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional
from urllib.parse import urlparse

from ..errors import CheckpointConfigError, CheckpointException, StorageError
from .base import RetryPolicy, Storage
from .local import LocalStorage

if TYPE_CHECKING:  # the S3 backend loads only for s3:// URLs
    from .s3 import S3Config

#: Directory under a flow datastore's root that holds every checkpoint of that datastore.
CHECKPOINT_DIRNAME = "mf.checkpointing"

AZURE_SCHEMES = frozenset({"az", "abfs", "abfss"})
GCS_SCHEMES = frozenset({"gs", "gcs"})


def url_scheme(url: str) -> str:
    """The scheme of a root URL, lower case; ``""`` for a plain path."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _local_path(url: str) -> str:
    """The path of a plain path or ``file://`` URL, absolute."""
    if url_scheme(url) in ("file", "local"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            # file://relative/dir: netloc is the first path component, not a host.
            path = parsed.netloc + parsed.path
        else:
            path = parsed.path
    else:
        path = url
    return os.path.abspath(os.path.expanduser(path))


def normalize_root(url: str) -> str:
    """The one spelling of a checkpoint root: two spellings of one store normalise alike.

    A local root (a path, relative or absolute, or a ``file://`` URL) becomes the absolute
    path :class:`.local.LocalStorage` uses (``.``, ``..``, repeated and trailing slashes
    resolved, ``~`` expanded).  Any other URL keeps its scheme (lower case) and loses trailing
    and repeated slashes after it (``s3://b//ckpt/`` -> ``s3://b/ckpt``): a doubled slash in a
    root is taken for a typo, not for an object key with an empty component.  Nothing is read.
    """
    url = str(url).strip()
    scheme = url_scheme(url)
    if scheme in ("", "file", "local"):
        return _local_path(url)
    rest = url.split("://", 1)[1]
    return "%s://%s" % (scheme, "/".join(p for p in rest.split("/") if p))


def same_root(a: str, b: str) -> bool:
    """Whether the roots ``a`` and ``b`` are one store however each is spelled
    (:func:`normalize_root`; local roots also through symbolic links)."""
    a, b = normalize_root(a), normalize_root(b)
    if a == b:
        return True
    return url_scheme(a) == url_scheme(b) == "" and os.path.realpath(a) == os.path.realpath(b)


def storage_for_url(
    url: str,
    *,
    retry: Optional[RetryPolicy] = None,
    workers: Optional[int] = None,
    timeout: Optional[float] = None,
    fsync: bool = False,
    s3: Optional[S3Config] = None,
    azure_endpoint: Optional[str] = None,
    fsspec_options: Optional[dict] = None,
) -> Storage:
    """The backend for a checkpoint root.

    Parameters
    ----------
    url : str
        A local path, ``file://...``, ``s3://bucket/prefix``, ``memory://root`` or any other
        fsspec URL (``gs://`` needs gcsfs, ``az://`` needs adlfs).
    retry : RetryPolicy, optional
        Bounds for retrying transient errors.
    workers : int, optional
        Concurrent transfers the caller will run (sizes S3's connection pool).
    timeout : float, optional
        Per-request timeout of network backends, seconds.
    fsync : bool
        fsync local files before renaming them into place.
    s3 : S3Config, optional
        Client settings of ``s3://`` roots (default: plain boto3).
    azure_endpoint : str, optional
        Blob service endpoint of ``az://`` roots: names the account and where it is served
        (``http://127.0.0.1:10000/devstoreaccount1`` for Azurite).
    fsspec_options : dict, optional
        Options of the fsspec filesystem of other URLs (gcsfs: ``token``, ``project``...).

    Returns
    -------
    Storage
        ``LocalStorage``, ``S3Storage`` or ``FsspecStorage``.

    Raises
    ------
    CheckpointConfigError
        For an empty or unsupported URL, or when the package its scheme needs is missing
        (the message names the URL and the package to install).
    StorageError
        When the backend fails to open the root (a backend that connects when created: an
        unknown host, a refused connection); the message names the URL and keeps the reason.
    """
    if not url or not str(url).strip():
        raise CheckpointConfigError("Empty checkpoint root: give a local path or a URL.")
    url = str(url).strip()
    scheme = url_scheme(url)
    try:
        if scheme in ("", "file", "local"):
            return LocalStorage(_local_path(url), fsync=fsync, retry=retry)
        if scheme == "s3":
            from .s3 import S3Storage

            return S3Storage(url, retry=retry, workers=workers, timeout=timeout, config=s3)
        from .fsspec_store import FsspecStorage

        endpoint = azure_endpoint if scheme in AZURE_SCHEMES else None
        return FsspecStorage(
            url,
            retry=retry,
            storage_options=fsspec_options,
            timeout=timeout,
            azure_endpoint=endpoint,
        )
    except CheckpointException:
        raise  # ours name the root and say what to do (tests/storage/test_factory.py)
    except Exception as exc:  # noqa: BLE001 - a backend's own error (DNS, connection, option)
        # Some backends connect when created (ftp, sftp, ...): their errors ("Name or service
        # not known") must still say which root could not be opened.
        reason = str(exc) or type(exc).__name__
        raise StorageError(
            "Cannot open the checkpoint root %s: %s (%s)" % (url, reason, type(exc).__name__),
            url=url,
            reason=reason,
        ) from exc


def root_for_datastore(ds_type: str, ds_root: str) -> str:
    """The checkpoint root of a Metaflow datastore: ``<ds_root>/mf.checkpointing``.

    Parameters
    ----------
    ds_type : str
        The datastore's ``TYPE`` (``local``, ``s3``, ``gs``, ``azure``, or an extension's type
        whose root is a URL), e.g. from a task's ``ds-type`` metadata.
    ds_root : str
        The datastore root (``ds-root`` metadata).  Metaflow's Azure roots are
        ``container/prefix`` without a scheme and map to ``az://container/prefix``.

    Returns
    -------
    str
        A path or URL accepted by :func:`storage_for_url`.

    Raises
    ------
    CheckpointConfigError
        For a missing root or a datastore type whose root is neither a URL nor a local path.
    """
    if not ds_root:
        raise CheckpointConfigError(
            "The %r datastore has no root configured; set its sysroot or "
            "METAFLOW_CHECKPOINT_ROOT." % ds_type
        )
    if "://" in ds_root:
        return ds_root.rstrip("/") + "/" + CHECKPOINT_DIRNAME
    if ds_type == "azure":
        return "az://%s/%s" % (ds_root.strip("/"), CHECKPOINT_DIRNAME)
    if ds_type in ("local", "spin"):
        return os.path.join(ds_root, CHECKPOINT_DIRNAME)
    raise CheckpointConfigError(
        "Cannot place checkpoints in the %r datastore rooted at %r: its root is not a URL. "
        "Set METAFLOW_CHECKPOINT_ROOT (or the decorator's root) to a path or URL."
        % (ds_type, ds_root)
    )
