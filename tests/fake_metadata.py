"""A fake cloud instance-metadata service on 127.0.0.1, speaking AWS, GCE or Azure's format.

Used by the preemption watcher tests (``tests/core/test_preemption.py``) and the flow test
(``tests/integration/test_preemption.py``).  Like the real services it refuses requests without
the cloud's headers (AWS IMDSv2: a token from ``PUT /latest/api/token``; GCE:
``Metadata-Flavor: Google``; Azure: ``Metadata: true`` and an ``api-version``).  Its state is
flipped by the test: :attr:`notice` (announce a preemption), :attr:`failures` (answer the next N
requests with 503), :attr:`malformed` (a body the cloud never sends), :attr:`notice_file` (a
notice while that file exists, removed once announced: a one-shot notice for a flow).

Run as a script (``python tests/fake_metadata.py <cloud> <notice_file>``) it serves until
killed and prints its URL on the first line.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import parse_qs, urlsplit

AZURE_VM = "vm-under-test"


class FakeMetadata:
    """The fake service; ``start()`` serves in a daemon thread, ``url`` is its base URL."""

    def __init__(self, cloud: str, notice_file: Optional[str] = None):
        assert cloud in ("aws", "gcp", "azure"), cloud
        self.cloud = cloud
        self.notice = False
        self.notice_file = notice_file
        self.failures = 0
        self.malformed: Optional[bytes] = None
        self.azure_resources = [AZURE_VM]
        self.polls = 0  # requests of the notice endpoint that were answered
        self.refused = 0  # requests refused for a missing or wrong header
        self.tokens: set[str] = set()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self):  # noqa: N802
                fake._answer(self, "PUT")

            def do_GET(self):  # noqa: N802
                fake._answer(self, "GET")

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self._server.server_address[1]
        self._thread: Optional[threading.Thread] = None

    def start(self) -> FakeMetadata:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeMetadata:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ protocol
    def _announcing(self) -> bool:
        if self.notice:
            return True
        if self.notice_file and os.path.exists(self.notice_file):
            os.remove(self.notice_file)  # one shot: the next attempt sees no notice
            return True
        return False

    def _answer(self, req: BaseHTTPRequestHandler, method: str) -> None:
        with self._lock:
            status, body = getattr(self, "_" + self.cloud)(req, method)
        req.send_response(status)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def _failing(self) -> bool:
        if self.failures > 0:
            self.failures -= 1
            return True
        return False

    def _refuse(self, status: int, body: bytes) -> tuple[int, bytes]:
        self.refused += 1
        return status, body

    def _aws(self, req, method):
        path = urlsplit(req.path).path
        if path == "/latest/api/token":
            if method != "PUT":
                return 405, b""
            ttl = req.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return self._refuse(400, b"Missing or Invalid Parameters")
            token = uuid.uuid4().hex
            self.tokens.add(token)
            return 200, token.encode()
        if path == "/latest/meta-data/spot/instance-action" and method == "GET":
            if req.headers.get("X-aws-ec2-metadata-token") not in self.tokens:
                return self._refuse(401, b"Unauthorized")
            if self._failing():
                return 503, b"Service Unavailable"
            self.polls += 1
            if self.malformed is not None:
                return 200, self.malformed
            if self._announcing():
                return 200, b'{"action": "terminate", "time": "2026-12-06T08:30:00Z"}'
            return 404, b"Not Found"
        return 404, b"Not Found"

    def _gcp(self, req, method):
        if urlsplit(req.path).path != "/computeMetadata/v1/instance/preempted":
            return 404, b"Not Found"
        if req.headers.get("Metadata-Flavor") != "Google" or "X-Forwarded-For" in req.headers:
            return self._refuse(403, b"Missing Metadata-Flavor:Google header.")
        if self._failing():
            return 503, b"Service Unavailable"
        self.polls += 1
        if self.malformed is not None:
            return 200, self.malformed
        return 200, b"TRUE" if self._announcing() else b"FALSE"

    def _azure(self, req, method):
        parts = urlsplit(req.path)
        if req.headers.get("Metadata") != "true":
            return self._refuse(
                400, b'{"error": "Bad request. Required metadata header not specified"}'
            )
        if "api-version" not in parse_qs(parts.query):
            return self._refuse(400, b'{"error": "Bad request. api-version was not specified"}')
        if parts.path == "/metadata/instance/compute/name":
            return 200, AZURE_VM.encode()
        if parts.path != "/metadata/scheduledevents":
            return 404, b"Not Found"
        if self._failing():
            return 503, b"Service Unavailable"
        self.polls += 1
        if self.malformed is not None:
            return 200, self.malformed
        events = []
        if self._announcing():
            events.append(
                {
                    "EventId": "602d9444-d2cd-49c7-8624-8643e7171297",
                    "EventType": "Preempt",
                    "ResourceType": "VirtualMachine",
                    "Resources": list(self.azure_resources),
                    "EventStatus": "Scheduled",
                    "NotBefore": "Sun, 06 Dec 2026 08:30:30 GMT",
                    "Description": "",
                    "EventSource": "Platform",
                    "DurationInSeconds": -1,
                }
            )
        return 200, json.dumps({"DocumentIncarnation": 1, "Events": events}).encode()


if __name__ == "__main__":
    server = FakeMetadata(sys.argv[1], notice_file=sys.argv[2]).start()
    print(server.url, flush=True)
    threading.Event().wait()
