"""Cloud storage emulators on 127.0.0.1 for the tests: Azurite (Azure Blob) and a GCS emulator.

Azurite comes from npm, pinned by ``package.json``/``package-lock.json`` beside this file and
installed by ``make test`` into ``.venv/emulators`` (``npm ci``).  The GCS emulator is the
``gcp-storage-emulator`` package from PyPI (the ``test`` extra), run in a child process so the
tests' own threads do not share its GIL and so stopping it is a real stopped server.  Both listen
on 127.0.0.1 only and keep data in memory; Azurite's telemetry is off: no traffic leaves the host.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


#: How long an emulator may take to listen.  Azurite (node) starts in ~1 s on an idle machine,
#: but took over 30 s once with both cores busy (several xdist workers and other processes);
#: a start that still misses this is tried once more (:func:`_started`).
START_LIMIT = 90.0
#: Starts on a fresh port when the one :func:`free_port` gave was taken before the emulator
#: bound it (another xdist worker or process picks ports the same way).
PORT_TRIES = 3
#: Without ``/proc`` (no way to see who owns a listener): how long the emulator must stay alive
#: after the first successful connect.
SETTLE = 0.5


class _Retryable(RuntimeError):
    pass


class _NotListening(_Retryable):
    pass


class _PortTaken(_Retryable):
    pass


def _listener_inodes(port: int) -> Optional[set]:
    """Socket inodes listening on TCP ``port`` in this network namespace; None without /proc."""
    inodes: set = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            cols = row.split()
            # local_address is HEX_IP:HEX_PORT; state 0A is LISTEN; column 9 is the inode.
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes if readable else None


def _family(pid: int) -> list:
    """``pid`` and its descendants (an emulator may listen from a child process)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            tasks = os.listdir("/proc/%d/task" % p)
        except OSError:
            continue
        for tid in tasks:
            try:
                with open("/proc/%d/task/%s/children" % (p, tid)) as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return found


def _owns_listener(pid: int, port: int) -> Optional[bool]:
    """Whether the listener on ``port`` is a socket of ``pid`` (or a descendant): a connect
    alone cannot tell our emulator from a foreign process that took the port first (ours then
    fails to bind, and may even stay alive: gcp-storage-emulator and Azurite both do).  None
    when the system cannot say (no /proc)."""
    inodes = _listener_inodes(port)
    if inodes is None:
        return None
    wanted = {"socket:[%s]" % i for i in inodes}
    for p in _family(pid):
        try:
            fds = os.listdir("/proc/%d/fd" % p)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink("/proc/%d/fd/%s" % (p, fd)) in wanted:
                    return True
            except OSError:
                pass
    return False


def _port_in_use(log: Path) -> bool:
    text = _tail(log).lower()
    return "eaddrinuse" in text or "address already in use" in text


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _wait_listening(port: int, proc: subprocess.Popen, name: str, log: Path) -> None:
    """Return once ``proc`` itself accepts connections on ``port``; raise :class:`_PortTaken`
    (another listener has the port), :class:`_NotListening` (too slow, both retryable) or
    RuntimeError (the emulator failed).  A failed start leaves no process behind."""
    deadline = time.monotonic() + START_LIMIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            message = "%s exited (%s) at start: %s" % (name, proc.returncode, _tail(log))
            raise (_PortTaken if _port_in_use(log) else RuntimeError)(message)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except OSError:
            time.sleep(0.05)
            continue
        owned = _owns_listener(proc.pid, port)
        if owned is None:
            # No /proc: a foreign listener would make ours exit, usually at once.
            time.sleep(SETTLE)
            owned = proc.poll() is None
        if owned:
            return
        _stop(proc)
        raise _PortTaken(
            "127.0.0.1:%d is another process's listener, not %s's: %s" % (port, name, _tail(log))
        )
    _stop(proc)
    raise _NotListening(
        "%s did not listen on 127.0.0.1:%d within %g s: %s" % (name, port, START_LIMIT, _tail(log))
    )


def _started(start, port: Optional[int]):
    """``start(port)`` on a new port (from :func:`free_port`) while the port was taken before
    the emulator bound it (up to :data:`PORT_TRIES` times), and tried once more when the
    emulator did not listen in time: a loaded machine must not fail a test at setup.  A port
    the caller asked for is not replaced."""
    taken = slow = 0
    while True:
        try:
            return start(port or free_port())
        except _PortTaken:
            taken += 1
            if port or taken == PORT_TRIES:
                raise
        except _NotListening:
            slow += 1
            if slow == 2:
                raise


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
    return "DefaultEndpointsProtocol=%s;AccountName=%s;AccountKey=%s;BlobEndpoint=%s;" % (
        endpoint.split(":", 1)[0],
        AZURITE_ACCOUNT,
        AZURITE_KEY,
        endpoint,
    )


def self_signed_certificate(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key (PEM files in ``workdir``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "cert.pem", workdir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def start_azurite(workdir: Path, port: Optional[int] = None, oauth: bool = False) -> Emulator:
    """Azurite's blob service on 127.0.0.1, in memory, account ``devstoreaccount1``.

    ``oauth``: HTTPS with a self-signed certificate and bearer tokens accepted (Azure's SDK
    sends tokens over HTTPS only), as Metaflow's ``azure`` datastore needs; ``env`` then holds
    the variables that make Python's HTTP clients trust the certificate.
    """
    return _started(lambda p: _start_azurite(workdir, p, oauth), port)


def _start_azurite(workdir: Path, port: int, oauth: bool) -> Emulator:
    workdir.mkdir(parents=True, exist_ok=True)
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
    env: dict = {}
    if oauth:
        cert, key = self_signed_certificate(workdir)
        cmd += ["--cert", str(cert), "--key", str(key), "--oauth", "basic"]
        env = {"REQUESTS_CA_BUNDLE": str(cert), "SSL_CERT_FILE": str(cert)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(workdir))
    _wait_listening(port, proc, "Azurite", log)
    scheme = "https" if oauth else "http"
    endpoint = "%s://127.0.0.1:%d/%s" % (scheme, port, AZURITE_ACCOUNT)
    env["AZURE_STORAGE_CONNECTION_STRING"] = azurite_connection_string(endpoint)
    return Emulator("azurite", proc, port, endpoint, env)


def start_gcs(workdir: Path, port: Optional[int] = None) -> Emulator:
    """gcp-storage-emulator's JSON API on 127.0.0.1, in memory."""
    return _started(lambda p: _start_gcs(workdir, p), port)


def _start_gcs(workdir: Path, port: int) -> Emulator:
    workdir.mkdir(parents=True, exist_ok=True)
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

    verify = emulator.env.get("REQUESTS_CA_BUNDLE", True)
    client = BlobServiceClient.from_connection_string(
        emulator.env["AZURE_STORAGE_CONNECTION_STRING"], connection_verify=verify
    )
    client.create_container(name)
    return name


def new_gcs_bucket(emulator: Emulator, name: str) -> str:
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


class _MetadataHandler(BaseHTTPRequestHandler):
    """Google's metadata server, the part ``google.auth.default()`` asks on GCE: a project and a
    bearer token (which the GCS emulator accepts and ignores)."""

    ROUTES = {
        "/": "",
        "/computeMetadata/v1/project/project-id": "mfckpt-test",
        "/computeMetadata/v1/instance/service-accounts/default/email": "tester@mfckpt-test",
        "/computeMetadata/v1/universe/universe-domain": "googleapis.com",
        "/computeMetadata/v1/instance/service-accounts/default/token": json.dumps(
            {"access_token": "emulator-token", "expires_in": 3600, "token_type": "Bearer"}
        ),
        "/computeMetadata/v1/instance/service-accounts/default/": json.dumps(
            {
                "aliases": ["default"],
                "email": "tester@mfckpt-test",
                "scopes": ["https://www.googleapis.com/auth/devstorage.full_control"],
            }
        ),
    }

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = re.sub(r"/service-accounts/[^/]+/", "/service-accounts/default/", self.path)
        body = self.ROUTES.get(path.split("?", 1)[0])
        data = (body or "").encode()
        self.send_response(404 if body is None else 200)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", "application/json" if data[:1] == b"{" else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@dataclass
class MetadataServer:
    """A stand-in GCE metadata server on 127.0.0.1; ``env`` points google-auth at it."""

    server: ThreadingHTTPServer
    env: dict

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_gce_metadata() -> MetadataServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MetadataHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = "127.0.0.1:%d" % server.server_address[1]
    return MetadataServer(server, {"GCE_METADATA_HOST": host, "GCE_METADATA_IP": host})


def _unsigned_jwt(claims: dict) -> str:
    def part(value: dict) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return "%s.%s.%s" % (part({"alg": "RS256", "typ": "JWT"}), part(claims), "c2lnbmF0dXJl")


class _IdentityHandler(BaseHTTPRequestHandler):
    """Azure's managed identity endpoint (App Service style, ``IDENTITY_ENDPOINT``): a token for
    the storage audience, which Azurite checks for issuer, audience and lifetime only."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        now = int(time.time())
        claims = {
            "aud": "https://storage.azure.com",
            "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000000/",
            "tid": "00000000-0000-0000-0000-000000000000",
            "oid": "11111111-1111-1111-1111-111111111111",
            "iat": now - 60,
            "nbf": now - 60,
            "exp": now + 3600,
        }
        body = json.dumps(
            {
                "access_token": _unsigned_jwt(claims),
                "expires_on": str(now + 3600),
                "resource": "https://storage.azure.com",
                "token_type": "Bearer",
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def start_azure_identity() -> MetadataServer:
    """A stand-in managed identity endpoint on 127.0.0.1; ``env`` points
    ``DefaultAzureCredential`` (Metaflow's and adlfs's) at it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _IdentityHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "http://127.0.0.1:%d/msi/token" % server.server_address[1]
    return MetadataServer(server, {"IDENTITY_ENDPOINT": url, "IDENTITY_HEADER": "emulator"})
