"""The ``checkpoint`` card: rendered by a real flow, read back with ``get_cards`` and shown in
headless Chromium; plus renderer tests on hand-built references.

Chromium is required (``make test`` installs Debian's package): without it these tests fail,
they never skip, because the card's one promise is that a browser shows it correctly offline.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Optional

# Before our card package: Metaflow imports card packages while it initialises.
import metaflow
import pytest

from metaflow_extensions.checkpointing.plugins.cards import checkpoint_card
from metaflow_extensions.checkpointing.plugins.cards.checkpoint_card.card import (
    CheckpointCard,
    render_checkpoints,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.common.reference import (
    CheckpointReference,
)

from .flowrun import FLOWS, run_flow, single_task

#: Losses saved by tests/flows/card_flow.py, oldest first.
FLOW_LOSSES = [2.5, 1.25, 0.75, 0.5, 0.375]
#: The plot's line and point colour (#0969da in the card's CSS).
SERIES_RGB = (0x09, 0x69, 0xDA)

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# ------------------------------------------------------------------------------- browser


def chromium() -> str:
    """Path of the Chromium binary; fails the test (never skips) when it is missing."""
    path = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    path = path or shutil.which("chromium")
    if not path:
        pytest.fail(
            "Chromium is required to test the checkpoint card but was not found "
            "(/usr/bin/chromium or chromium on PATH). Run `make test`, which installs "
            "Debian's chromium package.",
            pytrace=False,
        )
    return path


def _chromium(args: list[str], work: Path) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=work)
    proc = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, "--user-data-dir=%s" % profile, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, "chromium failed:\n%s" % proc.stderr[-4000:]
    return proc


def browser_dom(html_file: Path, work: Path) -> Node:
    """The DOM Chromium builds from ``html_file`` (after parsing and running any scripts)."""
    proc = _chromium(["--dump-dom", html_file.resolve().as_uri()], work)
    assert "<body" in proc.stdout, proc.stdout[:2000]
    return parse_html(proc.stdout)


def screenshot(html_file: Path, work: Path, size: str = "720,420") -> Path:
    """A PNG of the top of the page (where the plot is) as Chromium draws it."""
    png = work / (html_file.stem + ".png")
    _chromium(
        ["--screenshot=%s" % png, "--window-size=%s" % size, html_file.resolve().as_uri()], work
    )
    return png


# ------------------------------------------------------------------------------- DOM


class Node:
    """An element of a parsed HTML document (enough of a DOM for assertions)."""

    def __init__(self, tag: str, attrs: dict, parent: Optional[Node] = None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list = []  # Node or str

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str, cls: Optional[str] = None) -> list[Node]:
        return [
            n
            for n in self.iter()
            if n.tag == tag and (cls is None or cls in n.attrs.get("class", "").split())
        ]

    def find(self, tag: str, cls: Optional[str] = None) -> Node:
        found = self.find_all(tag, cls)
        assert len(found) == 1, "expected one <%s class=%s>, found %d" % (tag, cls, len(found))
        return found[0]


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.node = Node("#document", {})

    def handle_starttag(self, tag, attrs):
        child = Node(tag, {k: v or "" for k, v in attrs}, self.node)
        self.node.children.append(child)
        if tag not in _VOID:
            self.node = child

    def handle_startendtag(self, tag, attrs):
        self.node.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.node))

    def handle_endtag(self, tag):
        node = self.node
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.node = node.parent

    def handle_data(self, data):
        self.node.children.append(data)


def parse_html(text: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(text)
    builder.close()
    return builder.root


# ------------------------------------------------------------------------------- PNG


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced RGB/RGBA PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [r if bpp == 3 else _rgb(r) for r in rows]


def _rgb(rgba: bytes) -> bytes:
    return bytes(b for i, b in enumerate(rgba) if i % 4 != 3)


def count_color(rows: list[bytes], rgb: tuple[int, int, int]) -> int:
    """Pixels of exactly ``rgb`` (anti-aliased edges don't count, line and dot centres do)."""
    target = bytes(rgb)
    return sum(1 for row in rows for i in range(0, len(row), 3) if row[i : i + 3] == target)


# ------------------------------------------------------------------------------- helpers


def ref(order: int, metadata: dict, name: str = "mfchckpt", size: int = 1024, **extra):
    """A reference as ``Checkpoint().list()`` returns it (save ``order`` 1 = oldest)."""
    fields = dict(
        key="manifests/ns/F/train/_/1/2/%013d-0-%06d-L-id%d-%s.json" % (order, order, order, name),
        url="file:///store/x.json",
        root="/store",
        name=name,
        pathspec="F/1/train/2",
        attempt=0,
        created_on="2024-05-01T10:00:%02d.000+00:00" % order,
        metadata=metadata,
        latest=True,
        size=size,
        namespace="user:tester",
        flow="F",
        step="train",
        foreach="_",
        run="1",
        task="2",
    )
    fields.update(extra)
    return CheckpointReference(**fields)


def newest_first(*refs):
    return list(reversed(refs))


def plot_points(dom: Node) -> list[Node]:
    return dom.find("svg", "plot").find_all("circle", "point")


def assert_self_contained(dom: Node) -> None:
    """Nothing is fetched: no scripts, stylesheets links, images or URLs in styles."""
    for node in dom.iter():
        assert node.tag not in ("script", "link", "img", "iframe", "object"), node.tag
        for attr in ("src", "href", "xlink:href"):
            assert attr not in node.attrs, (node.tag, attr, node.attrs[attr])
    for style in dom.find_all("style"):
        assert "url(" not in style.text() and "@import" not in style.text()


# ------------------------------------------------------------------------------- flow test


@pytest.mark.flow
def test_card_of_a_real_flow_in_chromium(flow_env):
    """The card of a @checkpoint step, fetched like a user would and drawn by a browser."""
    from metaflow.cards import get_cards

    env, tmp = flow_env
    result = run_flow(FLOWS / "card_flow.py", env, tmp)
    task = single_task(result.run, "train")
    saved = task.data.saved  # references returned by save(), oldest first
    assert len(saved) == 6

    cards = get_cards(task, type="checkpoint")
    assert len(cards) == 1, list(cards)
    html_file = tmp / "card.html"
    html_file.write_text(cards[0].get(), encoding="utf-8")
    dom = browser_dom(html_file, tmp)

    assert task.pathspec in dom.find("h1").text()
    assert_self_contained(dom)

    # The table: one row per checkpoint, newest first, with what save() returned.
    rows = dom.find("table", "checkpoints").find_all("tr", "checkpoint")
    expected = list(reversed(saved))
    assert [r.attrs["data-key"] for r in rows] == [s["key"] for s in expected]
    assert [r.find("td", "name").text() for r in rows] == ["export"] + ["mfchckpt"] * 5
    # weights.bin is 1536 * (i + 1) bytes in save i; "export" re-saves the last one.
    assert [r.find("td", "size").text() for r in rows] == [
        "7.5 KiB",
        "7.5 KiB",
        "6.0 KiB",
        "4.5 KiB",
        "3.0 KiB",
        "1.5 KiB",
    ]
    assert [r.find("td", "size").attrs["title"] for r in rows] == [
        "%d bytes" % s["size"] for s in expected
    ]
    assert [r.find("td", "attempt").text() for r in rows] == ["0"] * 6
    assert [r.find("td", "latest").text() for r in rows] == [""] + ["latest"] * 5
    assert [r.find("td", "order").text() for r in rows] == ["6", "5", "4", "3", "2", "1"]
    for row, loss, i in zip(rows[1:], reversed(FLOW_LOSSES), range(4, -1, -1)):
        pairs = [c.text() for c in row.find("td", "metadata").find_all("code", "kv")]
        assert pairs == ["loss=%s" % loss, "step=%d" % i]
    export_cell = rows[0].find("td", "metadata")
    # Shown as text; the browser did not turn the user's string into a <b> element.
    assert [c.text() for c in export_cell.find_all("code")] == [
        "note=<b>exported</b> & done",
        "step=5",
    ]
    assert export_cell.find_all("b") == []

    # The plot: one point per checkpoint with a loss, oldest (left) to newest (right).
    svg = dom.find("svg", "plot")
    assert svg.attrs["data-metric"] == "loss"
    assert svg.find("text", "y-label").text() == "loss"
    assert "save" in svg.find("text", "x-label").text()
    points = plot_points(dom)
    assert [float(p.attrs["data-y"]) for p in points] == FLOW_LOSSES
    assert [int(p.attrs["data-order"]) for p in points] == [1, 2, 3, 4, 5]
    xs = [float(p.attrs["cx"]) for p in points]
    ys = [float(p.attrs["cy"]) for p in points]
    assert xs == sorted(xs) and len(set(xs)) == 5
    assert ys == sorted(ys) and len(set(ys)) == 5  # falling loss is drawn lower each save
    vertices = svg.find("polyline", "series").attrs["points"].split()
    assert vertices == ["%s,%s" % (p.attrs["cx"], p.attrs["cy"]) for p in points]
    assert "5 of 6 saves" in dom.find("figcaption").text()

    # Drawn, not just present in the markup: the line and dots are on screen.
    png = screenshot(html_file, tmp)
    assert png.stat().st_size > 5000, png.stat().st_size
    width, height, pixels = png_pixels(png)
    assert (width, height) == (720, 420)
    assert count_color(pixels, SERIES_RGB) > 300


@pytest.mark.flow
def test_card_of_a_training_task_with_retention_and_a_retry_in_chromium(flow_env):
    """30 saves with keep_last=3 and a crash after 12: the card still plots every save (the
    metrics log), marks where the retry started and the best points, draws the loss on a log
    axis and shows the newest 20 saves, the best one and how many more there are."""
    from metaflow.cards import get_cards

    env, tmp = flow_env
    result = run_flow(FLOWS / "card_training_flow.py", env, tmp)
    task = single_task(result.run, "train")
    assert task.data.started_at == 12  # the retry resumed after attempt 0's 12 saves
    # One card per attempt (Metaflow gives each attempt's @card its own id): attempt 0's last
    # live render says it failed; the final attempt's card is the one without that line.
    htmls = [c.get() for c in get_cards(task, type="checkpoint")]
    assert len(htmls) == 2
    failed = [h for h in htmls if 'data-task-status="failed"' in h]
    final = [h for h in htmls if "data-task-status=" not in h]
    assert len(failed) == 1 and len(final) == 1, [h[:300] for h in htmls]
    html_file = tmp / "training.html"
    html_file.write_text(final[0], encoding="utf-8")
    dom = browser_dom(html_file, tmp)
    assert_self_contained(dom)
    losses = [10.0 * 0.8**i for i in range(30)]
    accuracies = [round(0.9 - 0.01 * abs(i - 6), 4) for i in range(30)]

    # Two metrics, one plot each (step is a counter, not a metric), every save on both.
    acc_svg, loss_svg = dom.find_all("svg", "plot")
    assert (acc_svg.attrs["data-metric"], loss_svg.attrs["data-metric"]) == ("accuracy", "loss")
    loss_points = loss_svg.find_all("circle", "point")
    acc_points = acc_svg.find_all("circle", "point")
    assert [float(p.attrs["data-y"]) for p in loss_points] == pytest.approx(losses)
    assert [float(p.attrs["data-y"]) for p in acc_points] == pytest.approx(accuracies)
    assert [p.attrs["data-attempt"] for p in loss_points] == ["0"] * 12 + ["1"] * 18
    # keep_last=3 and keep_best kept 4 checkpoints; the other 26 points are pruned saves.
    kept = [int(p.attrs["data-order"]) for p in loss_points if p.attrs["data-kept"] == "true"]
    assert kept == [7, 28, 29, 30]
    assert len(listed(task)) == 4

    # The loss falls almost three decades: log axis, ticks at powers of ten.
    assert (loss_svg.attrs["data-scale"], acc_svg.attrs["data-scale"]) == ("log", "linear")
    ticks = [t.text() for t in loss_svg.find_all("text", "y-tick")]
    assert ticks == ["0.01", "0.1", "1", "10"]
    ys = [float(p.attrs["cy"]) for p in loss_points]
    steps = [b - a for a, b in zip(ys, ys[1:])]
    assert max(steps) - min(steps) < 0.05  # exponential decay is a straight line on it

    # Where attempt 1 started: one dashed marker at save 13 on each plot.
    for svg in (loss_svg, acc_svg):
        (marker,) = svg.find_all("line", "attempt-marker")
        assert marker.attrs["data-attempt"] == "1"
        x13 = next(p for p in svg.find_all("circle", "point") if p.attrs["data-order"] == "13")
        assert float(marker.attrs["x1"]) == pytest.approx(float(x13.attrs["cx"]), abs=0.1)
        assert svg.find("text", "attempt-label").text() == "attempt 1"
        assert len(svg.find_all("polyline", "series")) == 2  # one line per attempt

    # Best points: accuracy by the step's keep_best (max, save 7), loss as a loss (min, 30).
    acc_best = acc_svg.find("circle", "best-marker")
    assert (acc_best.attrs["data-order"], acc_best.attrs["data-mode"]) == ("7", "max")
    loss_best = loss_svg.find("circle", "best-marker")
    assert (loss_best.attrs["data-order"], loss_best.attrs["data-mode"]) == ("30", "min")
    assert "from keep_best" in acc_svg.parent.find("figcaption").text()

    # Table: saves 30..11 (newest 20), a row counting the 9 not shown, then the best save 7.
    table = dom.find("table", "checkpoints")
    rows = table.find_all("tr", "checkpoint")
    assert [int(r.attrs["data-order"]) for r in rows] == list(range(30, 10, -1)) + [7]
    assert table.find("tr", "more").attrs["data-count"] == "9"
    assert "9 more saves not shown" in table.find("tr", "more").text()
    assert rows[-1].attrs["data-best"] == "accuracy" and rows[0].attrs["data-best"] == "loss"
    assert [r.find("td", "state").text() for r in rows[:4]] == [
        "kept" + "best loss",
        "kept",
        "kept",
        "pruned",
    ]
    assert rows[-1].find("td", "attempt").text() == "0"
    summary = dom.find("p", "summary").text()
    assert "30 saves; 4 checkpoints kept" in summary and "26 pruned" in summary

    # Drawn: both metrics' lines, the best rings and the retry marker are on screen.
    png = screenshot(html_file, tmp, size="720,820")
    width, height, pixels = png_pixels(png)
    assert (width, height) == (720, 820)
    # (About half of what Chromium draws exactly in each colour; anti-aliased edges aside.)
    assert count_color(pixels, (0x09, 0x69, 0xDA)) > 300  # accuracy line and points
    assert count_color(pixels, (0xBC, 0x4C, 0x00)) > 300  # loss line and points
    assert count_color(pixels, (0xD4, 0xA7, 0x2C)) > 80  # the two best rings
    assert count_color(pixels, (0x6E, 0x77, 0x81)) > 100  # the two attempt markers


def listed(task) -> list:
    from metaflow import Checkpoint, get_namespace, namespace

    previous = get_namespace()
    namespace(None)
    try:
        return Checkpoint().list(task.pathspec)
    finally:
        namespace(previous)


# ------------------------------------------------------------------------------- renderer


def test_card_type_is_registered_with_metaflow():
    from metaflow.plugins import CARDS as METAFLOW_CARDS

    registered = checkpoint_card.CARDS
    assert registered == [CheckpointCard]
    assert [c for c in METAFLOW_CARDS if c.type == "checkpoint"] == [CheckpointCard]


def test_no_numeric_metadata_shows_a_note_and_no_plot():
    refs = newest_first(
        ref(1, {"stage": "warmup", "ok": True}),
        ref(2, {"stage": "train", "ok": False}),
        ref(3, {}),
    )
    dom = parse_html(render_checkpoints(refs, pathspec="F/1/train/2"))
    assert dom.find_all("svg") == []
    assert "No numeric metadata to plot." in dom.find("p", "note").text()
    assert len(dom.find_all("tr", "checkpoint")) == 3


def test_a_metric_nobody_has_shows_a_note_and_no_plot():
    refs = newest_first(ref(1, {"loss": 1.0}), ref(2, {"loss": 0.5}))
    dom = parse_html(render_checkpoints(refs, pathspec="F/1/train/2", metric="accuracy"))
    assert dom.find_all("svg") == []
    assert "accuracy" in dom.find("p", "no-values").text()
    assert "metric='accuracy'; numeric fields: loss." in dom.find("p", "unknown-fields").text()


def test_without_a_metric_option_every_mostly_numeric_field_but_counters_is_plotted():
    refs = newest_first(
        ref(1, {"name": "a", "lr": "0.1", "acc": 0.5, "loss": 3.0, "step": 0, "x": 1}),
        ref(2, {"name": "b", "acc": 0.7, "loss": 2.0, "step": 5, "x": None}),
        ref(3, {"name": "c", "loss": 1.0, "step": 9}),  # acc in 2 of 3 checkpoints: "most"
    )
    dom = parse_html(render_checkpoints(refs, pathspec="F/1/train/2"))
    # step never decreases and is an integer: a counter, not plotted; x is in 1 of 3 saves.
    svgs = dom.find_all("svg", "plot")
    assert [svg.attrs["data-metric"] for svg in svgs] == ["acc", "loss"]
    acc = [float(p.attrs["data-y"]) for p in svgs[0].find_all("circle", "point")]
    assert acc == [0.5, 0.7]
    # One colour per metric, the first the card's accent colour.
    colours = [svg.find("polyline", "series").attrs["style"] for svg in svgs]
    assert colours == ["stroke:#0969da", "stroke:#bc4c00"]
    # Only counters: they are plotted after all.
    only = parse_html(render_checkpoints(newest_first(ref(1, {"epoch": 1})), pathspec="F/1/t/2"))
    assert only.find("svg", "plot").attrs["data-metric"] == "epoch"


def test_x_option_uses_a_metadata_field_for_the_x_axis():
    refs = newest_first(
        ref(1, {"loss": 4.0, "epoch": 10}),
        ref(2, {"loss": 2.0}),  # no epoch: not plotted
        ref(3, {"loss": 1.0, "epoch": 30}),
        ref(4, {"loss": 0.5, "epoch": 40}),
    )
    dom = parse_html(render_checkpoints(refs, pathspec="F/1/train/2", metric="loss", x="epoch"))
    svg = dom.find("svg", "plot")
    assert svg.find("text", "x-label").text() == "epoch"
    points = plot_points(dom)
    assert [(float(p.attrs["data-x"]), float(p.attrs["data-y"])) for p in points] == [
        (10.0, 4.0),
        (30.0, 1.0),
        (40.0, 0.5),
    ]
    # x positions follow the epoch values, not the save order: 10 -> 30 is twice 30 -> 40.
    x0, x1, x2 = (float(p.attrs["cx"]) for p in points)
    assert x1 - x0 == pytest.approx(2 * (x2 - x1), rel=1e-3)
    assert "3 of 4 saves" in dom.find("figcaption").text()
    # The x field itself is never picked as the metric.
    auto = parse_html(render_checkpoints(refs, pathspec="F/1/train/2", x="epoch"))
    assert auto.find("svg", "plot").attrs["data-metric"] == "loss"


def test_user_strings_are_escaped_and_never_run_in_the_browser(tmp_path):
    evil = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'">'
    refs = newest_first(
        ref(1, {"loss": 1.0, "note": evil}),
        ref(2, {'<script>alert("k")</script>': 2.0, "loss": 0.5}, name="a<b>"),
    )
    text = render_checkpoints(refs, pathspec="F/1/<i>step</i>/2", metric='"><script>x</script>')
    assert "<script>" not in text and "<img" not in text and "<i>" not in text

    html_file = tmp_path / "evil.html"
    html_file.write_text(text, encoding="utf-8")
    dom = browser_dom(html_file, tmp_path)
    assert_self_contained(dom)
    assert dom.find("title").text() == "Checkpoints of F/1/<i>step</i>/2"
    assert dom.find("h1").text() == "Checkpoints of F/1/<i>step</i>/2"
    rows = dom.find_all("tr", "checkpoint")
    note = rows[1].find_all("code", "kv")[1]
    assert note.attrs["title"] == "note=" + evil  # full value; the cell shows 80 characters
    assert note.text() == ("note=" + evil)[:79] + "\u2026"
    assert rows[0].find("td", "name").text() == "a<b>"
    assert rows[0].find_all("code", "kv")[0].text() == '<script>alert("k")</script>=2'


def _fake_client(monkeypatch, list_impl):
    class FakeCheckpoint:
        def list(self, target, **kwargs):
            return list_impl(target)

    monkeypatch.setattr(metaflow, "Checkpoint", FakeCheckpoint)


class _Task:
    pathspec = "F/1/train/2"


def test_card_lists_the_tasks_checkpoints_in_every_namespace(monkeypatch):
    from metaflow import get_namespace, namespace

    seen = []

    def listing(target):
        seen.append((target, get_namespace()))
        return newest_first(ref(1, {"acc": 0.1, "epoch": 1}), ref(2, {"acc": 0.2, "epoch": 2}))

    _fake_client(monkeypatch, listing)
    namespace("user:someone")
    try:
        card = CheckpointCard(options={"metric": "acc", "x": "epoch"})
        dom = parse_html(card.render(_Task()))
        assert get_namespace() == "user:someone"  # restored
    finally:
        namespace(None)
    assert seen == [("F/1/train/2", None)]
    svg = dom.find("svg", "plot")
    assert (svg.attrs["data-metric"], svg.find("text", "x-label").text()) == ("acc", "epoch")
    assert len(plot_points(dom)) == 2


def test_a_listing_error_is_shown_in_the_card_not_raised(monkeypatch):
    from metaflow import get_namespace, namespace

    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import StorageError

    def listing(target):
        raise StorageError("store unreachable: <timeout>")

    _fake_client(monkeypatch, listing)
    namespace("user:someone")
    try:
        dom = parse_html(CheckpointCard().render(_Task()))
        assert get_namespace() == "user:someone"
    finally:
        namespace(None)
    message = dom.find("p", "error").text()
    assert "F/1/train/2" in message
    assert "StorageError: store unreachable: <timeout>" in message
    assert dom.find_all("table") == [] and dom.find_all("svg") == []


def test_a_task_without_checkpoints_says_so():
    dom = parse_html(render_checkpoints([], pathspec="F/1/train/2"))
    assert "saved no checkpoints" in dom.find("p", "note").text()
    assert dom.find_all("table") == []


def test_options_must_be_a_dict():
    with pytest.raises(TypeError, match="options must be a dict"):
        CheckpointCard(options="loss")


# ------------------------------------------------------------------------------- metrics log


def entry(order: int, metrics: dict, attempt: int = 0, best=(), name: str = "mfchckpt"):
    """The metrics log's entry of the save ``ref(order, ...)`` stands for."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.metrics_log import (
        MetricsEntry,
    )

    return MetricsEntry(
        key="manifests/ns/F/train/_/1/2/%013d-0-%06d-L-id%d-%s.json" % (order, order, order, name),
        id="id%d" % order,
        name=name,
        attempt=attempt,
        created_ms=order,
        seq=order,
        latest=True,
        metrics=metrics,
        best=tuple(best),
    )


def test_saves_retention_pruned_are_plotted_from_the_log_and_shown_as_pruned():
    log = [entry(i, {"loss": 10.0 - i}) for i in range(1, 11)]
    refs = newest_first(*(ref(i, {"loss": 10.0 - i, "note": "kept"}) for i in (8, 9, 10)))
    dom = parse_html(render_checkpoints(refs, pathspec="F/1/train/2", log=log))
    points = plot_points(dom)
    assert [float(p.attrs["data-y"]) for p in points] == [10.0 - i for i in range(1, 11)]
    assert [p.attrs["data-kept"] for p in points] == ["false"] * 7 + ["true"] * 3
    assert all("pruned" in p.attrs["class"].split() for p in points[:7])
    rows = dom.find_all("tr", "checkpoint")
    assert [int(r.attrs["data-order"]) for r in rows] == list(range(10, 0, -1))
    states = [r.find("td", "state").text() for r in rows[:4]]
    assert states == ["keptbest loss", "kept", "kept", "pruned"]
    # A pruned save shows what the log has; a kept one its whole metadata and size.
    assert [c.text() for c in rows[3].find_all("code", "kv")] == ["loss=3"]
    assert rows[3].find("td", "size").text() == ""
    assert [c.text() for c in rows[0].find_all("code", "kv")] == ["loss=0", "note=kept"]
    assert "10 saves; 3 checkpoints kept" in dom.find("p", "summary").text()


def test_a_checkpoint_missing_from_the_log_is_still_plotted_in_its_place():
    log = [entry(1, {"loss": 3.0}), entry(3, {"loss": 1.0})]  # save 2's log write failed
    refs = newest_first(ref(2, {"loss": 2.0}), ref(3, {"loss": 1.0}))
    dom = parse_html(render_checkpoints(refs, pathspec="F/1/train/2", log=log))
    assert [float(p.attrs["data-y"]) for p in plot_points(dom)] == [3.0, 2.0, 1.0]
    assert [p.attrs["data-kept"] for p in plot_points(dom)] == ["false", "true", "true"]


def test_a_thousand_saves_table_shows_the_newest_20_the_best_and_how_many_more():
    accuracy = [round(0.5 + 0.4 * (1 - abs(i - 100) / 900), 6) for i in range(1, 1001)]
    log = [
        entry(i, {"loss": 100.0 / i, "accuracy": accuracy[i - 1]}, best=[("accuracy", "max")])
        for i in range(1, 1001)
    ]
    refs = newest_first(ref(100, {}), ref(999, {}), ref(1000, {}))
    dom = parse_html(render_checkpoints(refs, pathspec="F/1/train/2", log=log))
    svgs = dom.find_all("svg", "plot")
    assert [len(s.find_all("circle", "point")) for s in svgs] == [1000, 1000]
    rows = dom.find_all("tr", "checkpoint")
    assert [int(r.attrs["data-order"]) for r in rows] == list(range(1000, 980, -1)) + [100]
    more = dom.find("tr", "more")
    assert more.attrs["data-count"] == "979" and "979 more saves not shown" in more.text()
    assert rows[-1].attrs["data-best"] == "accuracy"
    assert "best accuracy" in rows[-1].find("td", "state").text()
    # The loss's best (lowest, the newest) is already among the newest rows: not repeated.
    assert rows[0].attrs["data-best"] == "loss"


def test_log_scale_only_for_positive_values_spanning_two_decades():
    def scale(values):
        log = [entry(i, {"m": v}) for i, v in enumerate(values, start=1)]
        dom = parse_html(render_checkpoints([ref(1, {})], pathspec="F/1/t/2", log=log))
        svg = dom.find("svg", "plot")
        return svg.attrs["data-scale"], [t.text() for t in svg.find_all("text", "y-tick")]

    assert scale([1000.0, 10.0, 1.0]) == ("log", ["1", "10", "100", "1000"])
    assert scale([0.5, 0.004]) == ("log", ["0.001", "0.01", "0.1", "1"])
    assert scale([1.0, 50.0])[0] == "linear"  # under two decades
    assert scale([-1000.0, -1.0, -0.001])[0] == "linear"  # negative: no log axis
    assert scale([0.0, 1.0, 1000.0])[0] == "linear"  # zero has no logarithm
    wide = scale([10.0**k for k in range(-12, 12)])  # 23 decades: every second one labelled
    assert wide == (
        "log",
        [
            "1e-12",
            "1e-10",
            "1e-08",
            "1e-06",
            "0.0001",
            "0.01",
            "1",
            "100",
            "10000",
            "1e+06",
            "1e+08",
            "1e+10",
            "1e+12",
        ],
    )


def test_one_save_is_one_point_in_a_visible_range():
    log = [entry(1, {"loss": 0.25})]
    dom = parse_html(render_checkpoints([ref(1, {"loss": 0.25})], pathspec="F/1/t/2", log=log))
    (point,) = plot_points(dom)
    svg = dom.find("svg", "plot")
    assert 72 < float(point.attrs["cx"]) < 620 and 24 < float(point.attrs["cy"]) < 228
    assert svg.find_all("line", "attempt-marker") == []
    assert svg.find("circle", "best-marker").attrs["data-order"] == "1"  # a loss: min


def test_a_metric_that_is_always_null_is_not_plotted():
    log = [entry(i, {"loss": None, "step": i}) for i in range(1, 4)]  # NaN stored as null
    refs = newest_first(ref(3, {"loss": None, "step": 3}))
    asked = parse_html(render_checkpoints(refs, pathspec="F/1/t/2", log=log, metric="loss"))
    assert asked.find_all("svg") == []
    assert "No save has a finite loss to plot." in asked.find("p", "no-values").text()
    auto = parse_html(render_checkpoints(refs, pathspec="F/1/t/2", log=log))
    assert [s.attrs["data-metric"] for s in auto.find_all("svg", "plot")] == ["step"]


def test_each_attempt_after_the_first_gets_a_marker_where_it_started():
    log = [entry(i, {"acc": i / 10}, attempt=a) for i, a in enumerate([0, 0, 1, 1, 1, 2], 1)]
    dom = parse_html(render_checkpoints([ref(6, {})], pathspec="F/1/t/2", log=log))
    svg = dom.find("svg", "plot")
    markers = svg.find_all("line", "attempt-marker")
    assert [m.attrs["data-attempt"] for m in markers] == ["1", "2"]
    starts = {p.attrs["data-order"]: float(p.attrs["cx"]) for p in plot_points(dom)}
    assert [float(m.attrs["x1"]) for m in markers] == pytest.approx([starts["3"], starts["6"]])
    assert [t.text() for t in svg.find_all("text", "attempt-label")] == ["attempt 1", "attempt 2"]
    lines = svg.find_all("polyline", "series")
    assert [len(pl.attrs["points"].split()) for pl in lines] == [2, 3, 1]
    assert svg.find_all("circle", "best-marker") == []  # acc: higher is not always better


def test_the_best_point_follows_keep_best_then_the_best_option_then_loss_names():
    log = [entry(i, {"loss": float(i), "acc": i / 10, "f1": 1 - i / 10}) for i in (1, 2, 3)]
    refs = [ref(3, {})]

    def bests(**kwargs):
        dom = parse_html(render_checkpoints(refs, pathspec="F/1/t/2", **kwargs))
        return {
            s.attrs["data-metric"]: (m.attrs["data-order"], m.attrs["data-mode"])
            for s in dom.find_all("svg", "plot")
            for m in s.find_all("circle", "best-marker")
        }

    assert bests(log=log) == {"loss": ("1", "min")}  # only the loss is unambiguous
    ranked = [entry(e.created_ms, e.metrics, best=[("loss", "max")]) for e in log]
    assert bests(log=ranked) == {"loss": ("3", "max")}  # the step's keep_best wins
    assert bests(log=log, best=["acc:max", "f1:min"]) == {
        "loss": ("1", "min"),
        "acc": ("3", "max"),
        "f1": ("3", "min"),
    }
    with pytest.raises(TypeError, match="best='acc:higher'"):
        CheckpointCard(options={"best": "acc:higher"})


def test_a_log_that_cannot_be_read_leaves_the_listing_and_says_so():
    refs = newest_first(ref(1, {"loss": 2.0}), ref(2, {"loss": 1.0}))
    dom = parse_html(
        render_checkpoints(refs, pathspec="F/1/t/2", log=None, log_error="StorageError: denied")
    )
    assert "StorageError: denied" in dom.find("p", "log-error").text()
    assert len(plot_points(dom)) == 2


def test_render_reads_the_metrics_log_from_the_store_of_the_listed_checkpoints(tmp_path):
    from metaflow_extensions.checkpointing.plugins.cards.checkpoint_card.card import read_log
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.layout import metrics_key

    root = tmp_path / "store"
    key = "manifests/ns/F/train/_/1/2/%013d-0-%06d-L-id%d-mfchckpt.json" % (5, 5, 5)
    path = root / metrics_key(key)
    path.parent.mkdir(parents=True)
    path.write_text('{"format": "metaflow-checkpointing-metrics/1", "metrics": {"loss": 1.5}}')
    entries, error = read_log([ref(9, {}, root=str(root))])
    assert error is None and [(e.key, e.metrics) for e in entries] == [(key, {"loss": 1.5})]
    entries, error = read_log([ref(9, {}, root="")])
    assert entries is None and "CheckpointConfigError" in error


def test_card_options_name_several_metrics_and_their_best(monkeypatch):
    listing = newest_first(
        ref(1, {"acc": 0.2, "loss": 3.0, "lr": 0.1}), ref(2, {"acc": 0.6, "loss": 2.0, "lr": 0.1})
    )
    _fake_client(monkeypatch, lambda target: listing)
    card = CheckpointCard(options={"metric": ["lr", "acc"], "best": "acc:max"})
    dom = parse_html(card.render(_Task()))
    svgs = dom.find_all("svg", "plot")
    assert [s.attrs["data-metric"] for s in svgs] == ["lr", "acc"]
    assert svgs[0].find_all("circle", "best-marker") == []
    assert svgs[1].find("circle", "best-marker").attrs["data-order"] == "2"


def test_a_parallel_step_s_card_plots_rank_0_and_says_how_many_of_other_ranks_are_left_out():
    """Each rank of a @parallel step saved its own (not sharded) checkpoints under one task:
    rank 1's must not join rank 0's series nor be its best (only rank 0 logs its saves)."""
    rank0 = {"node": 0, "local": 0}
    log = [entry(i, {"loss": 1.0 / i}) for i in (1, 3, 5)]
    refs = newest_first(
        ref(1, {"loss": 1.0}, writer=rank0),
        ref(2, {"loss": 0.001}, writer={"node": 1, "local": 0}),
        ref(3, {"loss": 1.0 / 3}, writer=rank0),
        ref(4, {"loss": 0.0001}, writer={"node": 0, "local": 1}),
        ref(5, {"loss": 0.2}, writer=None, sharded=True),  # every rank wrote a part: rank 0's
    )
    dom = parse_html(render_checkpoints(refs, pathspec="F/1/train/2", log=log))
    assert [float(p.attrs["data-y"]) for p in plot_points(dom)] == [1.0, 1.0 / 3, 0.2]
    rows = dom.find_all("tr", "checkpoint")
    assert [int(r.attrs["data-order"]) for r in rows] == [3, 2, 1]
    assert rows[0].attrs["data-best"] == "loss"  # not rank 1's 0.001
    note = dom.find("p", "other-writers")
    assert note.attrs["data-count"] == "2"
    assert "2 checkpoints saved by other writers" in note.text()
    assert "metaflow checkpoint list F/1/train/2" in note.text()
    assert "3 checkpoints" in dom.find("p", "summary").text()


def test_the_table_rounds_floats_as_the_cli_does_and_the_tooltip_keeps_every_digit():
    refs = [ref(1, {"lr": 4.23911582752162e-05, "loss": 0.30000000000000004, "hist": [0.123456]})]
    dom = parse_html(render_checkpoints(refs, pathspec="F/1/t/2"))
    cells = dom.find("td", "metadata").find_all("code", "kv")
    assert [c.text() for c in cells] == ["lr=4.239e-05", "loss=0.3", "hist=[0.1235]"]
    assert cells[0].attrs["title"] == "lr=4.23911582752162e-05"


def test_metrics_past_the_plot_limit_and_option_typos_are_named_in_the_card():
    names = ["m%02d" % i for i in range(12)]
    refs = newest_first(*(ref(i, {n: float(i + j) for j, n in enumerate(names)}) for i in (1, 2)))
    auto = parse_html(render_checkpoints(refs, pathspec="F/1/t/2"))
    assert len(auto.find_all("svg", "plot")) == 6
    note = auto.find("p", "left-out-metrics")
    assert "Plotted 6 of 12 metrics (not plotted: m06, m07, m08, m09, m10, m11)" in note.text()
    assert "metric=[...]" in note.text()
    assert auto.find_all("p", "unknown-fields") == []

    refs = newest_first(ref(1, {"loss": 1.0, "step": 1, "tag": "a"}), ref(2, {"loss": 0.5}))
    typo = parse_html(
        render_checkpoints(refs, pathspec="F/1/t/2", metric=["los", "loss"], x="epoc")
    )
    text = typo.find("p", "unknown-fields").text()
    assert "metric='los', x='epoc'" in text and "numeric fields: loss, step" in text
    assert typo.find_all("p", "left-out-metrics") == []
