"""The live ``checkpoint`` card: the task pushes its saves after each commit and Metaflow renders
them while the task runs (``task/card_live.py``, ``CheckpointCard.render_runtime``).

The flow tests run real flows and read the runtime card the supported way, ``get_cards`` on
the running task (Metaflow stores each runtime render where the final card goes), and draw it
in headless Chromium as tests/integration/test_card.py does.
"""

from __future__ import annotations

import json
from pathlib import Path

# Before our card package: Metaflow imports card packages while it initialises.
import metaflow  # noqa: F401

from metaflow_extensions.checkpointing.plugins.cards.checkpoint_card.card import CheckpointCard
from metaflow_extensions.checkpointing.plugins.checkpointing.core import retention
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import build
from metaflow_extensions.checkpointing.plugins.checkpointing.task.card_live import LiveCard

from .test_card import parse_html

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


class _Card:
    """Stands in for Metaflow's card manager (public ``refresh`` only)."""

    def __init__(self, interval: float = 5.0):
        self._refresh_interval = interval
        self.pushed: list[dict] = []

    def refresh(self, data=None, force=False):
        self.pushed.append(json.loads(json.dumps(data)))


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


def test_finish_renders_a_paused_or_failed_task_at_once_and_a_succeeded_one_never(tmp_path):
    card = _Card(interval=60.0)
    live = LiveCard("F/1/train/2", managers=lambda: [card], clock=lambda: 0.0)
    live.finish("succeeded")
    assert card.pushed == []  # Metaflow's final render replaces the live card
    live.finish("paused")
    live.finish("failed")
    assert [p["task_status"] for p in card.pushed] == ["paused", "failed"]


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
