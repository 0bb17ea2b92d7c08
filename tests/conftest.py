"""Shared fixtures: a real local S3 server (moto) and an isolated Metaflow environment for flows.

Metaflow's own S3 client runs in subprocesses, so an in-process mock cannot serve it: the S3
fixtures start moto's threaded HTTP server on 127.0.0.1 and point everything at it through
``METAFLOW_S3_ENDPOINT_URL`` and dummy credentials.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import uuid
from pathlib import Path

# Metaflow's vendored typing_extensions replaces typing's parameter collection with one that
# knows only its own NoDefault sentinel.  Imported after the real typing_extensions (which
# hypothesis, httpx/anyio and huggingface_hub import), it breaks `import torch` in this process
# (Runner loads flow files here: "Type parameter ~_R without a default follows ...").  Imported
# first, the real module's patch wins.  Same order in a user's process: see docs/faq.md.
import metaflow._vendor.typing_extensions  # noqa: F401
import pytest

# Loop-mounted XFS and btrfs for the reflink-clone tests (mounted only when a test asks).
from reflink_fs import reflink_dir, reflink_mounts  # noqa: F401, E402

REPO = Path(__file__).resolve().parents[1]
FLOWS = Path(__file__).resolve().parent / "flows"

# Dummy credentials for the moto server; set before boto3 is imported anywhere.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


#: Signals whose handlers a test may change, and the handlers the session started with.
_SESSION_HANDLERS = {
    getattr(signal, name): signal.getsignal(getattr(signal, name))
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
}


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """Give each test's successor the session's signal handlers back.

    Metaflow's ``Runner`` replaces the process's SIGINT handler for good (its
    ``SubprocessManager`` kills its children and swallows the Ctrl-C), also from module-scoped
    fixtures that run a flow, and a restore cut short by a raising handler leaves
    ``deferred_signals``' stand-in installed by design: a test run after either in the same
    xdist worker no longer saw ``KeyboardInterrupt`` or its own handler (with ``--dist
    worksteal``, five of ``test_load_signals.py`` failed).  SIGALRM is pytest-timeout's while a
    test runs: it is put back to what it was when this test started.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    alarm = signal.getsignal(signal.SIGALRM)
    yield
    for s, handler in [*_SESSION_HANDLERS.items(), (signal.SIGALRM, alarm)]:
        if handler is not None and signal.getsignal(s) is not handler:
            signal.signal(s, handler)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 for this test session (one per xdist worker).

    Yields a dict: ``endpoint`` (URL), ``env`` (variables a client or flow needs) and
    ``new_bucket()`` creating a fresh bucket and returning its name.
    """
    from moto.server import ThreadedMotoServer

    os.environ.update(S3_ENV)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = "http://127.0.0.1:%d" % port
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def new_bucket() -> str:
        name = "mfckpt-%s" % uuid.uuid4().hex[:12]
        client.create_bucket(Bucket=name)
        return name

    env = dict(S3_ENV, METAFLOW_S3_ENDPOINT_URL=endpoint)
    try:
        yield {"endpoint": endpoint, "env": env, "new_bucket": new_bucket, "client": client}
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point this process's Metaflow S3 settings at the moto server (in-process clients)."""
    for k, v in s3_server["env"].items():
        monkeypatch.setenv(k, v)
    from metaflow import metaflow_config

    params = dict(metaflow_config.DATATOOLS_CLIENT_PARAMS)
    params["endpoint_url"] = s3_server["endpoint"]
    monkeypatch.setattr(metaflow_config, "DATATOOLS_CLIENT_PARAMS", params)
    monkeypatch.setattr(metaflow_config, "S3_ENDPOINT_URL", s3_server["endpoint"])
    # Metaflow's S3 helper keeps its own copy of the client params from its first import.
    from metaflow.plugins.datatools.s3 import s3util

    monkeypatch.setattr(s3util, "DATATOOLS_CLIENT_PARAMS", params, raising=False)
    return s3_server


def flow_environment(tmp: Path, **extra: str) -> dict:
    """Environment for running a flow in isolation under ``tmp`` (own home, datastore, user)."""
    venv_bin = str(Path(sys.executable).parent)
    env = {
        "USER": "tester",
        "METAFLOW_USER": "tester",
        "METAFLOW_HOME": str(tmp / "home"),
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp),
        "METAFLOW_DEFAULT_METADATA": "local",
        "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_CLIENT_CACHE_PATH": str(tmp / "cache"),
        # Local @parallel workers run `python` from PATH.
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
    }
    env.update(extra)
    return env


@pytest.fixture
def flow_env(tmp_path):
    """(env, cwd) for running flows with ``metaflow.Runner`` or a subprocess in ``tmp_path``."""
    (tmp_path / "home").mkdir()
    return flow_environment(tmp_path), tmp_path


# ------------------------------------------------------------------ Azure and GCS emulators
@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """Azurite's blob service on 127.0.0.1 for this session (one per xdist worker).

    Yields a dict: ``endpoint`` (``http://127.0.0.1:<port>/devstoreaccount1``), ``env`` (the
    account key adlfs reads), ``new_container()`` creating a fresh container, ``emulator``.
    """
    from emulators import AZURITE_KEY, new_azure_container, start_azurite

    emulator = start_azurite(tmp_path_factory.mktemp("azurite"))

    def new_container() -> str:
        return new_azure_container(emulator, "mfckpt-%s" % uuid.uuid4().hex[:12])

    env = {"AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY}
    try:
        yield {
            "endpoint": emulator.endpoint,
            "env": env,
            "new_container": new_container,
            "emulator": emulator,
        }
    finally:
        emulator.stop()


@pytest.fixture
def azure_env(azurite, monkeypatch):
    """This process's Azure settings point at Azurite: Metaflow's blob endpoint and the account
    key (adlfs's ``AZURE_STORAGE_ACCOUNT_KEY``)."""
    from metaflow import metaflow_config

    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME"):
        monkeypatch.delenv(name, raising=False)
    for k, v in azurite["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(
        metaflow_config, "AZURE_STORAGE_BLOB_SERVICE_ENDPOINT", azurite["endpoint"], raising=False
    )
    return azurite


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """gcp-storage-emulator on 127.0.0.1 for this session (one per xdist worker).

    Yields a dict: ``endpoint``, ``env`` (``STORAGE_EMULATOR_HOST``), ``new_bucket()``,
    ``emulator``.
    """
    from emulators import new_gcs_bucket, start_gcs

    emulator = start_gcs(tmp_path_factory.mktemp("gcs"))

    def new_bucket() -> str:
        return new_gcs_bucket(emulator, "mfckpt-%s" % uuid.uuid4().hex[:12])

    try:
        yield {
            "endpoint": emulator.endpoint,
            "env": dict(emulator.env),
            "new_bucket": new_bucket,
            "emulator": emulator,
        }
    finally:
        emulator.stop()


@pytest.fixture
def gcs_env(gcs_emulator, monkeypatch):
    """This process's GCS clients (gcsfs, google-cloud-storage) talk to the emulator."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    for k, v in gcs_emulator["env"].items():
        monkeypatch.setenv(k, v)
    return gcs_emulator
