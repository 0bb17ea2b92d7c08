"""A signal that arrives while a load puts its files into place (Ctrl-C's KeyboardInterrupt, a
task's SIGTERM handler) is handled once they are all in place (``core/uninterrupted.py``): the
directory holds the old version or the new one, never a mix, no temp or backup name is left,
and the handler still runs.  Found by the adversarial review of 2026-12-07: an interrupt
between two renames left 855 old and 645 new files, or 1,437 backups the next load never
removed; one during the managed directory's swap let a task's final save commit it half
filled."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.core import loading, uninterrupted
from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import blob_key
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.core.uninterrupted import (
    deferred_signals,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

from .helpers import make_scope, options, write_tree

FILES = 40


def _versions(tmp_path):
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    out = []
    for tag in "AB":
        tree = {"f%03d" % i: (tag * 64).encode() for i in range(FILES)}
        tree["sub/g"] = tag.encode()
        src = write_tree(tmp_path / ("src" + tag), tree)
        out.append(store.save(str(src), make_scope()))
    return store, out


def _state(target) -> tuple[set, list, int]:
    """(versions found, temp names, how many files): a whole version is one tag, no temp
    name, every file."""
    tags, temps, count = set(), [], 0
    for dirpath, _dirs, files in os.walk(target):
        for name in files:
            if name.startswith(".mfckpt"):
                temps.append(name)
            else:
                count += 1
                with open(os.path.join(dirpath, name), "rb") as f:
                    tags.add(f.read(1))
    return tags, temps, count


class _SignalAtRename:
    """Send ``signum`` to this process at the ``n``-th ``os.replace`` of the load (the fault:
    the signal's handler then runs at the next bytecode, inside the renames)."""

    def __init__(self, monkeypatch, n: int, signum: int = signal.SIGINT):
        self.n, self.calls, self.signum = n, 0, signum
        real = os.replace

        def replace(src, dst, *a, **k):
            self.calls += 1
            if self.calls == self.n:
                os.kill(os.getpid(), self.signum)
            return real(src, dst, *a, **k)

        monkeypatch.setattr(os, "replace", replace)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, FILES + 1), mode=st.sampled_from([loading.MERGE, loading.REPLACE]))
def test_ctrl_c_while_files_are_put_in_place_leaves_old_or_new_never_a_mix(
    tmp_path_factory, n, mode
):
    tmp_path = tmp_path_factory.mktemp("sig")
    store, (a, b) = _versions(tmp_path)
    target = tmp_path / "dest"
    loading.load(store, a, str(target))
    with pytest.MonkeyPatch.context() as mp:
        fault = _SignalAtRename(mp, n)
        with pytest.raises(KeyboardInterrupt):  # Python's own SIGINT handler, deferred
            loading.load(store, b, str(target), existing=mode)
        assert fault.calls >= n
    assert _state(target) == ({b"B"}, [], FILES + 1)
    loading.load(store, a, str(target), existing=loading.MERGE)  # and loads go on as before
    assert _state(target) == ({b"A"}, [], FILES + 1)


def test_a_task_handler_sees_the_managed_directory_whole(tmp_path, monkeypatch):
    """A SIGTERM handler that saves the directory on the way out (``save_on_interrupt``) runs
    after the swap: what it finds is the whole new version."""
    store, (a, b) = _versions(tmp_path)
    target = tmp_path / "managed"
    loading.load(store, a, str(target))
    seen = []

    def on_term(signum, frame):
        seen.append(_state(target))

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        _SignalAtRename(monkeypatch, 3, signal.SIGTERM)
        loading.load(store, b, str(target), existing=loading.REPLACE)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert seen == [({b"B"}, [], FILES + 1)]


def test_deferred_signals_run_the_handler_once_after_the_block_and_restore_it():
    got = []

    def handler(signum, frame):
        got.append(signum)

    old = signal.signal(signal.SIGUSR1, handler)
    prev_term = signal.signal(signal.SIGTERM, handler)
    try:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGUSR1)  # not a stop signal: not deferred
            assert got == [signal.SIGUSR1]
            with deferred_signals():  # nested: the outer block defers
                os.kill(os.getpid(), signal.SIGTERM)
            assert got == [signal.SIGUSR1]
        assert got == [signal.SIGUSR1, signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGUSR1, old)
        signal.signal(signal.SIGTERM, prev_term)


def test_deferred_signals_outside_the_main_thread_change_nothing():
    handlers = []

    def run() -> None:
        with deferred_signals():
            handlers.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert handlers == [signal.getsignal(signal.SIGINT)]


def test_ctrl_c_while_a_failed_load_cleans_up_still_removes_its_temp_files(tmp_path, monkeypatch):
    """A load failing (a blob gone) removes the temp files it wrote; Ctrl-C meanwhile waits."""
    store, (a, b) = _versions(tmp_path)
    target = tmp_path / "dest"
    loading.load(store, a, str(target))
    blobs = sorted({c.blob for f in b.files for c in f.chunks})
    store.storage.delete(blob_key(blobs[-1]))
    real, calls = os.unlink, []

    def unlink(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt) as raised:
        loading.load(store, b, str(target), existing=loading.MERGE)
    monkeypatch.undo()
    assert calls and raised.value.__context__ is not None  # after the load's own error
    assert _state(target) == ({b"A"}, [], FILES + 1)


def test_every_deferred_signal_runs_its_handler_even_when_an_earlier_one_raises():
    ran = []

    def on_term(signum, frame):
        ran.append("TERM")

    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        with pytest.raises(KeyboardInterrupt), deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)  # Python's handler: KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
        assert ran == ["TERM"]
    finally:
        signal.signal(signal.SIGTERM, old_term)


def test_a_restore_cut_short_by_a_handler_never_swallows_a_signal(monkeypatch):
    """``signal.signal`` runs pending handlers before it changes one: a KeyboardInterrupt
    raised there stops the restore, and the stand-in left for SIGTERM must act as the
    handler it stands for."""
    ran = []

    def on_term(signum, frame):
        ran.append("TERM")

    old_term = signal.signal(signal.SIGTERM, on_term)
    real, restoring = uninterrupted._setsignal, []
    try:

        def set_handler(sig, handler):
            out = real(sig, handler)
            if restoring and sig == signal.SIGINT:  # the fault: Ctrl-C right after
                os.kill(os.getpid(), signal.SIGINT)
            return out

        with pytest.raises(KeyboardInterrupt), deferred_signals():
            monkeypatch.setattr(uninterrupted, "_setsignal", set_handler)
            restoring.append(True)
        monkeypatch.undo()
        os.kill(os.getpid(), signal.SIGTERM)
        assert ran == ["TERM"]
    finally:
        monkeypatch.undo()
        signal.signal(signal.SIGTERM, old_term)


def test_restores_cut_short_again_and_again_never_chain_stand_ins(monkeypatch):
    """Each restore cut short leaves a stand-in installed; the next block must stand in for the
    handler behind it, not for it: stand-ins of stand-ins grew by one per cut-short restore
    until a signal met RecursionError instead of its handler (about 1,000 of them)."""

    class Stop(Exception):
        pass

    calls = []

    def on_term(signum, frame):
        calls.append(signum)
        raise Stop()

    old_term = signal.signal(signal.SIGTERM, on_term)
    real = uninterrupted._setsignal

    def cut_short(sig, handler):
        if uninterrupted._Depth.n == 0:  # restoring: a SIGTERM pending when it runs
            os.kill(os.getpid(), signal.SIGTERM)
        return real(sig, handler)

    try:
        for _ in range(1500):
            monkeypatch.setattr(uninterrupted, "_setsignal", cut_short)
            with pytest.raises(Stop), deferred_signals():
                pass
            monkeypatch.undo()
        assert len(calls) == 1500  # every signal reached its handler, once
        with deferred_signals():  # a block whose restore is whole puts the handler back
            pass
        assert signal.getsignal(signal.SIGTERM) is on_term
        with pytest.raises(Stop):
            os.kill(os.getpid(), signal.SIGTERM)
        assert len(calls) == 1501
    finally:
        monkeypatch.undo()
        signal.signal(signal.SIGTERM, old_term)


def test_a_timeout_alarm_while_files_are_put_in_place_leaves_old_or_new(tmp_path, monkeypatch):
    """Metaflow's ``@timeout`` raises from a SIGALRM handler: deferred like the stop signals."""

    class Timeout(Exception):
        pass

    def on_alarm(signum, frame):
        raise Timeout()

    store, (a, b) = _versions(tmp_path)
    target = tmp_path / "dest"
    loading.load(store, a, str(target))
    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        for mode in (loading.MERGE, loading.REPLACE):
            with pytest.MonkeyPatch.context() as mp:
                _SignalAtRename(mp, FILES // 2, signal.SIGALRM)
                with pytest.raises(Timeout):
                    loading.load(
                        store, b if mode == loading.MERGE else a, str(target), existing=mode
                    )
            want = b"B" if mode == loading.MERGE else b"A"
            assert _state(target) == ({want}, [], FILES + 1)
    finally:
        signal.signal(signal.SIGALRM, old)


def test_the_managed_directory_swap_only_renames_and_the_signal_waits_for_no_deletion(
    tmp_path, monkeypatch
):
    """The old contents are moved aside during the swap and deleted after the handler ran:
    deleting 100,000 old files inside the swap held SIGTERM back for 12 s."""
    store, (a, b) = _versions(tmp_path)
    target = tmp_path / "managed"
    loading.load(store, a, str(target))
    deleted, seen = [], []
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        if not os.path.basename(path).startswith(".mfckpt"):  # a checkpoint file, not a lock
            deleted.append(path)
        return real_unlink(path, *args, **kwargs)

    def on_term(signum, frame):
        seen.append((len(deleted), _state(target)))

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        monkeypatch.setattr(os, "unlink", unlink)
        _SignalAtRename(monkeypatch, 2, signal.SIGTERM)
        loading.load(store, b, str(target), existing=loading.REPLACE)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert seen == [(0, ({b"B"}, [], FILES + 1))]
    assert len(deleted) >= FILES  # the old files, once the handler had run


def test_a_swap_that_fails_midway_puts_the_old_contents_back(tmp_path, monkeypatch):
    store, (a, b) = _versions(tmp_path)
    target = tmp_path / "managed"
    loading.load(store, a, str(target))
    real, calls = os.replace, []

    def replace(src, dst, *args, **kwargs):
        calls.append(src)
        if len(calls) == FILES + 5:  # among the new entries, after every old one moved
            raise OSError(28, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        loading.load(store, b, str(target), existing=loading.REPLACE)
    monkeypatch.undo()
    assert _state(target) == ({b"A"}, [], FILES + 1)


def test_a_handler_set_during_the_block_is_kept():
    def mine(signum, frame):
        pass

    old = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda s, f: None)
    try:
        with deferred_signals():
            signal.signal(signal.SIGTERM, mine)
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, old)


def test_ctrl_c_as_the_load_takes_its_lock_leaves_no_lock_file(tmp_path, monkeypatch):
    """An empty lock file left by an interrupt right after its creation was never removed by
    later loads (a dead load's lock holds one byte)."""
    store, (a, b) = _versions(tmp_path)
    target = tmp_path / "dest"
    loading.load(store, a, str(target))
    real = os.open

    def open_(path, flags, *args, **kwargs):
        fd = real(path, flags, *args, **kwargs)
        if os.path.basename(str(path)).startswith(".mfckpt-part-") and flags & os.O_CREAT:
            os.kill(os.getpid(), signal.SIGINT)
        return fd

    monkeypatch.setattr(os, "open", open_)
    with pytest.raises(KeyboardInterrupt):
        loading.load(store, b, str(target), existing=loading.MERGE)
    monkeypatch.undo()
    assert _state(target)[1] == []
