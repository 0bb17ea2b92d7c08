"""Preemption watchers against a fake metadata service per cloud on 127.0.0.1.

The fake (``tests/fake_metadata.py``) speaks each cloud's format and refuses requests without
its headers, as the real services do.  Watchers run their real thread and HTTP client; the
session test delivers the real SIGTERM to this process.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
from fake_metadata import FakeMetadata
from metaflow import metaflow_config

from metaflow_extensions.checkpointing.plugins.checkpointing.common import settings
from metaflow_extensions.checkpointing.plugins.checkpointing.core.policies import Resolution
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    CheckpointInterrupted,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import TaskSettings
from metaflow_extensions.checkpointing.plugins.checkpointing.task.session import TaskSession
from metaflow_extensions.checkpointing.plugins.checkpointing.task.watchers import (
    DEFAULT_ENDPOINT,
    PreemptionWatcher,
    validate_preemption,
)

from .helpers import make_scope, options

CLOUDS = ["aws", "gcp", "azure"]
NAMES = {"aws": "AWS EC2 spot", "gcp": "GCE", "azure": "Azure"}
#: Bounds a wait for the watcher's thread (never reached when it works; not a timing assert).
PATIENCE = 30.0


def _wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not predicate():
        assert time.monotonic() < deadline, "gave up waiting for " + what
        time.sleep(0.01)


class Recorder:
    """The watcher's ``interrupt`` and ``log``, recorded."""

    def __init__(self):
        self.interrupts = 0
        self.fired = threading.Event()
        self.logs: list[str] = []

    def interrupt(self) -> None:
        self.interrupts += 1
        self.fired.set()


def _watcher(cloud: str, fake: FakeMetadata, rec: Recorder, **kwargs) -> PreemptionWatcher:
    return PreemptionWatcher(
        cloud,
        endpoint=fake.url,
        poll_seconds=0.01,
        log=rec.logs.append,
        interrupt=rec.interrupt,
        **kwargs,
    )


@pytest.mark.parametrize("cloud", CLOUDS)
def test_the_watcher_fires_once_on_a_notice_and_not_before(cloud):
    rec = Recorder()
    with FakeMetadata(cloud) as fake:
        watcher = _watcher(cloud, fake, rec).start()
        try:
            _wait_for(lambda: fake.polls >= 5, "polls without a notice")
            assert rec.interrupts == 0 and not watcher.fired  # no notice, no interrupt
            fake.notice = True
            assert rec.fired.wait(PATIENCE)
            polls = fake.polls
        finally:
            watcher.stop()
        assert rec.interrupts == 1  # once: its thread ended after firing
        assert fake.polls == polls  # and polls no more
        assert fake.refused == 0  # every request carried the cloud's headers
    [line] = [m for m in rec.logs if "Preemption notice" in m]
    assert line.startswith("[@checkpoint] Preemption notice from %s (" % NAMES[cloud])
    assert line.endswith("interrupting the task as SIGTERM does.")


@pytest.mark.parametrize(
    "cloud, body",
    [
        ("aws", b"not json"),
        ("aws", b'{"time": "2026-12-06T08:30:00Z"}'),
        ("aws", b'{"action": "reboot"}'),
        ("aws", b"[]"),
        ("gcp", b"MAYBE"),
        ("gcp", b""),
        ("azure", b"{"),
        ("azure", b'{"DocumentIncarnation": 1}'),
        ("azure", b'{"Events": "Preempt"}'),
        ("azure", b'{"Events": [{"EventType": "Reboot", "Resources": ["vm-under-test"]}]}'),
        ("azure", b'{"Events": ["Preempt"]}'),
    ],
)
def test_malformed_answers_are_never_a_notice(cloud, body):
    rec = Recorder()
    with FakeMetadata(cloud) as fake:
        fake.malformed = body
        watcher = _watcher(cloud, fake, rec)
        assert [watcher.poll_once() for _ in range(3)] == [None] * 3
        fake.malformed = None
        fake.notice = True  # the watcher still works afterwards
        assert watcher.poll_once() is not None
    assert rec.interrupts == 0
    # A reported error is logged once, not once per poll.
    assert len([m for m in rec.logs if "polling on quietly" in m]) <= 1


@pytest.mark.parametrize("cloud", CLOUDS)
def test_transient_5xx_errors_are_logged_once_and_polling_goes_on(cloud):
    rec = Recorder()
    with FakeMetadata(cloud) as fake:
        fake.failures = 4
        watcher = _watcher(cloud, fake, rec)
        assert [watcher.poll_once() for _ in range(4)] == [None] * 4
        fake.notice = True
        assert watcher.poll_once() is not None
    [line] = rec.logs
    assert "HTTP 503" in line and NAMES[cloud] in line and fake.url in line


@pytest.mark.parametrize("cloud", CLOUDS)
def test_the_running_watcher_fires_after_a_run_of_5xx_errors(cloud):
    rec = Recorder()
    with FakeMetadata(cloud) as fake:
        fake.failures = 5
        fake.notice = True
        watcher = _watcher(cloud, fake, rec).start()
        try:
            assert rec.fired.wait(PATIENCE)
        finally:
            watcher.stop()
        assert fake.failures == 0 and rec.interrupts == 1


def test_an_unreachable_endpoint_is_logged_once_and_never_a_notice():
    """Not on that cloud: the metadata address does not answer."""
    with FakeMetadata("aws") as fake:
        url = fake.url  # a port nothing listens on once the fake is closed
    rec = Recorder()
    watcher = PreemptionWatcher(
        "aws", endpoint=url, poll_seconds=0.01, log=rec.logs.append, interrupt=rec.interrupt
    )
    assert [watcher.poll_once() for _ in range(3)] == [None] * 3
    [line] = rec.logs
    assert "unreachable" in line and url in line


def test_aws_gets_a_new_token_when_the_old_one_is_refused():
    rec = Recorder()
    with FakeMetadata("aws") as fake:
        watcher = _watcher("aws", fake, rec)
        assert watcher.poll_once() is None
        fake.tokens.clear()  # the token expired
        assert watcher.poll_once() is None  # refused (401): a new token next time
        fake.notice = True
        assert watcher.poll_once() is not None


def test_azure_ignores_events_of_other_vms():
    rec = Recorder()
    with FakeMetadata("azure") as fake:
        fake.notice = True
        fake.azure_resources = ["another-vm"]
        watcher = _watcher("azure", fake, rec)
        assert watcher.poll_once() is None
        fake.azure_resources = ["another-vm", "vm-under-test"]
        assert "Preempt event" in (watcher.poll_once() or "")


@pytest.mark.parametrize(
    "cloud, path, headers",
    [
        ("aws", "/latest/meta-data/spot/instance-action", {}),
        ("aws", "/latest/meta-data/spot/instance-action", {"X-aws-ec2-metadata-token": "forged"}),
        ("gcp", "/computeMetadata/v1/instance/preempted", {}),
        ("gcp", "/computeMetadata/v1/instance/preempted", {"Metadata-Flavor": "google"}),
        ("azure", "/metadata/scheduledevents?api-version=2020-07-01", {}),
        ("azure", "/metadata/scheduledevents", {"Metadata": "true"}),
    ],
)
def test_the_fake_refuses_requests_the_real_service_refuses(cloud, path, headers):
    """The watchers' tests mean something only if the fake is as strict as the cloud."""
    import urllib.error
    import urllib.request

    with FakeMetadata(cloud) as fake:
        fake.notice = True
        req = urllib.request.Request(fake.url + path, headers=headers)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(req, timeout=5)
        assert refused.value.code in (400, 401, 403)
        assert fake.refused == 1


@pytest.mark.parametrize(
    "value, cloud",
    [
        (None, None),
        ("aws", "aws"),
        ("GCP", "gcp"),
        (" azure ", "azure"),
        ("none", None),
        ("", None),
    ],
)
def test_accepted_preemption_spellings(value, cloud):
    assert validate_preemption(value, "train") == cloud


@pytest.mark.parametrize("value", ["ec2", "auto", "aws,gcp", "google", True, 1, ["aws"]])
def test_other_preemption_values_are_refused_naming_the_accepted_ones(value):
    with pytest.raises(CheckpointConfigError) as err:
        validate_preemption(value, "train")
    message = err.value.message
    assert "Step 'train'" in message and repr(value) in message
    assert "'aws', 'gcp', 'azure'" in message


def test_the_default_endpoint_is_the_link_local_metadata_address():
    watcher = PreemptionWatcher("gcp")
    assert watcher.endpoint == DEFAULT_ENDPOINT == "http://169.254.169.254"


def test_preemption_settings_are_read_with_the_task_settings(monkeypatch):
    monkeypatch.setattr(
        metaflow_config, "CHECKPOINT_PREEMPTION_ENDPOINT", "http://127.0.0.1:9/", raising=False
    )
    monkeypatch.setattr(metaflow_config, "CHECKPOINT_PREEMPTION_POLL_SECONDS", "0.5", raising=False)
    read = TaskSettings.read()
    assert (read.preemption_endpoint, read.preemption_poll_seconds) == ("http://127.0.0.1:9", 0.5)
    monkeypatch.setattr(metaflow_config, "CHECKPOINT_PREEMPTION_ENDPOINT", None, raising=False)
    monkeypatch.setattr(metaflow_config, "CHECKPOINT_PREEMPTION_POLL_SECONDS", None, raising=False)
    assert (settings.preemption_endpoint(), settings.preemption_poll_seconds()) == (None, 5.0)


def _session(tmp_path, endpoint, preemption, logs):
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    return TaskSession.start(
        store,
        make_scope(),
        Resolution(None, "first attempt"),
        step_name="train",
        temp_dir_root=str(tmp_path / "tmp"),
        save_on_interrupt=True,
        preemption=preemption,
        settings=TaskSettings(
            async_budget=1 << 30,
            parallel_timeout=30.0,
            pause_poll_seconds=0.0,
            preemption_endpoint=endpoint,
            preemption_poll_seconds=0.01,
        ),
        log=logs.append,
    )


def _watcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("checkpoint-preemption")]


def test_a_notice_interrupts_the_session_as_sigterm_does(tmp_path):
    """The real path: the watcher's SIGTERM reaches the session's handler in the main thread,
    which runs the callback, saves the directory, and stops the step with
    CheckpointInterrupted; the end joins the watcher's thread."""
    logs: list[str] = []
    before = signal.getsignal(signal.SIGTERM)
    with FakeMetadata("aws") as fake:
        session = _session(tmp_path, fake.url, "aws", logs)
        try:
            runtime = session.runtime
            with open(runtime.directory + "/state.txt", "w") as f:
                f.write("epoch 7")
            runtime.on_interrupt(lambda: logs.append("callback ran"))
            _wait_for(lambda: fake.polls >= 2, "the watcher's first polls")
            with pytest.raises(CheckpointInterrupted, match="SIGTERM"):
                fake.notice = True
                _wait_for(lambda: False, "the preemption notice to interrupt the step")
            [ref] = runtime.list()
            assert ref.metadata == {"reason": "interrupted", "signal": "SIGTERM"}
        finally:
            session.end()
    assert not _watcher_threads()  # stopped and joined
    assert signal.getsignal(signal.SIGTERM) is before
    notice = [i for i, m in enumerate(logs) if "Preemption notice from AWS EC2 spot" in m]
    received = [i for i, m in enumerate(logs) if "Received SIGTERM" in m]
    assert notice and received and notice[0] < received[0]
    # The notice's lead time, not the 3 s made for a local Ctrl+C, bounds the final save.
    assert "within 90 s" in logs[received[0]]
    assert "callback ran" in logs


def test_without_preemption_no_watcher_runs_and_nothing_is_contacted(tmp_path):
    logs: list[str] = []
    with FakeMetadata("aws") as fake:
        session = _session(tmp_path, fake.url, None, logs)
        try:
            assert not _watcher_threads()
        finally:
            session.end()
        assert fake.polls == 0 and not fake.tokens


def test_the_watcher_stops_with_the_session_when_no_notice_came(tmp_path):
    logs: list[str] = []
    with FakeMetadata("gcp") as fake:
        session = _session(tmp_path, fake.url, "gcp", logs)
        _wait_for(lambda: fake.polls >= 2, "the watcher's first polls")
        session.end()
        assert not _watcher_threads()
        polls = fake.polls
        fake.notice = True
        time.sleep(0.05)  # lets a leaked watcher poll (none may): not a timing assert
        assert fake.polls == polls
    assert not any("Preemption notice" in m for m in logs)
