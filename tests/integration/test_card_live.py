"""The live ``checkpoint`` card: the task pushes its saves after each commit and Metaflow renders
them while the task runs (``task/card_live.py``, ``CheckpointCard.render_runtime``).

The flow tests run real flows and read the runtime card the supported way, ``get_cards`` on
the running task (Metaflow stores each runtime render where the final card goes), and draw it
in headless Chromium as tests/integration/test_card.py does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

# Before our card package: Metaflow imports card packages while it initialises.
import metaflow  # noqa: F401
import pytest

from metaflow_extensions.checkpointing.plugins.cards.checkpoint_card.card import CheckpointCard
from metaflow_extensions.checkpointing.plugins.checkpointing.core import retention
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import build
from metaflow_extensions.checkpointing.plugins.checkpointing.task.card_live import LiveCard

from .flowrun import run_probe, subprocess_env
from .test_card import browser_dom, parse_html, screenshot

FLOW = Path(__file__).resolve().parents[1] / "flows" / "live_card_flow.py"


# ------------------------------------------------------------------------------- the listener


SCOPE = Scope(
    namespace="user:alice", flow="F", step="train", foreach="_", run="1", task="2", attempt=0
)


def _saves(tmp_path: Path, **keep):
    store = CheckpointStore(LocalStorage(str(tmp_path / "store")))
    directory = tmp_path / "dir"
    directory.mkdir()
    (directory / "w.bin").write_bytes(b"x" * 100)
    logs: list[str] = []
    parts = build(
        store,
        SCOPE,
        str(directory),
        log=logs.append,
        retention=retention.build(**keep) if keep else None,
    )
    return parts, directory, logs


def test_listeners_get_each_commit_and_the_keys_retention_pruned_after_it(tmp_path):
    parts, directory, logs = _saves(tmp_path, keep_last=2)
    seen: list[tuple[str, tuple]] = []
    parts.saves.add_listener(lambda ref, pruned=(): seen.append((ref["key"], tuple(pruned))))
    refs = []
    for i in range(4):
        (directory / "w.bin").write_bytes(bytes([i]) * 100)
        refs.append(parts.runtime.save(metadata={"loss": 1.0 / (i + 1)}))
    assert [k for k, _ in seen] == [r["key"] for r in refs]
    assert [p for _, p in seen] == [(), (), (refs[0]["key"],), (refs[1]["key"],)]
    assert all(r["status"] == "uploaded" for r in refs)


def test_a_failing_listener_never_fails_the_save_and_is_logged_once(tmp_path):
    parts, directory, logs = _saves(tmp_path)

    def broken(ref, pruned=()):
        raise RuntimeError("card renderer is gone")

    parts.saves.add_listener(broken)
    first = parts.runtime.save()
    (directory / "w.bin").write_bytes(b"y" * 100)
    second = parts.runtime.save()
    assert first["key"] != second["key"]
    warnings = [m for m in logs if "card renderer is gone" in m]
    assert len(warnings) == 1, logs


class _Creator:
    """Stands in for Metaflow's ``CardCreator``: records each render asked for."""

    def __init__(self, card):
        self.card = card

    def create(self, **kwargs):
        data = json.loads(json.dumps(self.card._latest_user_data))
        self.card.pushed.append(data)
        self.card.calls.append(kwargs)


class _Card:
    """Stands in for Metaflow's ``CardComponentManager`` (the attributes LiveCard uses)."""

    def __init__(self, interval: float = 5.0):
        self._refresh_interval = interval
        self._render_seq = 0
        self._latest_user_data = None
        self._card_creator_args = {"card_uuid": "u1", "runtime_card": False}
        self._card_creator = _Creator(self)
        self.pushed: list[dict] = []
        self.calls: list[dict] = []


def test_renders_at_most_once_per_refresh_interval_and_the_next_one_shows_everything(tmp_path):
    parts, directory, _ = _saves(tmp_path, keep_last=2)
    card = _Card(interval=5.0)
    now = [100.0]
    live = LiveCard("F/1/train/2", managers=lambda: [card], clock=lambda: now[0])
    parts.saves.add_listener(live)
    refs = []
    for i in range(3):  # within one interval: only the first renders
        (directory / "w.bin").write_bytes(bytes([i]) * 100)
        refs.append(parts.runtime.save(metadata={"loss": 3.0 - i}))
        now[0] += 1.0
    assert len(card.pushed) == 1 and len(card.pushed[0]["saves"]) == 1
    now[0] += 5.0
    (directory / "w.bin").write_bytes(b"z" * 100)
    refs.append(parts.runtime.save(metadata={"loss": 0.5}))
    pushed = card.pushed[-1]
    assert len(card.pushed) == 2
    assert [s["key"] for s in pushed["saves"]] == [r["key"] for r in refs]
    # keep_last=2 pruned the first two: still plotted, shown as pruned.
    assert [s["kept"] for s in pushed["saves"]] == [False, False, True, True]
    assert [s["status"] for s in pushed["saves"]] == ["uploaded"] * 4
    assert pushed["task_status"] is None
    assert pushed["refresh_seconds"] == 5.0  # the page reloads per the card's refresh_interval


def test_finish_renders_a_paused_or_failed_task_at_once_and_a_succeeded_one_never(tmp_path):
    card = _Card(interval=60.0)
    live = LiveCard("F/1/train/2", managers=lambda: [card], clock=lambda: 0.0)
    live.finish("succeeded")
    assert card.pushed == []  # Metaflow's final render replaces the live card
    live.finish("paused")
    live.finish("failed")
    assert [p["task_status"] for p in card.pushed] == ["paused", "failed"]
    # A runtime render, waited for (the task is ending), of a card type Metaflow does not
    # refresh itself (no extra subprocess at the task's end).
    assert [(c["mode"], c["sync"], c["runtime_card"]) for c in card.calls] == [
        ("render_runtime", True, True)
    ] * 2
    assert card._render_seq == 2


def test_a_step_with_no_checkpoint_card_resolves_none_and_renders_nothing(tmp_path):
    parts, directory, _ = _saves(tmp_path)
    live = LiveCard("F/1/train/2", managers=lambda: [])
    parts.saves.add_listener(live)
    parts.runtime.save()
    live.finish("paused")
    assert live.renders == 0


# ------------------------------------------------------------------------------- the renderer


def _pushed(statuses, task_status=None, kept=None):
    saves = []
    for i, status in enumerate(statuses, start=1):
        key = "manifests/ns/F/train/_/1/2/%013d-0-%06d-L-id%d-mfchckpt.json" % (
            1700000000000 + i,
            i,
            i,
        )
        saves.append(
            dict(
                key=key,
                name="mfchckpt",
                pathspec="F/1/train/2",
                attempt=0,
                created_on="2024-05-01T10:00:%02d.000+00:00" % i,
                metadata={"loss": 1.0 / i, "step": i},
                latest=True,
                size=1024 * i,
                writer={"node": 0, "local": 0},
                status=status,
                task_status=None,
                kept=True if kept is None else kept[i - 1],
            )
        )
    return {
        "user": {
            "format": "metaflow-checkpointing-live/1",
            "pathspec": "F/1/train/2",
            "task_status": task_status,
            "saves": saves,
            "best": [],
            "refresh_seconds": 2,
            "pushed_at": 1714557600.0,
        }
    }


def test_runtime_render_shows_status_badges_and_reloads_itself_while_running(tmp_path):
    html = CheckpointCard(options={"metric": "loss"}).render_runtime(
        "F/1/train/2", _pushed(["uploaded", "local", "uploading", "failed"])
    )
    dom = parse_html(html)
    meta = [n for n in dom.find_all("meta") if n.attrs.get("http-equiv") == "refresh"]
    assert [m.attrs["content"] for m in meta] == ["2"]
    assert dom.find("p", "task-status").attrs["data-task-status"] == "running"
    rows = dom.find("table", "checkpoints").find_all("tr", "checkpoint")
    cells = [r.find("td", "status") for r in rows]
    assert [c.attrs["data-status"] for c in cells] == ["failed", "uploading", "local", "uploaded"]
    assert [len(c.find_all("span", "badge")) for c in cells] == [1, 1, 1, 0]
    assert len(dom.find("svg", "plot").find_all("circle", "point")) == 4


def test_a_paused_task_s_last_render_says_paused_not_failed_and_stops_reloading():
    html = CheckpointCard().render_runtime("F/1/train/2", _pushed(["uploaded"], "paused"))
    dom = parse_html(html)
    note = dom.find("p", "task-status")
    assert note.attrs["data-task-status"] == "paused"
    assert "paused" in note.text() and "failed" not in note.text()
    assert not [n for n in dom.find_all("meta") if n.attrs.get("http-equiv") == "refresh"]


def test_pruned_saves_pushed_by_the_task_stay_plotted_and_show_as_pruned():
    data = _pushed(["uploaded"] * 3, kept=[False, True, True])
    dom = parse_html(CheckpointCard(options={"metric": "loss"}).render_runtime("t", data))
    rows = dom.find("table", "checkpoints").find_all("tr", "checkpoint")
    assert [r.attrs["data-kept"] for r in rows] == ["true", "true", "false"]
    assert len(dom.find("svg", "plot").find_all("circle", "point")) == 3


def test_before_the_first_save_the_runtime_card_says_so():
    dom = parse_html(CheckpointCard().render_runtime("F/1/train/2", {"user": {}}))
    assert "No checkpoint saved yet" in dom.find("p", "note").text()


def test_the_final_card_of_a_paused_task_says_paused_from_the_listing(monkeypatch):
    from metaflow_extensions.checkpointing.plugins.cards.checkpoint_card.card import (
        render_checkpoints,
    )

    from .test_card import ref

    html = render_checkpoints(
        [ref(1, {"loss": 1.0}, task_status="paused")], pathspec="F/1/train/2", task_status="paused"
    )
    assert parse_html(html).find("p", "task-status").attrs["data-task-status"] == "paused"


# ------------------------------------------------------------------------------- real flows

#: Polls the running task's checkpoint card with the client (``get_cards``) in the flow's
#: environment and keeps each different page, with whether the task had finished then.
WATCH = """\
import json, os, sys, time
from metaflow import Flow, namespace
from metaflow.cards import get_cards

namespace(None)
out, stop = sys.argv[1], sys.argv[2]
seen, last, deadline = [], None, time.time() + 300
while time.time() < deadline:
    stopping = os.path.exists(stop)
    try:
        task = next(iter(Flow("LiveCardFlow").latest_run["train"]))
        finished = task.finished
        cards = get_cards(task, type="checkpoint")
        html = cards[0].get() if len(cards) else None
    except Exception:
        html = None
    if html is not None and html != last:
        last = html
        name = os.path.join(out, "card-%03d.html" % len(seen))
        with open(name, "w") as f:
            f.write(html)
        seen.append({"file": name, "finished": finished, "at": time.time()})
    if stopping:
        break
    time.sleep(0.2)
print(json.dumps(seen))
"""


ARTIFACTS = """\
import json
from metaflow import Flow, namespace

namespace(None)
run = Flow("LiveCardFlow").latest_run
print("PROBE" + json.dumps({
    s: {"card_processes": run[s].task.data.card_processes, "has_card": run[s].task.data.has_card}
    for s in ("plain", "train")
}))
"""


def _run_watched(
    env: dict, tmp: Path, until: str = "", **extra: str
) -> tuple[subprocess.CompletedProcess, list]:
    """Run LiveCardFlow while WATCH reads its card; (the run, the pages seen).  ``until``: once
    the run ended, keep watching (up to 60 s) until a page holding that text was seen (a render
    the task started as it ended, without waiting for it)."""
    env = dict(env, **extra)
    pages = tmp / "pages"
    pages.mkdir()
    stop = tmp / "stop"
    script = tmp / "watch.py"
    script.write_text(WATCH)
    watcher = subprocess.Popen(
        [sys.executable, str(script), str(pages), str(stop)],
        env=subprocess_env(env),
        cwd=str(tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run = subprocess.run(
            [sys.executable, str(FLOW), "--no-pylint", "run"],
            env=subprocess_env(env),
            cwd=str(tmp),
            capture_output=True,
            text=True,
            timeout=300,
        )
        time.sleep(1.0)  # the watcher reads the final page too
        deadline = time.time() + 60
        while until and time.time() < deadline:
            if any(until in p.read_text() for p in pages.glob("card-*.html")):
                time.sleep(0.5)  # the watcher has recorded it
                break
            time.sleep(0.2)
        stop.write_text("")
        out, err = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0, err[-3000:]
    return run, json.loads(out)


def _rows(html: str) -> list:
    return parse_html(html).find("table", "checkpoints").find_all("tr", "checkpoint")


def _refreshes(html: str) -> bool:
    return any(n.attrs.get("http-equiv") == "refresh" for n in parse_html(html).find_all("meta"))


@pytest.mark.flow
def test_the_card_of_a_running_task_grows_with_each_save_in_chromium(flow_env):
    """While ``train`` saves 8 times, 1.5 s apart, ``get_cards`` on the running task returns
    a card with more saves each time it changes, each row with its status; Chromium draws
    it; the final card (Metaflow's render, from the store) has all 8 and no longer reloads.
    A step with no card started no card process."""
    env, tmp = flow_env
    run, pages = _run_watched(env, tmp)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    live = [p for p in pages if not p["finished"]]
    counts = [len(_rows(Path(p["file"]).read_text())) for p in live]
    assert len(set(counts)) >= 3, counts  # seen growing while the task ran
    assert counts == sorted(counts), counts
    assert counts[0] < 8 and max(counts) <= 8, counts
    for page in live:
        html = Path(page["file"]).read_text()
        dom = parse_html(html)
        assert _refreshes(html)
        assert dom.find("p", "task-status").attrs["data-task-status"] == "running"
        statuses = [r.find("td", "status").attrs["data-status"] for r in _rows(html)]
        kept = [r.attrs["data-kept"] for r in _rows(html)]
        # keep_last=3: older saves are pruned (no status: the checkpoint is gone).
        assert statuses == ["uploaded" if k == "true" else "" for k in kept]
        assert kept.count("true") == min(3, len(kept))

    # Drawn by a browser: the mid-run page's table and plot.
    mid = Path(live[len(live) // 2]["file"])
    dom = browser_dom(mid, tmp)
    rows = dom.find("table", "checkpoints").find_all("tr", "checkpoint")
    assert len(rows) == counts[len(live) // 2]
    assert [r.find("td", "status").text() for r in rows][:1] == ["uploaded"]
    assert len(dom.find("svg", "plot").find_all("circle", "point")) == len(rows)
    png = screenshot(mid, tmp)
    assert png.stat().st_size > 5000

    final = Path(pages[-1]["file"]).read_text()
    assert pages[-1]["finished"] and not _refreshes(final)
    assert len(_rows(final)) == 8
    assert not parse_html(final).find_all("p", "task-status")

    steps, _ = run_probe(ARTIFACTS, env, tmp)
    assert steps["plain"] == {"card_processes": 0, "has_card": False}
    assert steps["train"]["card_processes"] >= 1 and steps["train"]["has_card"] is True


@pytest.mark.flow
def test_a_paused_task_s_card_says_paused_not_failed(flow_env):
    """``pause()`` after the 3rd save: Metaflow renders no final card for a task that did not
    succeed; the task's last render says paused (not failed) and shows its 3 saves."""
    env, tmp = flow_env
    run, pages = _run_watched(env, tmp, MFCKPT_PAUSE_AT="3", MFCKPT_LIVE_SLEEP="0.5")
    assert run.returncode != 0
    assert "paused" in run.stdout + run.stderr
    last = Path(pages[-1]["file"]).read_text()
    dom = parse_html(last)
    note = dom.find("p", "task-status")
    assert note.attrs["data-task-status"] == "paused"
    assert "failed" not in note.text()
    assert len(_rows(last)) == 3
    assert not _refreshes(last)
    page = tmp / "paused.html"
    page.write_text(last)
    shown = browser_dom(page, tmp).find("p", "task-status").text()
    assert "paused" in shown


def test_a_failed_task_s_last_render_says_failed():
    html = CheckpointCard().render_runtime("F/1/train/2", _pushed(["uploaded"], "failed"))
    note = parse_html(html).find("p", "task-status")
    assert note.attrs["data-task-status"] == "failed" and "failed" in note.text()
    assert not _refreshes(html)


@pytest.mark.flow
def test_upload_end_saves_show_local_while_running_and_the_paused_end_shows_what_was_uploaded(
    flow_env,
):
    """``@checkpoint(upload="end")``: each save is ``local`` (a badge) while the task runs;
    pausing uploads the newest one, and the task's last render says paused with that one
    ``uploaded`` and the others still ``local``; Chromium shows the badges."""
    env, tmp = flow_env
    tier = tmp / "tier-base"
    run, pages = _run_watched(
        env,
        tmp,
        MFCKPT_PAUSE_AT="3",
        MFCKPT_LIVE_SLEEP="1.2",
        MFCKPT_UPLOAD="end",
        METAFLOW_CHECKPOINT_LOCAL_TIER=str(tier),
    )
    assert run.returncode != 0 and "paused" in run.stdout + run.stderr
    live = [Path(p["file"]).read_text() for p in pages[:-1]]
    assert live, pages
    for html in live:
        statuses = [r.find("td", "status").attrs["data-status"] for r in _rows(html)]
        assert set(statuses) == {"local"}, statuses
    last = Path(pages[-1]["file"]).read_text()
    assert parse_html(last).find("p", "task-status").attrs["data-task-status"] == "paused"
    statuses = [r.find("td", "status").attrs["data-status"] for r in _rows(last)]
    assert statuses == ["uploaded", "local", "local"], statuses
    page = tmp / "last.html"
    page.write_text(last)
    rows = browser_dom(page, tmp).find("table", "checkpoints").find_all("tr", "checkpoint")
    badges = [[b.text() for b in r.find("td", "status").find_all("span", "badge")] for r in rows]
    assert badges == [[], ["local"], ["local"]]


@pytest.mark.flow
def test_a_paused_task_s_last_render_shows_failed_for_the_checkpoint_whose_end_upload_failed(
    flow_env,
):
    """``upload="end"``, ``upload_errors="warn"``, the flow's store refuses blob writes: the
    pause's end upload of the newest save fails, and the task's last render shows it
    ``failed``, as ``checkpoint list`` does, not ``local``."""
    env, tmp = flow_env
    env = dict(env, METAFLOW_CHECKPOINT_LOCAL_TIER=str(tmp / "tier-base"))
    run, pages = _run_watched(
        env,
        tmp,
        MFCKPT_PAUSE_AT="3",
        MFCKPT_LIVE_SLEEP="0.5",
        MFCKPT_UPLOAD="end",
        MFCKPT_UPLOAD_ERRORS="warn",
        MFCKPT_FAIL_STORE="1",
    )
    assert run.returncode != 0 and "paused" in run.stdout + run.stderr
    last = Path(pages[-1]["file"]).read_text()
    assert parse_html(last).find("p", "task-status").attrs["data-task-status"] == "paused"
    statuses = [r.find("td", "status").attrs["data-status"] for r in _rows(last)]
    assert statuses == ["failed", "local", "local"], statuses
    listed = subprocess.run(
        [sys.executable, str(FLOW), "--no-pylint", "checkpoint", "list", "--json"],
        env=subprocess_env(env),
        cwd=str(tmp),
        capture_output=True,
        text=True,
        timeout=120,
    )
    rows = [r for r in json.loads(listed.stdout) if "/train/" in r["key"]]
    assert sorted(r["status"] for r in rows) == ["failed", "local", "local"], rows


@pytest.mark.flow
def test_upload_end_final_card_shows_the_uploaded_checkpoint_once_the_tier_is_cleaned(flow_env):
    """A successful ``upload="end"`` task: its final card (Metaflow's render, listing the
    flow's store and, on this machine, the task's local tier) marks the one uploaded
    checkpoint ``uploaded``; the other saves were removed from the tier at the task's end
    (docs/upload.md, Cleanup), so they are plotted saves with no checkpoint left."""
    env, tmp = flow_env
    run, pages = _run_watched(
        env,
        tmp,
        MFCKPT_LIVE_SAVES="5",
        MFCKPT_LIVE_SLEEP="0.2",
        MFCKPT_UPLOAD="end",
        METAFLOW_CHECKPOINT_LOCAL_TIER=str(tmp / "tier-base"),
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    final = Path(pages[-1]["file"]).read_text()
    assert pages[-1]["finished"] and not _refreshes(final)
    statuses = [r.find("td", "status").attrs["data-status"] for r in _rows(final)]
    assert statuses == ["uploaded", "", "", "", ""], statuses


def test_a_long_training_pushes_whole_metadata_for_the_newest_saves_only():
    """Past the newest 50 saves a push carries only the numeric fields (what the plots use)."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.reference import (
        CheckpointReference,
    )

    card = _Card(interval=0.0)
    live = LiveCard("F/1/train/2", managers=lambda: [card], clock=lambda: 0.0)
    for i in range(60):
        key = "manifests/ns/F/train/_/1/2/%013d-0-%06d-L-id%d-mfchckpt.json" % (i, i, i)
        live(CheckpointReference(key=key, metadata={"loss": 1.0 / (i + 1), "note": "x" * 100}))
    saves = card.pushed[-1]["saves"]
    assert len(saves) == 60
    assert [s["metadata"] for s in saves[:10]] == [{"loss": 1.0 / (i + 1)} for i in range(10)]
    assert all(s["metadata"]["note"] == "x" * 100 for s in saves[10:])


@pytest.mark.flow
def test_after_sigterm_the_task_s_card_says_failed(flow_env):
    """SIGTERM after the 2nd save: the task stops (its checkpoints committed); its last render,
    started as it ends without waiting for it, says the attempt failed and shows both saves."""
    env, tmp = flow_env
    run, pages = _run_watched(
        env, tmp, 'data-task-status="failed"', MFCKPT_SIGTERM_AT="2", MFCKPT_LIVE_SLEEP="0.5"
    )
    assert run.returncode != 0
    assert "Received SIGTERM" in run.stdout + run.stderr
    last = Path(pages[-1]["file"]).read_text()
    assert parse_html(last).find("p", "task-status").attrs["data-task-status"] == "failed"
    assert len(_rows(last)) == 2 and not _refreshes(last)
