"""Cloud storage emulators on 127.0.0.1 for the tests: Azurite (Azure Blob) and a GCS emulator.

Azurite comes from npm, pinned by ``package.json``/``package-lock.json`` beside this file and
installed by ``make test`` into ``.venv/emulators`` (``npm ci``).  The GCS emulator is the
``gcp-storage-emulator`` package from PyPI (the ``test`` extra), run in a child process so the
tests' own threads do not share its GIL and so stopping it is a real stopped server.  Both listen
on 127.0.0.1 only and keep data in memory; Azurite's telemetry is off: no traffic leaves the host.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
#: Where ``make test`` installs the npm packages of package.json (``npm ci --prefix``).
NODE_PREFIX = REPO / ".venv" / "emulators"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's fixed, documented development key (not a secret: every Azurite install has it).
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, name: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited (%s) at start: %s" % (name, proc.returncode, _tail(log)))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(
        "%s did not listen on 127.0.0.1:%d within 30 s: %s" % (name, port, _tail(log))
    )


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


@dataclass
class Emulator:
    """A running emulator process: ``endpoint`` URL, ``env`` for clients, ``stop()``."""

    name: str
    proc: subprocess.Popen
    port: int
    endpoint: str
    env: dict = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def azurite_binary() -> Path:
    """The ``azurite-blob`` executable installed from package.json; a clear error without it."""
    binary = NODE_PREFIX / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        raise RuntimeError(
            "Azurite is not installed at %s: run `make test` (or `cp tests/emulators/package*.json "
            "%s/ && npm ci --prefix %s`)." % (binary, NODE_PREFIX, NODE_PREFIX)
        )
    return binary


def azurite_connection_string(endpoint: str) -> str:
    return "DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;BlobEndpoint=%s;" % (
        AZURITE_ACCOUNT,
        AZURITE_KEY,
        endpoint,
    )


def start_azurite(workdir: Path, port: Optional[int] = None) -> Emulator:
    """Azurite's blob service on 127.0.0.1, in memory, account ``devstoreaccount1``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = workdir / "azurite.log"
    cmd = [
        str(azurite_binary()),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--inMemoryPersistence",
        "--loose",
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--silent",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(workdir))
    _wait_listening(port, proc, "Azurite", log)
    endpoint = "http://127.0.0.1:%d/%s" % (port, AZURITE_ACCOUNT)
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(endpoint)}
    return Emulator("azurite", proc, port, endpoint, env)


def start_gcs(workdir: Path, port: Optional[int] = None) -> Emulator:
    """gcp-storage-emulator's JSON API on 127.0.0.1, in memory."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = workdir / "gcs.log"
    cmd = [
        sys.executable,
        "-m",
        "gcp_storage_emulator",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--in-memory",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(workdir))
    _wait_listening(port, proc, "gcp-storage-emulator", log)
    endpoint = "http://127.0.0.1:%d" % port
    return Emulator("gcs", proc, port, endpoint, {"STORAGE_EMULATOR_HOST": endpoint})


def new_azure_container(emulator: Emulator, name: str) -> str:
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(
        emulator.env["AZURE_STORAGE_CONNECTION_STRING"]
    )
    client.create_container(name)
    return name


def new_gcs_bucket(emulator: Emulator, name: str) -> str:
    import json
    import urllib.request

    request = urllib.request.Request(
        emulator.endpoint + "/storage/v1/b?project=test",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
    return name
