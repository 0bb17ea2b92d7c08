"""``METAFLOW_CHECKPOINT_*`` settings: ``import metaflow`` never fails on them, each is
validated where it is read (``common/settings.py``) with an error naming the variable, the value
and the accepted range, and good values (seconds with a fraction included) reach the store.

In-process rows set the value as Metaflow's configuration holds it (``metaflow_config``, a raw
string from the environment); the ``import metaflow`` rows run a real interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from metaflow import metaflow_config

from metaflow_extensions.checkpointing.plugins.checkpointing.common import settings
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import CheckpointConfigError
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import TaskSettings

#: setting -> (bad values, what the error says is accepted)
BAD = {
    "CHUNK_SIZE": (
        ["0", "-5", "4095", "16MiB", "1.5", "abc", str((5 << 30) + 1)],
        "an integer number of bytes, at least 4096 and at most 5368709120",
    ),
    "SMALL_FILE_SIZE": (["-1", "1MiB", "0.5", "abc"], "an integer number of bytes, at least 0"),
    "WORKERS": (["0", "-1", "2.5", "many"], "an integer number of threads, at least 1"),
    "RETRY_ATTEMPTS": (["0", "-1", "1.5", "x"], "an integer number of tries, at least 1"),
    "RETRY_SECONDS": (["-1", "nan", "inf", "abc", "2m"], "a number of seconds >= 0"),
    "TIMEOUT_SECONDS": (["0", "-2.5", "nan", "inf", "abc"], "a number of seconds > 0"),
    "ASYNC_BUDGET": (["-1", "4GiB", "1e9", "abc"], "an integer number of bytes, at least 0"),
    "PARALLEL_TIMEOUT": (["abc", "0", "-1", "nan", "inf"], "a number of seconds > 0"),
    "PAUSE_POLL_SECONDS": (["nan", "-3", "inf", "soon"], "a number of seconds >= 0"),
    "LEASE_SECONDS": (["0", "-1", "86401", "nan", "abc"], "greater than 0 and at most 86400"),
    "FSYNC": (["maybe", "2", "enabled"], "one of 1/true/yes/on or 0/false/no/off"),
    "PREEMPTION_POLL_SECONDS": (["0", "-1", "nan", "inf", "soon"], "a number of seconds > 0"),
    "INTERRUPT_SECONDS": (["0", "-1", "nan", "inf", "3s"], "a number of seconds > 0"),
    "PREEMPTION_ENDPOINT": (
        ["169.254.169.254", "ftp://127.0.0.1", "http://", "http://[::1"],
        "an http:// or https:// URL with a host",
    ),
    "LOCAL_TIER": (["relative/tier", "./tier", "/dev/null"], "an absolute path of a directory"),
    "LOCAL_TIER_DAYS": (["0", "-1", "nan", "inf", "7d"], "a number of days > 0"),
}

#: setting -> (a good value, the reader, what it reads) — fractions of seconds are allowed.
GOOD = {
    "CHUNK_SIZE": ("4096", lambda: settings.transfer_options().chunk_size, 4096),
    "SMALL_FILE_SIZE": ("0", lambda: settings.transfer_options().small_size, 0),
    "WORKERS": ("3", lambda: settings.transfer_options().workers, 3),
    "RETRY_ATTEMPTS": ("1", lambda: settings.retry_policy().attempts, 1),
    "RETRY_SECONDS": ("1.5", lambda: settings.retry_policy().max_seconds, 1.5),
    "TIMEOUT_SECONDS": ("2.5", lambda: settings.timeout_seconds(), 2.5),
    "ASYNC_BUDGET": ("0", settings.async_budget, 0),
    "PARALLEL_TIMEOUT": ("0.5", settings.parallel_timeout, 0.5),
    "PAUSE_POLL_SECONDS": ("0", settings.pause_poll_seconds, 0.0),
    "LEASE_SECONDS": ("90.5", settings.lease_seconds, 90.5),
    "FSYNC": ("no", lambda: settings._bool("CHECKPOINT_FSYNC"), False),
    "PREEMPTION_POLL_SECONDS": ("0.5", settings.preemption_poll_seconds, 0.5),
    "INTERRUPT_SECONDS": ("2.5", settings.interrupt_seconds, 2.5),
    "PREEMPTION_ENDPOINT": (
        "http://127.0.0.1:8080/",
        settings.preemption_endpoint,
        "http://127.0.0.1:8080",
    ),
    "LOCAL_TIER": ("~/ckpt-tier", settings.local_tier_base, os.path.expanduser("~/ckpt-tier")),
    "LOCAL_TIER_DAYS": ("0.5", settings.local_tier_days, 0.5),
}


def _read_everything(root: str) -> None:
    """What a task start, the client and the CLI read: a store's settings and the task's."""
    settings.store_for_url(root)
    TaskSettings.read()
    settings.local_tier_base()
    settings.local_tier_days()


def test_every_setting_has_rows():
    declared = {
        n[len("CHECKPOINT_") :] for n in dir(metaflow_config) if n.startswith("CHECKPOINT_")
    }
    assert declared - {"ROOT"} == set(BAD) == set(GOOD)


@pytest.mark.parametrize(
    "name, value, accepted",
    [(n, v, accepted) for n, (values, accepted) in BAD.items() for v in values],
)
def test_a_bad_setting_is_an_error_naming_it_where_it_is_read(
    tmp_path, monkeypatch, name, value, accepted
):
    monkeypatch.setattr(metaflow_config, "CHECKPOINT_" + name, value)
    with pytest.raises(CheckpointConfigError) as info:
        _read_everything(str(tmp_path))
    message = info.value.message
    assert message.startswith("METAFLOW_CHECKPOINT_%s=%r" % (name, value)), message
    assert accepted in message


@pytest.mark.parametrize("name", list(GOOD))
def test_a_good_setting_reaches_what_reads_it(tmp_path, monkeypatch, name):
    value, read, expected = GOOD[name]
    monkeypatch.setattr(metaflow_config, "CHECKPOINT_" + name, value)
    assert read() == expected
    _read_everything(str(tmp_path))


@pytest.mark.parametrize(
    "spelling, on",
    [("1", True), ("true", True), ("YES", True), ("on", True), (True, True)]
    + [("0", False), ("false", False), ("no", False), ("Off", False), (False, False)],
)
def test_fsync_spellings(monkeypatch, spelling, on):
    """The documented spellings only (``no`` and ``off`` used to turn fsync *on*)."""
    monkeypatch.setattr(metaflow_config, "CHECKPOINT_FSYNC", spelling)
    assert settings._bool("CHECKPOINT_FSYNC") is on


def test_unset_settings_keep_their_defaults(tmp_path, monkeypatch):
    for name in GOOD:
        monkeypatch.setattr(metaflow_config, "CHECKPOINT_" + name, None)
    options = settings.transfer_options()
    assert (options.chunk_size, options.small_size) == (16 << 20, 1 << 20)
    assert settings.retry_policy().attempts == 6
    assert settings.retry_policy().max_seconds == 120.0
    assert settings.timeout_seconds() == 60.0
    assert settings.async_budget() == 4 << 30
    assert settings.parallel_timeout() == 600.0
    assert settings.pause_poll_seconds() == 5.0
    assert settings.interrupt_seconds() == 3.0
    assert settings.local_tier_days() == 7.0
    assert settings.lease_seconds() == 1800.0
    assert settings._bool("CHECKPOINT_FSYNC") is False


IMPORT_ROWS = [
    ("RETRY_SECONDS", "1.5"),
    ("LEASE_SECONDS", "90.5"),
    ("TIMEOUT_SECONDS", "2.5"),
    ("PARALLEL_TIMEOUT", "abc"),
    ("CHUNK_SIZE", "16MiB"),
    ("ASYNC_BUDGET", "-1"),
    ("PAUSE_POLL_SECONDS", "soon"),
    ("FSYNC", "maybe"),
    ("WORKERS", "x"),
    ("FSYNC", "no"),  # was turned into True by Metaflow's bool conversion
]


@pytest.mark.parametrize("name, value", IMPORT_ROWS)
def test_import_metaflow_never_fails_on_our_settings(name, value):
    """A typed default in the config made ``from_conf`` convert at import: ``1.5`` for an
    integer setting crashed ``import metaflow`` (and so every Metaflow command)."""
    env = {"METAFLOW_CHECKPOINT_" + name: value, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import metaflow; from metaflow import metaflow_config as c; "
            "print(repr(c.CHECKPOINT_%s))" % name,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == repr(value)  # kept raw, validated where it is read
