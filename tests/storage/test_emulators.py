"""The emulator start (tests/emulators) never hands a test someone else's listener: a port taken
between ``free_port()`` and the emulator's bind (another xdist worker picks ports the same way)
is retried on a new port, whether the emulator then exits or, as gcp-storage-emulator and
Azurite do, stays alive without listening."""

from __future__ import annotations

import socket
import subprocess
import sys

import emulators
import pytest
from emulators import new_gcs_bucket, start_gcs


@pytest.fixture
def taken_port():
    """A port another process's listener holds (it never answers)."""
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        yield foreign.getsockname()[1]


def test_a_port_taken_before_the_bind_is_retried_on_a_new_port(taken_port, tmp_path, monkeypatch):
    ports = iter([taken_port])
    real_free_port = emulators.free_port
    monkeypatch.setattr(emulators, "free_port", lambda: next(ports, None) or real_free_port())
    started = []

    class Recorded(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(emulators.subprocess, "Popen", Recorded)
    emulator = start_gcs(tmp_path)
    try:
        assert emulator.port != taken_port
        assert emulator.proc.poll() is None
        # The emulator answers: the foreign listener never would (this would time out).
        assert new_gcs_bucket(emulator, "ours") == "ours"
    finally:
        emulator.stop()
    # The first try (on the taken port, alive but not listening) was stopped, not leaked.
    assert len(started) == 2 and started[1] is emulator.proc
    assert started[0].poll() is not None


def test_an_asked_for_port_that_is_taken_fails_at_once(taken_port, tmp_path):
    """As a taken port (no wait for START_LIMIT), never as a start on the foreign listener."""
    with pytest.raises(emulators._PortTaken, match="another process's listener"):
        start_gcs(tmp_path, port=taken_port)


def test_an_emulator_exiting_with_eaddrinuse_is_a_retryable_start(taken_port, tmp_path):
    log = tmp_path / "bind.log"
    bind = "import socket, sys; socket.socket().bind(('127.0.0.1', int(sys.argv[1])))"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", bind, str(taken_port)], stdout=out, stderr=subprocess.STDOUT
        )
    proc.wait()  # exits before any connect: the exit path, not the foreign-listener path
    with pytest.raises(emulators._PortTaken, match="Address already in use"):
        emulators._wait_listening(taken_port, proc, "binder", log)
