"""A fake Hugging Face Hub on 127.0.0.1 for the @huggingface_hub tests (no traffic leaves the host).

It implements exactly what the installed ``huggingface_hub``'s ``snapshot_download`` and
``HfApi.repo_info`` ask for:

- ``GET /api/{type}s/{repo}`` and ``/api/{type}s/{repo}/revision/{rev}``: repo info (``sha``,
  ``siblings``; with ``?blobs=true`` each sibling's ``size``, ``blobId`` and ``lfs``);
- ``GET /api/{type}s/{repo}/tree/{rev}``: the recursive file list (``oid``, ``size``, ``lfs``);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` (datasets under ``/datasets/``): the file, with
  ``X-Repo-Commit``, ``ETag`` (``X-Linked-Etag`` / ``X-Linked-Size`` for the LFS file) and
  ``Content-Length``;
- 404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound`` otherwise.

Every request is counted per (method, path), and the bytes of file bodies sent are summed, so a
test can assert how much a run moved from the Hub. ``acme/tiny-bert`` has two revisions: branch
``main`` (commit A) and tag ``v1`` (commit B, different weights).  ``acme/private-bert`` answers
only requests carrying ``Authorization: Bearer <PRIVATE_TOKEN>`` (else 401, as the Hub does for a
private repo).  ``corrupt`` (a set of file paths) serves those files with one byte flipped and
the right hash headers, as a broken proxy or disk would.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import unquote, urlsplit

REPO = "acme/tiny-bert"
COMMIT_A = "a" * 8 + hashlib.sha1(b"commit A").hexdigest()[8:]
COMMIT_B = "b" * 8 + hashlib.sha1(b"commit B").hexdigest()[8:]


def _weights(seed: bytes, size: int = 6 * 1024) -> bytes:
    out = b""
    block = seed
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return out[:size]


def _files(weights_seed: bytes, vocab: str) -> dict[str, bytes]:
    return {
        "config.json": json.dumps({"model_type": "bert", "hidden_size": 8}).encode(),
        "tokenizer.json": json.dumps({"vocab": vocab}).encode(),
        "model.safetensors": _weights(weights_seed),
        "onnx/model.onnx": b"onnx graph for " + weights_seed,
    }


LFS_FILES = {"model.safetensors"}

# repo -> commit -> files; repo -> revision name -> commit
COMMITS: dict[str, dict[str, dict[str, bytes]]] = {
    REPO: {COMMIT_A: _files(b"weights A", "a b c"), COMMIT_B: _files(b"weights B", "a b c d")},
}
REFS: dict[str, dict[str, str]] = {REPO: {"main": COMMIT_A, "v1": COMMIT_B}}

PRIVATE_REPO = "acme/private-bert"
PRIVATE_TOKEN = "hf_fake_private_token"
COMMIT_P = "c" * 8 + hashlib.sha1(b"commit P").hexdigest()[8:]
COMMITS[PRIVATE_REPO] = {COMMIT_P: _files(b"weights P", "p q")}
REFS[PRIVATE_REPO] = {"main": COMMIT_P}


def git_oid(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub reports as ``oid`` / ``ETag`` for small files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """The running server: ``url``, request ``counts`` and ``file_bytes`` sent, ``down`` switch."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.file_bytes = 0
        self.down = False  # True: every request gets a 503 (the Hub unreachable)
        self.corrupt: set[str] = set()  # file paths served with their first byte flipped
        self.unauthorized = 0  # requests for the private repo refused (no or a wrong token)
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.file_bytes = 0

    def resolves(self, method: str = "GET") -> int:
        """How many file requests (``/resolve/``) with ``method`` were served."""
        return sum(n for (m, p), n in self.counts.items() if m == method and "/resolve/" in p)

    # -- request handling ---------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlsplit(req.path).path)
        with self._lock:
            self.counts[("HEAD" if head else "GET", path)] += 1
        if self.down:
            return self._send(req, 503, b'{"error": "down"}', head, {})
        if PRIVATE_REPO in path and req.headers.get("Authorization") != "Bearer " + PRIVATE_TOKEN:
            with self._lock:
                self.unauthorized += 1
            return self._send(
                req,
                401,
                b'{"error": "Invalid credentials"}',
                head,
                {"X-Error-Code": "RepoNotFound"},
            )
        if path.startswith("/api/"):
            return self._api(req, path[len("/api/") :], head)
        repo_path = path[len("/datasets/") :] if path.startswith("/datasets/") else path.lstrip("/")
        return self._resolve(req, repo_path, head)

    def _lookup(self, repo: str, rev: str) -> tuple[Optional[str], Optional[str]]:
        """(commit, error code) for ``rev`` of ``repo``."""
        if repo not in COMMITS:
            return None, "RepoNotFound"
        commit = REFS[repo].get(rev, rev if rev in COMMITS[repo] else None)
        return (commit, None) if commit else (None, "RevisionNotFound")

    def _api(self, req: BaseHTTPRequestHandler, rest: str, head: bool) -> None:
        kind, _, rest = rest.partition("/")  # models / datasets
        parts = rest.split("/")
        repo = "/".join(parts[:2])
        tail = parts[2:]
        rev = "main"
        if tail[:1] in (["revision"], ["tree"]) and len(tail) >= 2:
            rev = tail[1]
        commit, error = self._lookup(repo, rev)
        if kind not in ("models", "datasets") or error:
            return self._error(req, error or "RepoNotFound", head)
        files = COMMITS[repo][commit]
        if tail[:1] == ["tree"]:
            body = [self._tree_entry(p, d) for p, d in sorted(files.items())]
        else:
            body = {
                "id": repo,
                "sha": commit,
                "private": False,
                "siblings": [
                    self._sibling(p, d, "blobs=true" in req.path.lower())
                    for p, d in sorted(files.items())
                ],
            }
        self._send(req, 200, json.dumps(body).encode(), head, {"Content-Type": "application/json"})

    @staticmethod
    def _tree_entry(path: str, data: bytes) -> dict:
        entry = {"type": "file", "path": path, "size": len(data), "oid": git_oid(data)}
        if path in LFS_FILES:
            entry["lfs"] = {
                "oid": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "pointerSize": 134,
            }
        return entry

    @staticmethod
    def _sibling(path: str, data: bytes, blobs: bool) -> dict:
        """A ``siblings`` entry of repo info; with ``?blobs=true`` (files_metadata) its hashes."""
        if not blobs:
            return {"rfilename": path}
        entry = {"rfilename": path, "size": len(data), "blobId": git_oid(data)}
        if path in LFS_FILES:
            entry["lfs"] = {
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "pointerSize": 134,
            }
        return entry

    def _resolve(self, req: BaseHTTPRequestHandler, repo_path: str, head: bool) -> None:
        parts = repo_path.split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(req, "RepoNotFound", head)
        repo, rev, file = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        commit, error = self._lookup(repo, rev)
        if error:
            return self._error(req, error, head)
        data = COMMITS[repo][commit].get(file)
        if data is None:
            return self._error(req, "EntryNotFound", head)
        headers = {"X-Repo-Commit": commit, "Content-Type": "application/octet-stream"}
        if file in LFS_FILES:
            headers["X-Linked-Etag"] = '"%s"' % hashlib.sha256(data).hexdigest()
            headers["X-Linked-Size"] = str(len(data))
            headers["ETag"] = '"%s"' % git_oid(data)
        else:
            headers["ETag"] = '"%s"' % git_oid(data)
        if not head:
            with self._lock:
                self.file_bytes += len(data)
        if file in self.corrupt:  # same size and hash headers, other bytes
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        self._send(req, 200, data, head, headers)

    def _error(self, req: BaseHTTPRequestHandler, code: str, head: bool) -> None:
        self._send(req, 404, json.dumps({"error": code}).encode(), head, {"X-Error-Code": code})

    @staticmethod
    def _send(
        req: BaseHTTPRequestHandler, status: int, body: bytes, head: bool, headers: dict
    ) -> None:
        req.send_response(status)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if not head:
            req.wfile.write(body)


def hub_env(hub: FakeHub, hf_home: str) -> dict[str, str]:
    """The environment a process needs to talk to ``hub`` only (the client reads it at import)."""
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": hf_home,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DOWNLOAD_TIMEOUT": "5",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def running_hub() -> Iterator[FakeHub]:
    """Generator body for a pytest fixture: a started hub, stopped afterwards."""
    hub = FakeHub().start()
    try:
        yield hub
    finally:
        hub.stop()
