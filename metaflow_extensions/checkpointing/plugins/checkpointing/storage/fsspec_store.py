"""fsspec backend: any URL fsspec understands (``gs://``, ``az://``, ``memory://``, ``file://``).

The bound on each try of an Azure/GCS request lives in :mod:`.fsspec_limits`.

Object stores (GCS, Azure Blob) make a single upload visible atomically, so a put is one
``pipe_file``/``put_file``.  Filesystem-like implementations (``file``) write a temp file next to
the target and rename it into place; ``memory`` swaps the whole object in one assignment.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Optional

from ..errors import CheckpointConfigError, CheckpointDependencyError, StorageError
from .base import Buffer, ObjectInfo, RetryPolicy, Storage
from .fsspec_limits import SMALL, bounded, classify, unbounded
from .local import _TMP_PREFIX, _may_hold

_LOCAL_PROTOCOLS = frozenset({"file", "local"})

_AZURE = frozenset({"az", "abfs", "abfss"})
_GCS = frozenset({"gs", "gcs"})


def open_fs(
    url: str,
    storage_options: Optional[dict] = None,
    *,
    timeout: Optional[float] = None,
    azure_endpoint: Optional[str] = None,
) -> tuple[Any, str]:
    """The filesystem and path of ``url``, with errors a user can act on.

    Azure and GCS URLs get the bounded clients of :mod:`.fsspec_clients` (one try per request,
    ``timeout`` per socket); other URLs ``fsspec.core.url_to_fs``.

    Raises
    ------
    CheckpointConfigError
        If the scheme is unknown to fsspec or the package implementing it is not installed;
        the message names the URL and the package to install.
    """
    import fsspec
    from fsspec.core import url_to_fs
    from fsspec.registry import known_implementations

    scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
    try:
        if scheme in _AZURE:
            from .fsspec_clients import open_azure

            return open_azure(url, storage_options or {}, azure_endpoint, timeout or 60.0)
        if scheme in _GCS:
            from .fsspec_clients import open_gcs

            return open_gcs(url, storage_options or {}, timeout or 60.0)
        return url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:
        if scheme in _AZURE or scheme in _GCS:
            package, extra = ("adlfs", "azure") if scheme in _AZURE else ("gcsfs", "gs")
            raise CheckpointDependencyError.of(
                "Checkpoint root %r" % url, package, extra, exc, url=url
            ) from exc
        impl = known_implementations.get(scheme, {})
        package = impl.get("class", scheme).split(".", 1)[0]
        hint = impl.get("err") or str(exc)
        if package == "fsspec":  # built into fsspec, but needs other packages (named in hint)
            raise CheckpointDependencyError(
                "Checkpoint root %r needs optional packages for %s:// URLs: %s"
                % (url, scheme, hint)
            ) from exc
        raise CheckpointDependencyError(
            "Checkpoint root %r needs the package %r for %s:// URLs: pip install %s (%s)"
            % (url, package, scheme, package, hint)
        ) from exc
    except ValueError as exc:
        if scheme in fsspec.available_protocols():
            raise CheckpointConfigError("Invalid checkpoint root %r: %s" % (url, exc)) from exc
        raise CheckpointConfigError(
            "Unsupported checkpoint root %r: no storage backend for %s:// URLs. Use a local "
            "path, s3://, gs:// (gcsfs), az:// (adlfs) or another fsspec protocol." % (url, scheme)
        ) from exc


def _is_range_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a server's "range not satisfiable" (HTTP 416)."""
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    return status == 416 or "InvalidRange" in str(exc)


def _mtime(info: dict) -> Optional[float]:
    """Modification time in epoch seconds from an fsspec info dict, whatever the backend."""
    for field in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(field)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _find_walks(fs: Any) -> bool:
    """Whether ``fs.find`` is fsspec's generic one, which walks directory by directory."""
    from fsspec.asyn import AsyncFileSystem
    from fsspec.spec import AbstractFileSystem

    if isinstance(fs, AsyncFileSystem):
        return type(fs)._find is AsyncFileSystem._find
    return type(fs).find is AbstractFileSystem.find


class FsspecStorage(Storage):
    """Objects under any fsspec URL.

    Parameters
    ----------
    url : str
        Root URL, e.g. ``gs://bucket/prefix``, ``az://container/prefix``, ``memory://root``.
    retry : RetryPolicy, optional
        Bounds for retrying transient errors.
    storage_options : dict, optional
        Passed to the fsspec filesystem (credentials, project, account name...).
    timeout : float, optional
        Connect and read timeout of each request of Azure and GCS clients, seconds (default 60).
    azure_endpoint : str, optional
        Blob service endpoint of ``az://`` roots (Metaflow's
        ``AZURE_STORAGE_BLOB_SERVICE_ENDPOINT``): names the account and where it is served.
    """

    TYPE = "fsspec"

    def __init__(
        self,
        url: str,
        retry: Optional[RetryPolicy] = None,
        storage_options: Optional[dict] = None,
        timeout: Optional[float] = None,
        azure_endpoint: Optional[str] = None,
    ):
        super().__init__(url, retry=retry)
        self._open_options = (storage_options, timeout, azure_endpoint)
        self._open()

    def _open(self) -> None:
        storage_options, timeout, azure_endpoint = self._open_options
        self.fs, root = open_fs(
            self.url, storage_options, timeout=timeout, azure_endpoint=azure_endpoint
        )
        self.root = root.rstrip("/")
        protocols = self.fs.protocol
        protocols = {protocols} if isinstance(protocols, str) else set(protocols)
        self._local = bool(protocols & _LOCAL_PROTOCOLS)
        self._memory = "memory" in protocols
        self._walks = _find_walks(self.fs)
        scheme = self.url.split("://", 1)[0].lower() if "://" in self.url else "file"
        self._bucket_kind = (
            "Azure container" if scheme in _AZURE else "GCS bucket" if scheme in _GCS else None
        )
        self._bucket_seen = False
        self._timeout = (timeout or 60.0) if self._bucket_kind else None

    def _bounded(self, method: str, *args: Any, nbytes: Optional[int], upload: bool = False) -> Any:
        """``self.fs.<method>(*args)``; on Azure/GCS each try is bounded as a whole (see
        :func:`.fsspec_limits.bounded`; an ``upload`` has no per-read timeout).  ``nbytes``
        None (a whole object of unknown size): bounded per socket read only."""
        if self._timeout is None:
            return getattr(self.fs, method)(*args)
        if nbytes is None:
            return unbounded(self.fs, method, *args)
        return bounded(self.fs, method, *args, timeout=self._timeout, nbytes=nbytes, upload=upload)

    def __getstate__(self) -> dict:
        # Picklable like S3Storage: the filesystem (its bounded client, a class made at run
        # time for gcsfs) is opened again on the other side.
        state = self.__dict__.copy()
        state["fs"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def _path(self, key: str) -> str:
        return "%s/%s" % (self.root, key)

    # ------------------------------------------------------------------ primitives
    def _atomic(self, key: str, write) -> None:
        """Local-like filesystems: write a temp file in the target's directory, then rename."""
        path = self._path(key)
        parent, name = path.rsplit("/", 1)
        self.fs.makedirs(parent, exist_ok=True)
        tmp = "%s/%s%s-%s" % (parent, _TMP_PREFIX, uuid.uuid4().hex[:12], name)
        try:
            write(tmp)
            self.fs.mv(tmp, path)
        except BaseException:
            try:
                self.fs.rm_file(tmp)
            except OSError:
                pass
            raise

    def _put_bytes(self, key: str, data: Buffer) -> None:
        if self._local:

            def write(tmp: str) -> None:
                with self.fs.open(tmp, "wb") as f:
                    f.write(data)  # a memoryview is written without a copy

            self._atomic(key, write)
        else:
            # One upload is atomic on object stores; their clients expect bytes.
            body = data if isinstance(data, bytes) else bytes(data)
            path = self._path(key)
            self._upload(
                lambda: self._bounded("pipe_file", path, body, nbytes=len(body), upload=True)
            )

    def _put_file(self, key: str, local_path: str) -> None:
        if self._local:
            self._atomic(key, lambda tmp: self.fs.put_file(local_path, tmp))
        else:
            path, size = self._path(key), os.path.getsize(local_path)
            self._upload(
                lambda: self._bounded("put_file", local_path, path, nbytes=size, upload=True)
            )

    def _upload(self, write: Callable[[], Any]) -> None:
        """An object-store write; one answered "not found" (gcsfs: FileNotFoundError, adlfs:
        ResourceNotFoundError, 404) means the bucket/container is missing: said as on reads."""
        try:
            write()
        except Exception as exc:
            status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
            if isinstance(exc, FileNotFoundError) or status == 404:
                self._check_bucket()
            raise

    def _check_bucket(self) -> None:
        """A read found nothing: on Azure/GCS, say so if the container/bucket itself does not
        exist (a typo in the root must not read as an empty store).  Asked once per store,
        only when something is not found."""
        if self._bucket_kind is None or self._bucket_seen:
            return
        name = self.root.split("/", 1)[0]
        try:
            self.fs.info(name)
        except FileNotFoundError:
            raise StorageError(
                "%s %r does not exist (checkpoint root %s). Create it or point the checkpoint "
                "root (METAFLOW_CHECKPOINT_ROOT or the datastore root) at an existing one."
                % (self._bucket_kind, name, self.url),
                url=self.url,
                reason="%s %s does not exist" % (self._bucket_kind, name),
            ) from None
        except Exception:  # noqa: BLE001 - e.g. no right to read the bucket itself: it may exist
            return
        self._bucket_seen = True

    def _get_bytes(self, key: str, start: int, length: Optional[int]) -> bytes:
        try:
            return self._get_range(key, start, length)
        except FileNotFoundError:
            self._check_bucket()
            raise

    def _get_range(self, key: str, start: int, length: Optional[int]) -> bytes:
        path = self._path(key)
        end = None if length is None else start + length
        try:
            if length == 0:  # an empty range is no request an object store accepts
                if not self._is_object(path):
                    raise FileNotFoundError(path)
                return b""
            return self._bounded("cat_file", path, start or None, end, nbytes=length)
        except (IsADirectoryError, NotADirectoryError) as exc:
            # A key that is a "directory" (prefix of other keys) is no object.
            raise FileNotFoundError(path) from exc
        except Exception as exc:
            # Azure answers a range starting at or past the end with 416, where S3 (and files)
            # give what is there: nothing.  The object's size tells which it was.
            if not _is_range_error(exc):
                raise
            if self.fs.size(path) <= start:
                return b""
            raise

    def _get_file(self, key: str, local_path: str) -> None:
        # Download next to the target and rename, so a failed download leaves nothing behind.
        directory = os.path.dirname(os.path.abspath(local_path))
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=directory)
        os.close(fd)
        try:
            if self._memory:
                # memory fs hands every reader the same file object: concurrent reads of one
                # key would share its position; cat_file copies the buffer instead.
                with open(tmp, "wb") as f:
                    f.write(self._get_bytes(key, 0, None))
            else:
                info = self._info(self._path(key))
                if info is None:
                    self._check_bucket()
                    raise FileNotFoundError(self._path(key))
                size = int(info.get("size") or 0)
                self._bounded("get_file", self._path(key), tmp, nbytes=size)
            os.replace(tmp, local_path)
        except BaseException:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            elif os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _is_object(self, path: str) -> bool:
        """Whether an object is at ``path``; errors other than "not found" propagate (fsspec's
        ``isfile`` says False for any error: a dead server would read as an empty store)."""
        return self._info(path) is not None

    def _info(self, path: str) -> Optional[dict]:
        """The info of the object at ``path``, None when there is none (see _is_object)."""
        try:
            info = self._bounded("info", path, nbytes=SMALL)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return info if info.get("type", "file") == "file" else None

    def _exists(self, key: str) -> bool:
        if self._is_object(self._path(key)):
            return True
        self._check_bucket()
        return False

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        found = False
        try:
            for info in self._list_found(prefix):
                found = True
                yield info
        except FileNotFoundError:
            self._check_bucket()
            raise
        if not found:
            self._check_bucket()

    def _list_found(self, prefix: str) -> Iterator[ObjectInfo]:
        # find() walks directories; start at the deepest one the raw prefix names, then filter.
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = self._path(head) if head else self.root
        base = self.root + "/"
        for path, info in self._find(top, prefix).items():
            if info.get("type", "file") != "file" or path.endswith("/"):
                continue  # directory entries and "folder" placeholders are not objects
            if not path.startswith(base):
                continue
            key = path[len(base) :]
            if not key.startswith(prefix) or key.rsplit("/", 1)[-1].startswith(_TMP_PREFIX):
                continue  # outside the prefix, or a write in flight
            yield ObjectInfo(key, int(info.get("size") or 0), _mtime(info))

    def _find(self, top: str, prefix: str) -> dict[str, dict]:
        """Every file under ``top`` that may match ``prefix``, with its info, failing closed.

        fsspec's generic ``find`` walks directory by directory and *omits* a directory it
        cannot list (its ``on_error`` applies to the top directory only), so filesystems that
        use it (``file``, sftp, smb, ...) are walked here, raising what ``ls`` raises except
        for a directory that does not exist (nothing saved there yet, or removed while being
        listed).  Object-store implementations (gcsfs, adlfs, s3fs, memory) list by prefix in
        their own ``find`` and raise on failure.
        """
        if not self._walks:
            found = self.fs.find(top, withdirs=False, detail=True)
            if isinstance(found, list):  # adlfs, when ``top`` is an object: its bare name
                found = {path: self.fs.info(path) for path in found}
            return found
        base = self.root + "/"
        found: dict[str, dict] = {}
        pending = [top.rstrip("/")]
        while pending:
            path = pending.pop()
            try:
                entries = self.fs.ls(path, detail=True)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for info in entries:
                name = info["name"].rstrip("/")
                if info.get("type") != "directory":
                    found[name] = info
                elif name != path and _may_hold(name[len(base) :] + "/", prefix):
                    pending.append(name)
        return found

    def _delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ errors
    def _classify(self, exc: BaseException) -> str:
        return classify(exc)
