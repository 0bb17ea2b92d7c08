"""The fsspec filesystems of Azure Blob (adlfs) and Google Cloud Storage (gcsfs), bounded.

Both SDKs retry on their own, with their own waits (gcsfs: 6 tries over about 30 s; the Azure
SDK: 3 retries from a 15 s backoff), under :class:`.base.Storage`'s retries: a stopped server
would hold a call for minutes.  As for S3 (``storage/s3.py``), the clients built here try each
request once and time out each socket after ``timeout`` seconds (connecting, and each read
except an upload's: see :data:`.fsspec_limits.uploading`); ``RetryPolicy`` alone decides what
is tried again.  Listing caches are off: another task's writes must show in the next list.

Settings come in as arguments (``common/settings.py`` reads Metaflow's and the environment).
"""

from __future__ import annotations

from functools import cache
from typing import Any, Optional
from urllib.parse import urlparse

from ..errors import CheckpointConfigError
from .fsspec_limits import uploading

#: fsspec options of every cloud filesystem: a private instance (its client is replaced below)
#: and no listing cache.
_PRIVATE = {"skip_instance_cache": True, "use_listings_cache": False}


def azure_account(endpoint: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """``(account name, account URL)`` of a blob service endpoint (Metaflow's
    ``AZURE_STORAGE_BLOB_SERVICE_ENDPOINT``).

    ``https://acct.blob.core.windows.net`` names ``acct`` by host; an endpoint whose host is an
    IP address or ``localhost`` (Azurite, a private link proxy) names it by its first path
    component: ``http://127.0.0.1:10000/devstoreaccount1``.  Nothing else may follow: a
    container or other path after the account, or a query string (a SAS token belongs in the
    credential settings), would otherwise be silently kept or dropped, and every request would
    then fail naming the container.

    Raises
    ------
    CheckpointConfigError
        An IP or ``localhost`` endpoint without the account in its path (its host would read as
        an account named "127"), or an endpoint with more path, a query or a fragment, naming
        the setting and the form expected.
    """
    if not endpoint:
        return None, None
    parsed = urlparse(endpoint if "://" in endpoint else "https://" + endpoint)
    host = parsed.hostname or ""
    path = [p for p in parsed.path.split("/") if p]
    by_path = host == "localhost" or host.replace(".", "").isdigit() or ":" in host
    expected = (
        "an endpoint on an IP address or localhost (Azurite, a private link) names the account "
        "as its only path component, e.g. http://127.0.0.1:10000/devstoreaccount1; a public one "
        "names it by host, with no path, e.g. https://<account>.blob.core.windows.net"
    )
    if by_path and not path:
        raise CheckpointConfigError(
            "METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT=%r names no storage account: %s."
            % (endpoint, expected)
        )
    extra = path[1:] if by_path else path
    if extra or parsed.query or parsed.fragment or parsed.params:
        what = "a path after the account (%s)" % "/".join(extra) if extra else "a query string"
        raise CheckpointConfigError(
            "METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT=%r has %s: it must be the blob "
            "service endpoint alone (the container goes in the checkpoint root, az://<container>"
            "/<prefix>, and credentials in their own settings); %s." % (endpoint, what, expected)
        )
    account = path[0] if by_path else host.split(".", 1)[0]
    url = "%s://%s%s" % (parsed.scheme or "https", parsed.netloc, parsed.path.rstrip("/"))
    return (account or None), url


def open_azure(url: str, options: dict, endpoint: Optional[str], timeout: float) -> tuple[Any, str]:
    """adlfs for ``az://``/``abfs://`` URLs, talking to ``endpoint`` when given.

    ``options`` are adlfs's (``connection_string``, ``account_name``, ``account_key``,
    ``credential``...); without a connection string adlfs also reads its environment variables
    (``AZURE_STORAGE_CONNECTION_STRING``, ``AZURE_STORAGE_ACCOUNT_KEY``, ...) and otherwise uses
    ``DefaultAzureCredential`` as Metaflow does.
    """
    from adlfs import AzureBlobFileSystem

    account, account_url = azure_account(endpoint)
    options = dict(options)
    if account and not options.get("connection_string"):
        options.setdefault("account_name", account)
    fs = AzureBlobFileSystem(**options, **_PRIVATE)
    client = fs.service_client
    cls = _azure_transport()
    # adlfs builds https://<account_host>; the endpoint may be http (Azurite) or path-style.
    target = account_url if account_url and not options.get("connection_string") else client.url
    fs.service_client = type(client)(
        target,
        credential=client.credential,
        retry_total=0,
        transport=cls(connection_timeout=timeout, read_timeout=timeout),
    )
    return fs, fs._strip_protocol(url)


@cache
def _azure_transport() -> type:
    """azure-core's aiohttp transport, without a read timeout for an upload's requests: the
    response's read timer starts while the body still drains from the socket buffers."""
    from azure.core.pipeline.transport import AioHttpTransport

    class UploadAwareTransport(AioHttpTransport):
        async def send(self, request, **config):
            if uploading.get():
                config["read_timeout"] = None
            return await super().send(request, **config)

    return UploadAwareTransport


@cache
def _gcs_class() -> type:
    """gcsfs's core filesystem, one try per request.

    The core class, not the one ``gcsfs.GCSFileSystem`` names by default
    (``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT``): that one first asks the gRPC Storage Control API
    for each bucket's layout, for features plain object reads and writes do not use.
    """
    import aiohttp
    from gcsfs.core import GCSFileSystem

    once = getattr(GCSFileSystem._request, "__wrapped__", None)

    class BoundedGCSFileSystem(GCSFileSystem):
        # gcsfs reads ``self.requests_timeout`` for every request: an upload's (see
        # fsspec_limits.uploading) has no read timeout, its connect timeout stays.
        @property
        def requests_timeout(self) -> Any:
            given = self._requests_timeout
            if uploading.get() and isinstance(given, aiohttp.ClientTimeout):
                return aiohttp.ClientTimeout(sock_connect=given.sock_connect)
            return given

        @requests_timeout.setter
        def requests_timeout(self, value: Any) -> None:
            self._requests_timeout = value

        if once is not None:  # else gcsfs changed its retry decorator: keep its own retries

            async def _request(self, *args, **kwargs):
                return await once(self, *args, **kwargs)

    return BoundedGCSFileSystem


def open_gcs(url: str, options: dict, timeout: float) -> tuple[Any, str]:
    """gcsfs for ``gs://``/``gcs://`` URLs.

    ``options`` are gcsfs's (``endpoint_url``, ``token``, ``project``...); gcsfs itself honours
    ``STORAGE_EMULATOR_HOST`` and Google's default credentials.
    """
    import aiohttp
    import gcsfs.core  # noqa: F401 - here, not in the cached _gcs_class: a missing gcsfs is told

    cls = _gcs_class()
    options = dict(options)
    options.setdefault(
        "requests_timeout", aiohttp.ClientTimeout(sock_connect=timeout, sock_read=timeout)
    )
    fs = cls(**options, **_PRIVATE)
    return fs, fs._strip_protocol(url)
