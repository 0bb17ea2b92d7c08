"""Opt-in preemption watchers: poll a cloud's preemption-notice endpoint, interrupt the task.

``@checkpoint(preemption="aws"|"gcp"|"azure")`` starts one :class:`PreemptionWatcher` in a
daemon thread after the signal handlers are installed.  It polls the cloud's instance metadata
service every few seconds; on a notice it logs which cloud announced what, then delivers
SIGTERM to its own process, so the task is interrupted exactly as by a real SIGTERM (the
handler runs in the main thread: ``on_interrupt`` callbacks, the ``save_on_interrupt`` save,
flush, ``CheckpointInterrupted`` and the ``@retry``).  It fires at most once.

Nothing is contacted unless the user opts in.  Errors (not on that cloud, a 5xx, a malformed
answer) are never a notice: the first one is logged and the watcher keeps polling quietly, so a
metadata service that recovers still delivers its notice.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import CheckpointConfigError

#: The link-local instance metadata address of AWS, GCE and Azure alike.
DEFAULT_ENDPOINT = "http://169.254.169.254"
#: Seconds one metadata request may take (the service answers in milliseconds when present).
REQUEST_TIMEOUT = 2.0
#: ``@checkpoint(preemption=...)`` values and the cloud each names in the log.
CLOUDS = {"aws": "AWS EC2 spot", "gcp": "GCE", "azure": "Azure"}
#: Seconds the task's checkpointing may take after a notice: the cloud's lead time (AWS spot 2
#: min, GCE 30 s, Azure Preempt events at least 30 s), less a poll interval and a margin for
#: Metaflow's own end of the task.  Given to ``Interrupts.allow`` when it is more than
#: ``METAFLOW_CHECKPOINT_INTERRUPT_SECONDS`` (whose 3 s default fits a local Ctrl+C).
LEAD_SECONDS = {"aws": 90.0, "gcp": 20.0, "azure": 20.0}
#: IMDSv2 session token lifetime asked for, seconds (AWS allows 1..21600).
AWS_TOKEN_TTL = 21600
#: Azure scheduled events that end this VM.
AZURE_EVENTS = ("Preempt", "Terminate")
AZURE_API = "2020-07-01"


def validate_preemption(value: object, step_name: str) -> Optional[str]:
    """The cloud of ``@checkpoint(preemption=...)``, lower-cased, or None (no watcher).

    Raises
    ------
    CheckpointConfigError
        Naming the step, the value and the accepted values.
    """
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in CLOUDS:
        return value.strip().lower()
    if isinstance(value, str) and value.strip().lower() in ("", "none"):
        return None  # `--with checkpoint:preemption=none` on the command line
    raise CheckpointConfigError(
        "Step '%s': @checkpoint(preemption=%r) is not a cloud: use one of %s, or None (the "
        "default: no watcher)." % (step_name, value, ", ".join(repr(c) for c in CLOUDS))
    )


class NoticeError(Exception):
    """The endpoint could not tell (unreachable, refused, 5xx, malformed): not a notice."""


@dataclass
class _Response:
    status: int
    body: bytes


class _Client:
    """HTTP to the metadata service: no proxies (IMDS must never go through one), short
    timeouts, statuses returned rather than raised."""

    def __init__(self, endpoint: str, timeout: float = REQUEST_TIMEOUT):
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method: str, path: str, headers: dict) -> _Response:
        req = urllib.request.Request(self.endpoint + path, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return _Response(resp.status, resp.read(1 << 20))
        except urllib.error.HTTPError as exc:
            return _Response(exc.code, exc.read(1 << 20) if exc.fp else b"")
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets
            raise NoticeError("%s unreachable: %s" % (self.endpoint, exc)) from None


def _unexpected(what: str, resp: _Response) -> NoticeError:
    return NoticeError("%s answered HTTP %d: %r" % (what, resp.status, resp.body[:200]))


def _json(what: str, body: bytes) -> object:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise NoticeError("%s answered malformed JSON: %r" % (what, body[:200])) from None


class AwsSpot:
    """EC2 spot interruption notice through IMDSv2 (a session token, then ``instance-action``:
    404 while there is none, 200 ``{"action": ..., "time": ...}`` once announced)."""

    TOKEN_PATH = "/latest/api/token"
    ACTION_PATH = "/latest/meta-data/spot/instance-action"

    def __init__(self, client: _Client):
        self._client = client
        self._token: Optional[str] = None

    def _get_token(self) -> str:
        resp = self._client.request(
            "PUT", self.TOKEN_PATH, {"X-aws-ec2-metadata-token-ttl-seconds": str(AWS_TOKEN_TTL)}
        )
        if resp.status != 200 or not resp.body.strip():
            raise _unexpected("IMDSv2 token", resp)
        return resp.body.decode("utf-8", "replace").strip()

    def check(self) -> Optional[str]:
        if self._token is None:
            self._token = self._get_token()
        resp = self._client.request(
            "GET", self.ACTION_PATH, {"X-aws-ec2-metadata-token": self._token}
        )
        if resp.status == 401:  # the token expired: a new one next time
            self._token = None
            raise _unexpected("spot/instance-action", resp)
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise _unexpected("spot/instance-action", resp)
        doc = _json("spot/instance-action", resp.body)
        action = doc.get("action") if isinstance(doc, dict) else None
        if action not in ("terminate", "stop", "hibernate"):
            raise NoticeError("spot/instance-action has no known action: %r" % resp.body[:200])
        return "action=%s at %s" % (action, doc.get("time", "?"))


class GcePreempted:
    """GCE ``instance/preempted``: ``FALSE`` until the VM is preempted, then ``TRUE``."""

    PATH = "/computeMetadata/v1/instance/preempted"

    def __init__(self, client: _Client):
        self._client = client

    def check(self) -> Optional[str]:
        resp = self._client.request("GET", self.PATH, {"Metadata-Flavor": "Google"})
        if resp.status != 200:
            raise _unexpected("instance/preempted", resp)
        text = resp.body.decode("utf-8", "replace").strip().upper()
        if text == "FALSE":
            return None
        if text == "TRUE":
            return "instance/preempted=TRUE"
        raise NoticeError("instance/preempted answered %r (expected TRUE or FALSE)" % resp.body)


class AzureScheduledEvents:
    """Azure Scheduled Events: a ``Preempt`` (or ``Terminate``) event whose ``Resources``
    include this VM (any VM when its name cannot be read from the instance metadata)."""

    EVENTS_PATH = "/metadata/scheduledevents?api-version=%s" % AZURE_API
    NAME_PATH = "/metadata/instance/compute/name?api-version=2021-02-01&format=text"

    def __init__(self, client: _Client):
        self._client = client
        self._vm: Optional[str] = None
        self._named = False  # the VM name was asked for (once)

    def _vm_name(self) -> Optional[str]:
        if not self._named:
            self._named = True
            try:
                resp = self._client.request("GET", self.NAME_PATH, {"Metadata": "true"})
                name = resp.body.decode("utf-8", "replace").strip()
                self._vm = name if resp.status == 200 and name else None
            except NoticeError:
                self._named = False  # unreachable: ask again with the next poll
                raise
        return self._vm

    def check(self) -> Optional[str]:
        vm = self._vm_name()
        resp = self._client.request("GET", self.EVENTS_PATH, {"Metadata": "true"})
        if resp.status != 200:
            raise _unexpected("scheduledevents", resp)
        doc = _json("scheduledevents", resp.body)
        events = doc.get("Events") if isinstance(doc, dict) else None
        if not isinstance(events, list):
            raise NoticeError("scheduledevents has no Events list: %r" % resp.body[:200])
        for event in events:
            if not isinstance(event, dict) or event.get("EventType") not in AZURE_EVENTS:
                continue
            resources = event.get("Resources") or []
            if vm is None or vm in resources:
                return "%s event %s not before %s" % (
                    event["EventType"],
                    event.get("EventId", "?"),
                    event.get("NotBefore") or "?",
                )
        return None


_PROBES = {"aws": AwsSpot, "gcp": GcePreempted, "azure": AzureScheduledEvents}


def _interrupt_own_process() -> None:
    # The handler installed by Interrupts runs in the main thread, as for a real SIGTERM.
    os.kill(os.getpid(), signal.SIGTERM)


class PreemptionWatcher:
    """A daemon thread polling one cloud's preemption notice; fires ``interrupt`` once.

    Parameters
    ----------
    cloud : str
        ``"aws"``, ``"gcp"`` or ``"azure"``.
    endpoint : str, optional
        Base URL of the metadata service (default :data:`DEFAULT_ENDPOINT`).
    poll_seconds : float
        Seconds between two polls.
    log : callable
        Where one-line status messages go.
    interrupt : callable, optional
        What a notice does (default: SIGTERM to this process).
    allow : callable, optional
        Called with :data:`LEAD_SECONDS` of the cloud just before ``interrupt``: the time the
        interrupted task may take (``Interrupts.allow``).
    timeout : float
        Seconds one request may take.
    """

    def __init__(
        self,
        cloud: str,
        endpoint: Optional[str] = None,
        poll_seconds: float = 5.0,
        log: Callable[[str], None] = print,
        interrupt: Optional[Callable[[], None]] = None,
        timeout: float = REQUEST_TIMEOUT,
        allow: Optional[Callable[[float], None]] = None,
    ):
        if cloud not in _PROBES:
            raise ValueError("unknown cloud %r (one of %s)" % (cloud, ", ".join(_PROBES)))
        self.cloud = cloud
        self.endpoint = endpoint or DEFAULT_ENDPOINT
        self._probe = _PROBES[cloud](_Client(self.endpoint, timeout))
        self._poll = poll_seconds
        self._log = log
        self._interrupt = interrupt or _interrupt_own_process
        self._allow = allow
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._errors_logged = False
        self.fired = False

    def start(self) -> PreemptionWatcher:
        """Start polling in a daemon thread (returns self)."""
        self._thread = threading.Thread(
            target=self._run, name="checkpoint-preemption-%s" % self.cloud, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and join the thread (at most one request's timeout)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def poll_once(self) -> Optional[str]:
        """One poll: the notice's description, or None (no notice, or the endpoint could not
        tell: logged the first time)."""
        try:
            return self._probe.check()
        except NoticeError as exc:
            if not self._errors_logged:
                self._errors_logged = True
                self._log(
                    "[@checkpoint] Preemption watcher (%s, %s): %s; polling on quietly."
                    % (CLOUDS[self.cloud], self.endpoint, exc)
                )
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            notice = self.poll_once()
            if notice is not None and not self._stop.is_set():
                self.fired = True
                self._log(
                    "[@checkpoint] Preemption notice from %s (%s): interrupting the task as "
                    "SIGTERM does." % (CLOUDS[self.cloud], notice)
                )
                if self._allow is not None:
                    self._allow(LEAD_SECONDS[self.cloud])
                self._interrupt()
                return
            self._stop.wait(self._poll)
