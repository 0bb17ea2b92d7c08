"""A small hostile TCP proxy on 127.0.0.1, in front of an emulator or moto: it stalls, trickles
or cuts responses, to test that every network backend bounds and retries what a degraded link
does (a real server, a real SDK, a real socket; only the link misbehaves).

Modes (``Proxy(port_to, mode, ...)``):

* ``"pass"``: forward both ways;
* ``"stall_first"``: the first connection is accepted and never answered, later ones pass;
* ``"drip"``: responses are forwarded one byte every ``delay`` seconds, so no socket read
  ever waits long but a response never ends in useful time;
* ``"rate"``: responses are forwarded at about ``rate`` bytes per second each (a slow but
  moving link per connection);
* ``"link"``: all responses together are forwarded at about ``rate`` bytes per second: one
  slow link shared by every transfer in flight (each gets ``rate`` / their number);
* ``"cut"``: the first ``times`` responses longer than ``after`` bytes are cut there (the
  connection closed mid-body), later ones pass.

With ``up=True``, ``"drip"``, ``"rate"`` and ``"link"`` slow the requests (upload bodies)
instead of the responses.
"""

from __future__ import annotations

import socket
import threading
import time


class Proxy:
    """Forward 127.0.0.1:``port`` to 127.0.0.1:``port_to``, misbehaving as ``mode`` says."""

    def __init__(
        self,
        port_to: int,
        mode: str = "pass",
        *,
        delay: float = 0.2,
        after: int = 0,
        times: int = 1 << 30,
        rate: int = 256 << 10,
        up: bool = False,
    ):
        self.port_to, self.mode, self.delay, self.after = port_to, mode, delay, after
        self.times, self.rate, self.up = times, rate, up
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0  # connections accepted
        self.stalled = 0
        self.cuts = 0
        self.sent = 0  # response bytes forwarded, all connections together
        self.received = 0  # request bytes forwarded, all connections together
        self._link_free = 0.0  # "link" mode: when the shared link has sent what it was given
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._open.append(conn)
            self.accepted += 1
            if self.mode == "stall_first" and not self.stalled:
                self.stalled += 1  # read nothing, answer nothing
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.port_to))
            except OSError:
                conn.close()
                continue
            self._open.append(upstream)
            threading.Thread(target=self._pipe, args=(conn, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, conn, True), daemon=True).start()

    def _on_link(self, size: int) -> float:
        """Seconds to wait before ``size`` bytes leave the shared link (queued after the bytes
        every other connection put on it before)."""
        with self._lock:
            now = time.monotonic()
            self._link_free = max(now, self._link_free) + size / self.rate
            return self._link_free - now

    def _take_cut(self) -> bool:
        with self._lock:
            if self.cuts >= self.times:
                return False
            self.cuts += 1
            return True

    def _pipe(self, a: socket.socket, b: socket.socket, response: bool) -> None:
        slowed = response != self.up  # the direction drip, rate and link apply to
        drip = slowed and self.mode == "drip"
        cut = response and self.mode == "cut"
        slow = slowed and self.mode == "rate"
        shared = slowed and self.mode == "link"
        sent = 0
        try:
            while True:
                data = a.recv(1 if drip else self.rate // 16 if slow or shared else 65536)
                if not data:
                    break
                if drip:
                    time.sleep(self.delay)
                if slow:
                    time.sleep(len(data) / self.rate)
                if shared:
                    time.sleep(self._on_link(len(data)))
                if cut and sent + len(data) > self.after:
                    if self._take_cut():
                        b.sendall(data[: self.after - sent])
                        break
                    cut = False  # this connection passes from now on
                b.sendall(data)
                sent += len(data)
                with self._lock:
                    if response:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        for conn in self._open:
            # shutdown first: a bare close() leaves the connection open while another thread
            # is blocked in recv() on it, and a server still waiting for a dripped request
            # body would wait for ever (gcp-storage-emulator serves one request at a time).
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                conn.close()
            except OSError:
                pass
