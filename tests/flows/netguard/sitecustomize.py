"""Put on PYTHONPATH of a process whose network use a test checks (deploy commands, pod tasks).

Python imports ``sitecustomize`` at startup: from then on, a connection or name lookup for any
host but 127.0.0.1/localhost is refused and appended to the file ``$NETGUARD_LOG``, so that a
test sees it even where the caller swallows the error (Metaflow's metadata probes do).
"""

import os
import socket

_ALLOWED = {"127.0.0.1", "localhost", "::1", None}
_LOG = os.environ.get("NETGUARD_LOG")


def _refuse(what):
    if _LOG:
        with open(_LOG, "a") as f:
            f.write("%s\n" % (what,))
    raise OSError("netguard: %s refused (this test allows 127.0.0.1 only)" % (what,))


_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex
_getaddrinfo = socket.getaddrinfo


def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _ALLOWED:
        _refuse("connect %s:%s" % address[:2])


def connect(self, address):
    _check(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name not in _ALLOWED:
        _refuse("lookup %s" % name)
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
socket.getaddrinfo = getaddrinfo
