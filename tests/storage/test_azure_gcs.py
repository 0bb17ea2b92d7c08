"""Azure Blob (Azurite) and GCS (gcp-storage-emulator) specifics: the settings users give reach
the store, a stopped server is a bounded StorageError, and nothing leaves 127.0.0.1.

The behaviour shared with every backend is in test_conformance.py (``azure``, ``gs`` params).
"""

from __future__ import annotations

import pickle
import random
import re
import socket
import time

import metaflow  # noqa: F401  (imported before the extension, as Metaflow itself does)
import pytest
from emulators import (
    AZURITE_KEY,
    new_azure_container,
    new_gcs_bucket,
    start_azurite,
    start_gcs,
)
from hypothesis import given
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.common import settings
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    StorageError,
    StorageNotFound,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.base import RetryPolicy
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.factory import storage_for_url
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.fsspec_clients import (
    azure_account,
)

from .hostile import Proxy

TINY = RetryPolicy(attempts=3, max_seconds=10, backoff=0.01, max_backoff=0.05)


@pytest.mark.parametrize(
    "endpoint, account, url",
    [
        (
            "https://acct.blob.core.windows.net/",
            "acct",
            "https://acct.blob.core.windows.net",
        ),
        ("https://other.blob.example.org", "other", "https://other.blob.example.org"),
        # Azurite and other path-style endpoints: the account is the first path component.
        (
            "http://127.0.0.1:10000/devstoreaccount1",
            "devstoreaccount1",
            "http://127.0.0.1:10000/devstoreaccount1",
        ),
        ("http://localhost:10000/acct2/", "acct2", "http://localhost:10000/acct2"),
        ("acct.blob.core.windows.net", "acct", "https://acct.blob.core.windows.net"),
        (None, None, None),
        ("", None, None),
    ],
)
def test_azure_account_from_the_blob_endpoint(endpoint, account, url):
    assert azure_account(endpoint) == (account, url)


@given(
    account=st.from_regex(r"[a-z0-9]{3,24}", fullmatch=True),
    port=st.integers(1, 65535),
    host=st.sampled_from(["127.0.0.1", "localhost", "10.1.2.3"]),
    scheme=st.sampled_from(["http", "https"]),
    slash=st.sampled_from(["", "/"]),
)
def test_azure_account_of_any_endpoint(account, port, host, scheme, slash):
    """Account-by-host and account-by-path endpoints name the account and keep where it is
    served (scheme, host, port, path), without a trailing slash."""
    public = "https://%s.blob.core.windows.net%s" % (account, slash)
    assert azure_account(public) == (account, public.rstrip("/"))
    local = "%s://%s:%d/%s%s" % (scheme, host, port, account, slash)
    assert azure_account(local) == (account, local.rstrip("/"))
    # Without the account in its path, an IP or localhost endpoint is refused, naming the
    # setting and the expected form (its host would read as an account named "127").
    for bare in ("%s://%s:%d%s" % (scheme, host, port, slash), "%s://%s%s" % (scheme, host, slash)):
        with pytest.raises(CheckpointConfigError) as info:
            azure_account(bare)
        assert "METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT=%r" % bare in str(info.value)
        assert "http://127.0.0.1:10000/devstoreaccount1" in str(info.value)
    # Anything after the account (a container, a second component), any path on a public
    # endpoint, or a query string (a SAS token) is refused the same way: kept, it would make
    # every request fail naming the container; dropped, a credential would be lost unsaid.
    for wrong in (
        local.rstrip("/") + "/cont1",
        public.rstrip("/") + "/" + account,
        local.rstrip("/") + "?sv=2020&sig=x",
        public.rstrip("/") + "/?sig=x",
    ):
        with pytest.raises(CheckpointConfigError) as info:
            azure_account(wrong)
        assert "METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT=%r" % wrong in str(info.value)
        assert "https://<account>.blob.core.windows.net" in str(info.value)


def test_metaflows_azure_endpoint_reaches_azurite(azure_env):
    """``METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT`` names the account and where it is
    served: what the store writes is in that account's container, read with Azure's SDK."""
    from azure.storage.blob import BlobServiceClient

    container = azure_env["new_container"]()
    assert settings.azure_endpoint() == azure_env["endpoint"]
    store = settings.storage_for_url("az://%s/root" % container)
    store.put_bytes("blobs/k", b"payload")
    client = BlobServiceClient(azure_env["endpoint"], credential=AZURITE_KEY)
    blob = client.get_blob_client(container, "root/blobs/k")
    assert blob.download_blob().readall() == b"payload"
    assert [i.key for i in store.list()] == ["blobs/k"]


def test_gcs_talks_to_the_emulator_only(gcs_env, monkeypatch):
    """With ``STORAGE_EMULATOR_HOST`` and no credentials, a gs:// store resolves no name but
    the emulator's: no Google endpoint, no metadata server."""
    looked_up: list = []
    real = socket.getaddrinfo

    def recording(host, *args, **kwargs):
        looked_up.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    bucket = gcs_env["new_bucket"]()
    store = settings.storage_for_url("gs://%s/root" % bucket)
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"
    assert [i.key for i in store.list()] == ["k"]
    assert looked_up and set(looked_up) == {"127.0.0.1"}, looked_up


def _azure_store(tmp_path):
    emulator = start_azurite(tmp_path / "azurite")
    container = new_azure_container(emulator, "stopped")
    store = storage_for_url(
        "az://%s/root" % container,
        retry=TINY,
        timeout=2,
        azure_endpoint=emulator.endpoint,
        fsspec_options={"account_key": AZURITE_KEY},
    )
    return emulator, store


def _gcs_store(tmp_path):
    emulator = start_gcs(tmp_path / "gcs")
    bucket = new_gcs_bucket(emulator, "stopped")
    store = storage_for_url(
        "gs://%s/root" % bucket,
        retry=TINY,
        timeout=2,
        fsspec_options={"endpoint_url": emulator.endpoint, "token": "anon"},
    )
    return emulator, store


@pytest.mark.parametrize("make", [_azure_store, _gcs_store], ids=["azure", "gs"])
def test_a_stopped_server_is_a_bounded_storage_error(make, tmp_path, monkeypatch):
    """The SDKs' own retries (minutes against a dead server) are off: each call is tried as
    the RetryPolicy says and fails with a StorageError naming the URL, in seconds."""
    emulator, store = make(tmp_path)
    try:
        store.put_bytes("k", b"before")
        assert store.get_bytes("k") == b"before"
    finally:
        emulator.stop()
    tries: list = []
    real_put = store._put_bytes
    monkeypatch.setattr(store, "_put_bytes", lambda *a: tries.append(1) or real_put(*a))

    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.put_bytes("blobs/k", b"data")
    # Seconds, not the minutes of the SDKs' own retries: 3 tries counted, each refused at once
    # (~0.1-0.5 s in all; a try is bounded by the 2 s timeout and none starts after 10 s).
    assert time.monotonic() - started < 30
    assert len(tries) == 3
    assert "%s/blobs/k" % store.url in str(info.value)
    assert "3 tries" in str(info.value)
    # What it did (tries, seconds spent) and the limits are said apart (TINY: 3 tries, 10 s).
    spent = re.search(r"still failing after 3 tries in ([0-9.]+) s \(", str(info.value))
    assert spent and float(spent.group(1)) < 30, str(info.value)
    assert "the limits are 3 tries and 10 s" in str(info.value)

    for call in (lambda: store.get_bytes("k"), lambda: store.list("x/"), lambda: store.exists("k")):
        started = time.monotonic()
        with pytest.raises(StorageError, match=store.url) as info:
            call()
        assert not isinstance(info.value, StorageNotFound)
        assert time.monotonic() - started < 30


@pytest.mark.parametrize("kind", ["azure", "gs"])
def test_pickled_store_works(kind, request):
    """As S3 stores: a store sent to another process opens its bounded client again."""
    if kind == "azure":
        env = request.getfixturevalue("azure_env")
        url = "az://%s/p" % env["new_container"]()
    else:
        url = "gs://%s/p" % request.getfixturevalue("gcs_env")["new_bucket"]()
    store = settings.storage_for_url(url)
    store.put_bytes("k", b"v")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get_bytes("k") == b"v"
    assert clone.fs is not store.fs


@pytest.mark.parametrize(
    "url, module, package, extra",
    [
        ("az://container/root", "adlfs", "adlfs", "azure"),
        ("abfs://container/root", "adlfs", "adlfs", "azure"),
        ("gs://bucket/root", "gcsfs.core", "gcsfs", "gs"),
    ],
)
def test_a_missing_package_names_the_extra(url, module, package, extra, monkeypatch):
    """Without adlfs or gcsfs, opening the root says which extra installs it, before any I/O."""
    import sys

    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
        CheckpointDependencyError,
    )

    monkeypatch.setitem(sys.modules, module, None)  # "import adlfs" raises ImportError
    with pytest.raises(CheckpointDependencyError) as info:
        storage_for_url(url)
    message = str(info.value)
    assert repr(package) in message and url in message
    assert 'pip install "metaflow-checkpointing[%s]"' % extra in message


def _proxied(kind: str, request, proxy_mode: str, retry=TINY, timeout: float = 1, **proxy):
    """(a direct store, the same root through a hostile :class:`.hostile.Proxy`, the proxy),
    on the session's emulator."""
    if kind == "azure":
        env = request.getfixturevalue("azurite")
        url = "az://%s/root" % env["new_container"]()
        emulator = env["emulator"]
        prx = Proxy(emulator.port, proxy_mode, **proxy)

        def open_store(endpoint, retry=TINY, timeout=10):
            return storage_for_url(
                url,
                retry=retry,
                timeout=timeout,
                azure_endpoint=endpoint,
                fsspec_options={"account_key": AZURITE_KEY},
            )

        return (
            open_store(emulator.endpoint),
            open_store(prx.url + "/devstoreaccount1", retry, timeout),
            prx,
        )
    env = request.getfixturevalue("gcs_emulator")
    url = "gs://%s/root" % env["new_bucket"]()
    prx = Proxy(env["emulator"].port, proxy_mode, **proxy)

    def open_gs(endpoint, retry=TINY, timeout=10):
        options = {"endpoint_url": endpoint, "token": "anon"}
        return storage_for_url(url, retry=retry, timeout=timeout, fsspec_options=options)

    return open_gs(env["endpoint"]), open_gs(prx.url, retry, timeout), prx


@pytest.mark.parametrize("kind", ["azure", "gs"])
def test_a_trickling_server_is_cut_per_try(kind, request):
    """A link that forwards one byte every 0.2 s never lets a socket read time out; each try
    is cut after ``timeout`` plus its bytes at MIN_RATE, so a call fails after its tries (was:
    2-3 minutes for one existence check, days for a 3 MB read)."""
    retry = RetryPolicy(attempts=2, max_seconds=10, backoff=0.01, max_backoff=0.05)
    direct, store, proxy = _proxied(kind, request, "drip", retry=retry, timeout=0.5, delay=0.2)
    try:
        direct.put_bytes("k", b"x" * 1000)
        calls = {
            "exists": lambda: store.exists("k"),
            "get": lambda: store.get_bytes("k", 0, 1000),
            "put": lambda: store.put_bytes("k2", b"y" * 1000),
        }
        for op, call in calls.items():
            started = time.monotonic()
            with pytest.raises(StorageError, match="still failing after 2 tries") as info:
                call()
            # Cut by the bound (an SDK's own timeout would say otherwise), 2 tries counted.
            assert "no complete answer within" in str(info.value), op
            # ~1.2-1.6 s here; one uncut answer (its headers alone, 300+ bytes) takes over 60 s.
            assert time.monotonic() - started < 40, op
    finally:
        proxy.close()


@pytest.mark.parametrize("kind", ["azure", "gs"])
def test_a_slow_upload_is_bounded_per_try_not_per_read(kind, request):
    """An upload's body is handed to the socket at once and its buffered part drains while the
    SDK waits for the answer: with a per-read timeout, a 384 KiB put over a steady 128 KiB/s
    uplink (3 s) was cut at the 1 s timeout on every try.  It now has the documented bound
    (1 s + 384 KiB at 64 KiB/s = 7 s) and completes in its first try: the link carries its
    bytes once.  A trickled upload is still cut, and the error says by which limit."""
    size = 384 << 10
    direct, store, proxy = _proxied(
        kind, request, "rate", retry=RetryPolicy(3, 60, 0.01, 0.05), rate=128 << 10, up=True
    )
    try:
        data = random.Random(5).randbytes(size)
        store.put_bytes("up", data)
        assert direct.get_bytes("up") == data
        # A cut try is sent again from its first byte: a second pass would show here.
        assert proxy.received < 1.2 * size, proxy.received
    finally:
        proxy.close()
    retry = RetryPolicy(attempts=2, max_seconds=10, backoff=0.01, max_backoff=0.05)
    _, store, proxy = _proxied(kind, request, "drip", retry=retry, timeout=0.5, up=True)
    try:
        with pytest.raises(StorageError, match="still failing after 2 tries") as info:
            store.put_bytes("k2", b"y" * 1000)  # 1000 bytes at 5 B/s: 200 s per try
        assert "cut by the whole-try bound" in str(info.value)
        assert "per-socket timeout" not in str(info.value)
    finally:
        proxy.close()


@pytest.mark.parametrize("kind", ["azure", "gs"])
def test_a_socket_timeout_is_told_from_the_whole_try_bound(kind, request):
    """A ranged get of 1 MiB whose request is never answered: the SDK's per-read timeout
    (0.5 s) fires long before the whole-try bound (0.5 s + 16 s), and the error says it was
    the socket's timeout, with the SDK's own text (fsspec's bare FSTimeoutError had none)."""
    retry = RetryPolicy(1, 10, 0.01, 0.05)
    direct, store, proxy = _proxied(kind, request, "stall_first", retry=retry, timeout=0.5)
    try:
        direct.put_bytes("k", b"z" * (1 << 20))
        with pytest.raises(StorageError) as info:
            store.get_bytes("k", 0, 1 << 20)
        assert proxy.stalled == 1
        message = str(info.value)
        assert "the SDK's per-socket timeout, not the whole-try bound" in message, message
        assert re.search(r"Timeout\w*Error: \S", message), message
    finally:
        proxy.close()
    # A whole object of unknown size (a manifest) has no whole-try bound: the same is said.
    _, store, proxy = _proxied(kind, request, "stall_first", retry=retry, timeout=0.5)
    try:
        with pytest.raises(StorageError) as info:
            store.get_bytes("k")
        assert "the SDK's per-socket timeout" in str(info.value), str(info.value)
        assert re.search(r"Timeout\w*Error: \S", str(info.value)), str(info.value)
    finally:
        proxy.close()


@pytest.mark.parametrize("kind", ["azure", "gs"])
def test_transfers_sharing_a_slow_link_are_not_cut(kind, request, tmp_path):
    """The per-try bound scales with the bytes moved and with the transfers in flight: 8
    transfers of 240 KiB at once over one 320 KiB/s link (40 KiB/s each, 6 s, far past the 1 s
    timeout and slower than MIN_RATE each) all complete in their first try, as files and as
    ranges: the link carries each object's bytes once.  (Bounded per request alone, each try
    was cut after 1 + 240 KiB / 64 KiB/s = 4.75 s and every retry was cut again.)"""
    from concurrent.futures import ThreadPoolExecutor

    size, count = 240 << 10, 8
    direct, store, proxy = _proxied(
        kind, request, "link", retry=RetryPolicy(3, 120, 0.01, 0.05), timeout=1, rate=320 << 10
    )
    try:
        blobs = {"b%d" % i: random.Random(i).randbytes(size) for i in range(count)}
        for key, data in blobs.items():
            direct.put_bytes(key, data)

        def fetch(key: str) -> bytes:
            if int(key[1:]) % 2:
                return store.get_bytes(key, 0, size)
            store.get_file(key, str(tmp_path / key))
            return (tmp_path / key).read_bytes()

        with ThreadPoolExecutor(count) as pool:
            got = dict(zip(blobs, pool.map(fetch, blobs)))
        assert got == blobs
        # A cut transfer is retried from its first byte: a second pass would show here.
        assert proxy.sent < 1.1 * size * count, proxy.sent
    finally:
        proxy.close()


@pytest.mark.parametrize("kind", ["azure", "gs"])
def test_a_body_cut_mid_transfer_is_retried(kind, request):
    """A connection closed in the middle of a download (azure-core wraps it in a status-less
    HttpResponseError, gcsfs lets aiohttp's ClientPayloadError through) is transient on both:
    retried, the call succeeds once the link holds, and a link that always cuts gives the
    bounded "still failing" StorageError."""
    data = random.Random(3).randbytes(3 << 20)
    direct, store, proxy = _proxied(
        kind, request, "cut", retry=RetryPolicy(5, 30, 0.01, 0.05), after=200_000, times=3
    )
    try:
        direct.put_bytes("big", data)
        assert store.get_bytes("big") == data
        assert proxy.cuts == 3  # (Azure's SDK re-downloads twice itself, then it is ours)
    finally:
        proxy.close()
    direct, store, proxy = _proxied(kind, request, "cut", after=200_000)
    try:
        direct.put_bytes("big", data)
        with pytest.raises(StorageError, match="still failing after 3 tries"):
            store.get_bytes("big")
    finally:
        proxy.close()


@pytest.mark.parametrize("kind", ["azure", "gs"])
def test_a_response_stalled_past_the_timeout_is_retried(kind, tmp_path):
    """A first request whose response never comes (here a put: cut by the whole-try bound, as
    uploads have no per-read timeout; a get's by the SDK's per-read timeout) is retried, and
    the call succeeds on the next connection."""
    if kind == "azure":
        emulator = start_azurite(tmp_path / "azurite")
        where = new_azure_container(emulator, "stall")
    else:
        emulator = start_gcs(tmp_path / "gcs")
        where = new_gcs_bucket(emulator, "stall")
    proxy = Proxy(emulator.port, "stall_first")
    try:
        if kind == "azure":
            store = storage_for_url(
                "az://%s/root" % where,
                retry=TINY,
                timeout=1,
                azure_endpoint="http://127.0.0.1:%d/devstoreaccount1" % proxy.port,
                fsspec_options={"account_key": AZURITE_KEY},
            )
        else:
            store = storage_for_url(
                "gs://%s/root" % where,
                retry=TINY,
                timeout=1,
                fsspec_options={
                    "endpoint_url": "http://127.0.0.1:%d" % proxy.port,
                    "token": "anon",
                },
            )
        store.put_bytes("k", b"payload")
        assert proxy.stalled == 1
        assert store.get_bytes("k") == b"payload"
    finally:
        proxy.close()
        emulator.stop()
