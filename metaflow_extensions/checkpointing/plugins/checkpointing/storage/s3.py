"""S3 backend: boto3 with the client settings it is handed (:class:`S3Config`).

This module reads no Metaflow setting: ``common/settings.py`` fills an :class:`S3Config` from
Metaflow's (``DATATOOLS_CLIENT_PARAMS``, which carries ``METAFLOW_S3_ENDPOINT_URL`` and
``METAFLOW_S3_VERIFY_CERTIFICATE``; ``DATATOOLS_SESSION_VARS``; ``S3_SERVER_SIDE_ENCRYPTION``;
and Metaflow's AWS client provider for credentials, sandbox and custom providers), so every
store a flow, the client or the CLI opens honours them.  Without a config, plain boto3 defaults
apply.  :mod:`.s3_config` holds what a store is handed, :mod:`.s3_errors` how its errors are
told apart.

boto3 is imported only when a store is created (a missing one fails there, naming the ``s3``
extra): this module can be imported while ``import metaflow`` runs, which must stay free of
boto3.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any, Optional

from ..errors import CheckpointDependencyError, StorageError
from .base import (
    LIST_HINT,
    TRANSIENT,
    Buffer,
    ObjectInfo,
    RetryPolicy,
    Storage,
    default_workers,
)
from .s3_config import ClientFactory, S3Config, boto3_client, parse_s3_url
from .s3_errors import NOT_FOUND_CODES, classify, error_code


class _BufferReader(io.RawIOBase):
    """A read-only, seekable file over a memoryview: lets botocore stream a reused buffer
    without first copying it into a ``bytes`` object."""

    def __init__(self, data: Buffer):
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), len(self._view) - self._pos))
        b[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, size: Optional[int] = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else self._pos + size
        chunk = bytes(self._view[self._pos : end])
        self._pos += len(chunk)
        return chunk


class S3Storage(Storage):
    """Objects under ``s3://bucket/prefix``, through boto3 with the settings of ``config``.

    Parameters
    ----------
    url : str
        ``s3://bucket`` or ``s3://bucket/prefix``.
    retry : RetryPolicy, optional
        Bounds for retrying transient errors.  botocore's own retries are turned off so that
        these bounds hold (one request per try).
    workers : int, optional
        Expected concurrent callers; sizes the HTTP connection pool.  Default scales with the
        CPU count.
    timeout : float, optional
        Connect and read timeout of each request, seconds (default 60).
    role_arn : str, optional
        IAM role to assume, as Metaflow's ``S3(role=...)``.
    client_params : dict, optional
        Extra boto3 client arguments, merged over ``config.client_params``.
    config : S3Config, optional
        Client settings, credentials and encryption (default: plain boto3; the settings layer
        passes Metaflow's).
    """

    TYPE = "s3"

    def __init__(
        self,
        url: str,
        retry: Optional[RetryPolicy] = None,
        workers: Optional[int] = None,
        timeout: Optional[float] = None,
        role_arn: Optional[str] = None,
        client_params: Optional[dict] = None,
        config: Optional[S3Config] = None,
    ):
        self.bucket, self.prefix = parse_s3_url(url)
        super().__init__(
            "s3://%s/%s" % (self.bucket, self.prefix) if self.prefix else "s3://" + self.bucket,
            retry=retry,
        )
        try:  # now, so a missing or broken boto3 fails when the store opens, not at a save
            import boto3  # noqa: F401
        except ImportError as exc:
            raise CheckpointDependencyError.of(
                "Checkpoint root %s (S3)" % self.url, "boto3", "s3", exc, url=self.url
            ) from exc
        self.workers = int(workers or default_workers())
        self.timeout = float(timeout or 60.0)
        self.role_arn = role_arn
        self.client_params = dict(client_params or {})
        self.config = config if config is not None else S3Config()
        self._sse = self.config.server_side_encryption
        self._root_key = self.prefix + "/" if self.prefix else ""
        self._client: Any = None
        self._transfer_config: Any = None
        self._bucket_checked = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ client
    def __getstate__(self) -> dict:
        # Picklable for worker processes: clients and locks are rebuilt on the other side.
        state = self.__dict__.copy()
        state.update(_client=None, _transfer_config=None, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The boto3 S3 client of this store, created on first use (thread-safe)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        from botocore.config import Config

        params = dict(self.config.client_params)
        params.update(self.client_params)
        ours = Config(
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            max_pool_connections=max(10, self.workers),
            # Our tenacity layer retries, with bounds on count and time; botocore must not
            # multiply them (Metaflow's default is 10 adaptive attempts): one request per try.
            retries={"total_max_attempts": 1, "mode": "standard"},
        )
        user = params.get("config")
        if isinstance(user, dict):
            user = Config(**user)
        params["config"] = user.merge(ours) if user is not None else ours
        client = self.config.client_factory(
            "s3",
            role_arn=self.role_arn,
            session_vars=dict(self.config.session_vars),
            client_params=params,
        )
        from boto3.s3.transfer import TransferConfig

        # Outer layers already run `workers` transfers at once; a few threads per large file
        # are enough to keep one multipart transfer fast without oversubscribing the pool.
        # s3transfer re-reads a broken download stream itself; keep that small too.
        self._transfer_config = TransferConfig(
            max_concurrency=max(2, min(10, self.workers)),
            use_threads=True,
            num_download_attempts=2,
        )
        return client

    def _key(self, key: str) -> str:
        return self._root_key + key

    def _extra_args(self) -> dict:
        return {"ServerSideEncryption": self._sse} if self._sse else {}

    def _no_such_bucket(self, exc: BaseException) -> StorageError:
        return StorageError(
            "S3 bucket %r does not exist (checkpoint root %s). Create the bucket or point the "
            "checkpoint root (METAFLOW_CHECKPOINT_ROOT or the datastore root) at an existing "
            "one." % (self.bucket, self.url)
        )

    def _check_error(self, exc: BaseException) -> None:
        """Turn a missing bucket into a StorageError naming it (it is never retried)."""
        # boto3 wraps upload errors (S3UploadFailedError): look down the chain too.
        seen: BaseException | None = exc
        for _ in range(3):
            if seen is None:
                break
            if error_code(seen)[0] == "NoSuchBucket":
                raise self._no_such_bucket(seen) from exc
            seen = seen.__cause__ or seen.__context__

    def _verify_bucket(self) -> None:
        """HEAD answers 404 for a missing bucket and for a missing key alike; ask once."""
        if self._bucket_checked:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            code, status = error_code(exc)
            if code in ("404", "NoSuchBucket", "NotFound") or status == 404:
                raise self._no_such_bucket(exc) from exc
            if self._classify(exc) == TRANSIENT:
                raise
            # e.g. 403 without s3:ListBucket: the bucket may well exist; do not block on it.
        self._bucket_checked = True

    # ------------------------------------------------------------------ primitives
    def _put_bytes(self, key: str, data: Buffer) -> None:
        body: Any = data
        if not isinstance(data, bytes):
            try:
                body = _BufferReader(data)  # no copy of a (possibly 17 MiB) reused buffer
            except TypeError:  # a non-contiguous view cannot be cast: copy it
                body = bytes(data)
        size = len(body) if isinstance(body, bytes) else len(body._view)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=body,
                ContentLength=size,
                **self._extra_args(),
            )
        except Exception as exc:
            self._check_error(exc)
            raise

    def _put_file(self, key: str, local_path: str) -> None:
        client = self.client
        try:
            # upload_file: multipart above the threshold, parts in parallel; S3 shows the
            # object only once complete, so readers never see part of it.
            client.upload_file(
                local_path,
                self.bucket,
                self._key(key),
                ExtraArgs=self._extra_args() or None,
                Config=self._transfer_config,
            )
        except Exception as exc:
            self._check_error(exc)
            raise

    def _get_bytes(self, key: str, start: int, length: Optional[int]) -> bytes:
        args = {"Bucket": self.bucket, "Key": self._key(key)}
        if length == 0:  # no valid Range for zero bytes; a missing key must still raise
            try:
                self.client.head_object(**args)
            except Exception as exc:
                if error_code(exc)[1] == 404:
                    self._verify_bucket()
                raise
            return b""
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            args["Range"] = "bytes=%d-%s" % (start, end)
        try:
            response = self.client.get_object(**args)
        except Exception as exc:
            self._check_error(exc)
            if error_code(exc)[0] == "InvalidRange":
                return b""  # start at or past the end (or an empty object): like a file read
            raise
        with response["Body"] as body:
            return body.read()

    def _get_file(self, key: str, local_path: str) -> None:
        # download_file writes a temp file next to local_path and renames it when complete.
        client = self.client  # creates the transfer config too
        try:
            client.download_file(
                self.bucket, self._key(key), local_path, Config=self._transfer_config
            )
        except Exception as exc:
            if error_code(exc)[1] == 404:
                self._verify_bucket()
            raise

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except Exception as exc:
            code, status = error_code(exc)
            if code in NOT_FOUND_CODES or status == 404:
                self._verify_bucket()
                return False
            raise

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        cut = len(self._root_key)
        truncated = False
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for obj in page.get("Contents", ()):
                    key = obj["Key"][cut:]
                    if not key or key.endswith("/"):
                        continue  # "folder" placeholders made by consoles are not objects
                    yield ObjectInfo(key, int(obj["Size"]), obj["LastModified"].timestamp())
                truncated = bool(page.get("IsTruncated"))
        except Exception as exc:
            self._check_error(exc)
            raise
        if truncated:
            # botocore's paginator stops quietly when a page says it is truncated but carries
            # no continuation token (a misbehaving S3-compatible server or proxy): the rest of
            # the listing would be missing without a word.
            raise StorageError(
                "Listing %s ended early: the server marked its last page truncated but gave no "
                "continuation token, so the listing is incomplete. %s"
                % (self.full_url(prefix), LIST_HINT)
            )

    def _delete(self, key: str) -> None:
        # S3 answers 204 for a missing key too, so "missing ok" comes for free.
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            self._check_error(exc)
            raise

    def _delete_batch(self, keys: list[str], workers: int) -> None:
        # One DeleteObjects request per 1,000 keys instead of one request per key.
        try:
            resp = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self._key(k)} for k in keys], "Quiet": True},
            )
        except Exception as exc:
            self._check_error(exc)
            raise
        errors = resp.get("Errors") or []
        if errors:
            first = errors[0]
            raise StorageError(
                "Deleting %d of %d objects from %s failed, e.g. %s: %s %s"
                % (
                    len(errors),
                    len(keys),
                    self.url,
                    first.get("Key"),
                    first.get("Code"),
                    first.get("Message"),
                )
            )

    # ------------------------------------------------------------------ errors
    def _classify(self, exc: BaseException) -> str:
        return classify(exc)


__all__ = ["ClientFactory", "S3Config", "S3Storage", "boto3_client", "parse_s3_url"]
