"""S3-specific behaviour: Metaflow's settings, bounded retries, clear errors, no hangs.

The backend reads no Metaflow setting itself: ``common.settings`` hands it an ``S3Config``
(tests open stores the way the package does, through :func:`_s3` or ``storage_for_url``)."""

from __future__ import annotations

import pickle
import socket
import threading
import time

import metaflow  # noqa: F401  (imported before the extension, as Metaflow itself does)
import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.common import settings
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    StorageError,
    StorageNotFound,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.base import (
    NOT_FOUND,
    PERMANENT,
    TRANSIENT,
    RetryPolicy,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.s3 import (
    S3Config,
    S3Storage,
    boto3_client,
    parse_s3_url,
)

pytestmark = pytest.mark.s3

TINY = RetryPolicy(attempts=3, max_seconds=5, backoff=0.01, max_backoff=0.02)


def _s3(url: str, **kwargs) -> S3Storage:
    """An S3 store with Metaflow's settings, as ``common.settings`` opens one."""
    return S3Storage(url, config=settings.s3_config(), **kwargs)


@pytest.fixture
def bucket(s3_env):
    return s3_env["new_bucket"]()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def _fail_first(store: S3Storage, operation: str, n: int, make_error):
    """Make the first ``n`` requests of ``operation`` fail before they are sent."""
    calls = []

    def before_send(request, **kwargs):
        calls.append(request.url)
        if len(calls) <= n:
            return make_error(request)
        return None

    store.client.meta.events.register("before-send.s3.%s" % operation, before_send)
    return calls


class _Raw:
    """Minimal urllib3-like raw response for a botocore AWSResponse."""

    def __init__(self, body: bytes):
        self._body = body

    def stream(self, *args, **kwargs):
        yield self._body


def _http_error(status: int, code: str):
    from botocore.awsrequest import AWSResponse

    body = (
        "<?xml version='1.0' encoding='UTF-8'?><Error><Code>%s</Code>"
        "<Message>injected</Message></Error>" % code
    ).encode()

    def make(request):
        return AWSResponse(request.url, status, {}, _Raw(body))

    return make


def _raise_connection_closed(request):
    from botocore.exceptions import ConnectionClosedError

    raise ConnectionClosedError(endpoint_url=request.url)


# ---------------------------------------------------------------------------------- settings
def test_honours_metaflow_s3_endpoint(s3_env, bucket):
    store = settings.storage_for_url("s3://%s/some/prefix" % bucket)  # endpoint: Metaflow's
    assert isinstance(store, S3Storage)
    store.put_bytes("k/1", b"payload")
    assert store.client.meta.endpoint_url == s3_env["endpoint"]
    body = s3_env["client"].get_object(Bucket=bucket, Key="some/prefix/k/1")["Body"].read()
    assert body == b"payload"
    assert store.full_url("k/1") == "s3://%s/some/prefix/k/1" % bucket


def test_store_uses_the_settings_it_is_handed_not_metaflows(s3_env, bucket):
    # Metaflow points at the moto server (s3_env); a store handed another endpoint uses it:
    # storage/ reads no Metaflow setting, common.settings passes them.
    calls = []

    def factory(service, role_arn=None, session_vars=None, client_params=None):
        calls.append((service, role_arn, dict(session_vars), dict(client_params)))
        return boto3_client(service, None, session_vars, client_params)

    config = S3Config(
        client_params={"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"},
        session_vars={"region_name": "us-east-1"},
        client_factory=factory,
    )
    # The store's own client_params win over the config's (here: the moto server).
    store = S3Storage(
        "s3://%s/p" % bucket, config=config, client_params={"endpoint_url": s3_env["endpoint"]}
    )
    store.put_bytes("k", b"v")
    assert s3_env["client"].get_object(Bucket=bucket, Key="p/k")["Body"].read() == b"v"
    ((service, role, session_vars, params),) = calls
    assert (service, role, session_vars) == ("s3", None, {"region_name": "us-east-1"})
    assert params["endpoint_url"] == s3_env["endpoint"] and params["region_name"] == "us-east-1"


def test_metaflow_settings_are_read_by_the_settings_layer(s3_env, monkeypatch):
    from metaflow import metaflow_config
    from metaflow.plugins.aws.aws_client import get_aws_client

    monkeypatch.setattr(metaflow_config, "S3_SERVER_SIDE_ENCRYPTION", "aws:kms")
    monkeypatch.setattr(metaflow_config, "DATATOOLS_SESSION_VARS", {"region_name": "eu-west-1"})
    config = settings.s3_config()
    assert config.client_params["endpoint_url"] == s3_env["endpoint"]
    assert config.session_vars == {"region_name": "eu-west-1"}
    assert config.server_side_encryption == "aws:kms"
    assert config.client_factory is get_aws_client
    assert settings.storage_for_url("s3://b/p").config == config


def test_role_without_a_client_factory_that_can_assume_it_is_a_clear_error():
    store = S3Storage("s3://bucket/p", role_arn="arn:aws:iam::1:role/r")
    with pytest.raises(CheckpointConfigError, match="arn:aws:iam::1:role/r.*common.settings"):
        store.client  # noqa: B018 - the client is built on first use


def test_client_config_bounds_requests(s3_env, bucket):
    store = _s3("s3://%s/p" % bucket, workers=48, timeout=7)
    config = store.client.meta.config
    assert config.connect_timeout == 7 and config.read_timeout == 7
    assert config.max_pool_connections == 48
    assert config.retries["total_max_attempts"] == 1  # tenacity retries, not botocore


def test_server_side_encryption_setting(s3_env, bucket, monkeypatch, tmp_path):
    from metaflow import metaflow_config

    monkeypatch.setattr(metaflow_config, "S3_SERVER_SIDE_ENCRYPTION", "AES256")
    store = _s3("s3://%s/p" % bucket)
    store.put_bytes("bytes", b"x")
    src = tmp_path / "f"
    src.write_bytes(b"y" * 1000)
    store.put_file("file", str(src))
    for key in ("p/bytes", "p/file"):
        head = s3_env["client"].head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256"


def test_client_is_created_once_across_threads(s3_env, bucket):
    store = _s3("s3://%s/p" % bucket)
    clients = []
    threads = [threading.Thread(target=lambda: clients.append(store.client)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(c) for c in clients}) == 1


def test_memoryview_is_streamed_without_copy(s3_env, bucket):
    store = _s3("s3://%s/p" % bucket)
    bodies = []
    store.client.meta.events.register(
        "before-parameter-build.s3.PutObject",
        lambda params, **kw: bodies.append(type(params["Body"])),
    )
    buf = bytearray(b"abcdef" * 1000)
    store.put_bytes("v", memoryview(buf)[:3000])
    assert bodies and bodies[0] not in (bytes, bytearray, memoryview)
    assert store.get_bytes("v") == bytes(buf[:3000])


def test_bucket_root_without_prefix(s3_env, bucket):
    store = _s3("s3://%s/" % bucket)
    assert store.url == "s3://%s" % bucket
    store.put_bytes("a/b", b"1")
    assert [i.key for i in store.list()] == ["a/b"]
    assert store.full_url("a/b") == "s3://%s/a/b" % bucket


def test_pickled_store_works(s3_env, bucket):
    store = _s3("s3://%s/p" % bucket)
    store.put_bytes("k", b"v")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get_bytes("k") == b"v"


@pytest.mark.parametrize("url", ["s3://", "s3:///x", "gs://bucket/x", "bucket/x"])
def test_invalid_s3_url(url):
    with pytest.raises(CheckpointConfigError, match="s3://"):
        parse_s3_url(url)


# ---------------------------------------------------------------------------------- errors
def test_missing_bucket_is_a_clear_error(s3_env, tmp_path):
    store = _s3("s3://no-such-bucket-mfckpt/root", retry=TINY)
    src = tmp_path / "f"
    src.write_bytes(b"x")
    calls = [
        lambda: store.put_bytes("k", b"x"),
        lambda: store.put_file("k", str(src)),
        lambda: store.get_bytes("k"),
        lambda: store.get_file("k", str(tmp_path / "dst")),
        lambda: store.exists("k"),  # HEAD says 404 for key and bucket alike
        lambda: store.list(),
        lambda: store.delete("k"),
    ]
    for call in calls:
        with pytest.raises(StorageError, match="no-such-bucket-mfckpt") as info:
            call()
        assert not isinstance(info.value, StorageNotFound)
        assert "does not exist" in str(info.value)


def test_unreachable_endpoint_fails_fast_and_bounded(s3_env, monkeypatch):
    from metaflow import metaflow_config

    endpoint = "http://127.0.0.1:%d" % _closed_port()
    params = dict(metaflow_config.DATATOOLS_CLIENT_PARAMS, endpoint_url=endpoint)
    monkeypatch.setattr(metaflow_config, "DATATOOLS_CLIENT_PARAMS", params)
    store = _s3("s3://some-bucket/root", retry=TINY, timeout=2)
    tries = []
    real_put = store._put_bytes
    monkeypatch.setattr(store, "_put_bytes", lambda *a: tries.append(1) or real_put(*a))

    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.put_bytes("blobs/k", b"data")
    elapsed = time.monotonic() - started
    assert elapsed < 5
    assert len(tries) == 3
    message = str(info.value)
    assert "s3://some-bucket/root/blobs/k" in message
    assert "3 tries" in message and "EndpointConnectionError" in message

    started = time.monotonic()
    for call in (lambda: store.get_bytes("k"), lambda: store.list("x/")):
        with pytest.raises(StorageError, match="s3://some-bucket/root"):
            call()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "make_error",
    [
        pytest.param(_http_error(503, "SlowDown"), id="SlowDown"),
        pytest.param(_http_error(500, "InternalError"), id="InternalError"),
        pytest.param(_raise_connection_closed, id="ConnectionClosedError"),
    ],
)
def test_transient_errors_are_retried(s3_env, bucket, make_error):
    store = _s3("s3://%s/p" % bucket, retry=TINY)
    calls = _fail_first(store, "PutObject", 2, make_error)
    store.put_bytes("k", b"eventually")
    assert len(calls) == 3
    assert store.get_bytes("k") == b"eventually"


def test_transient_errors_give_up_with_a_clear_message(s3_env, bucket):
    store = _s3("s3://%s/p" % bucket, retry=TINY)
    calls = _fail_first(store, "GetObject", 100, _http_error(503, "SlowDown"))
    store.put_bytes("k", b"x")
    with pytest.raises(StorageError) as info:
        store.get_bytes("k")
    assert len(calls) == 3
    assert "still failing after 3 tries" in str(info.value)
    assert "SlowDown" in str(info.value)


def test_permanent_errors_are_not_retried(s3_env, bucket):
    store = _s3("s3://%s/p" % bucket, retry=TINY)
    calls = _fail_first(store, "PutObject", 100, _http_error(403, "AccessDenied"))
    with pytest.raises(StorageError, match="AccessDenied") as info:
        store.put_bytes("k", b"x")
    assert not isinstance(info.value, StorageNotFound)
    assert len(calls) == 1


def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "Op",
    )


@pytest.mark.parametrize(
    "code, status, kind",
    [
        ("NoSuchKey", 404, NOT_FOUND),
        ("404", 404, NOT_FOUND),
        ("SlowDown", 503, TRANSIENT),
        ("RequestTimeout", 400, TRANSIENT),
        ("Throttling", 400, TRANSIENT),
        ("InternalError", 500, TRANSIENT),
        ("ServiceUnavailable", 503, TRANSIENT),
        ("Whatever", 502, TRANSIENT),
        ("TooManyRequests", 429, TRANSIENT),
        ("AccessDenied", 403, PERMANENT),
        ("NoSuchBucket", 404, PERMANENT),
        ("InvalidAccessKeyId", 403, PERMANENT),
    ],
)
def test_classify_client_errors(code, status, kind):
    store = S3Storage("s3://bucket/p")
    assert store._classify(_client_error(code, status)) == kind


def test_classify_connection_errors():
    from boto3.exceptions import S3UploadFailedError
    from botocore import exceptions as bex
    from urllib3.exceptions import ProtocolError

    store = S3Storage("s3://bucket/p")
    transient = [
        bex.EndpointConnectionError(endpoint_url="http://x"),
        bex.ConnectTimeoutError(endpoint_url="http://x"),
        bex.ReadTimeoutError(endpoint_url="http://x"),
        bex.ConnectionClosedError(endpoint_url="http://x"),
        bex.IncompleteReadError(actual_bytes=1, expected_bytes=2),
        ProtocolError("reset"),
        ConnectionResetError(),
    ]
    for exc in transient:
        assert store._classify(exc) == TRANSIENT, exc
    assert store._classify(bex.NoCredentialsError()) == PERMANENT
    assert store._classify(ValueError("bug")) == PERMANENT

    # upload_file wraps ClientErrors; the wrapped one decides.
    for inner, kind in [
        (_client_error("SlowDown", 503), TRANSIENT),
        (_client_error("AccessDenied", 403), PERMANENT),
    ]:
        wrapped = S3UploadFailedError("Failed to upload: %s" % inner)
        wrapped.__context__ = inner  # as boto3 raises it, inside `except ClientError`
        assert store._classify(wrapped) == kind
