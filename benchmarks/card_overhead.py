"""Per-task cost of the ``checkpoint`` card: no card, the final card only, the live card.

A small flow (``start -> train -> end``; ``train`` saves a 64 KiB checkpoint ``--saves`` times,
``--gap`` seconds apart) is run ``--runs`` times per variant with ``python flow.py run`` in an
isolated environment (own ``METAFLOW_HOME``, local datastore and metadata, as
``tests/conftest.py``'s ``flow_environment``):

* ``none``: ``@checkpoint`` alone;
* ``final``: ``@card(type="checkpoint")`` with the live card switched off in the flow's
  processes (the card as it was before it went live: one render when the task ends);
* ``live``: ``@card(type="checkpoint", refresh_interval=1)``: the task renders the card after
  its saves, at most once a second, while it runs.

Printed per variant (medians over the runs): the wall time of the whole run; the time inside
``train``'s code (its saves and gaps: what the live card's renders add to ``save()``); the
time from the end of ``train``'s code to the start of ``end``'s (the task's end: artifacts,
decorator hooks, the final card render Metaflow waits for, process exit, scheduling); the
runtime renders ``train`` asked for while it ran.  It measures, it does not assert.

    .venv/bin/python benchmarks/card_overhead.py            # 5 runs per variant, ~3 minutes
    .venv/bin/python benchmarks/card_overhead.py --runs 2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOW = """\
import json, os, time

VARIANT = os.environ["MFCKPT_CARD_VARIANT"]
if VARIANT == "final":
    # The card without its live part: the task never attaches a LiveCard.
    from metaflow_extensions.checkpointing.plugins.checkpointing.task import card_live

    card_live.step_has_card = lambda step_name: False

from metaflow import FlowSpec, card, checkpoint, current, step
from metaflow.plugins.cards.card_creator import CardCreator

RENDERS = {}  # card subprocesses asked for in this process, by mode
_create = CardCreator.create


def _counted(self, *args, **kwargs):
    mode = kwargs.get("mode", "render")
    RENDERS[mode] = RENDERS.get(mode, 0) + 1
    return _create(self, *args, **kwargs)


CardCreator.create = _counted

SAVES = int(os.environ["MFCKPT_CARD_SAVES"])
GAP = float(os.environ["MFCKPT_CARD_GAP"])


def _decorate(fn):
    fn = checkpoint(fn)
    if VARIANT == "final":
        fn = card(type="checkpoint")(fn)
    elif VARIANT == "live":
        fn = card(type="checkpoint", refresh_interval=1)(fn)
    return fn


class CardOverheadFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @_decorate
    @step
    def train(self):
        path = os.path.join(current.checkpoint.directory, "w.bin")
        t0 = time.perf_counter()
        for i in range(SAVES):
            with open(path, "wb") as f:
                f.write(os.urandom(64 * 1024))
            current.checkpoint.save(metadata={"loss": 1.0 / (i + 1), "step": i})
            time.sleep(GAP)
        self.body_seconds = time.perf_counter() - t0
        self.body_end = time.time()
        self.runtime_renders = RENDERS.get("render_runtime", 0)
        self.next(self.end)

    @step
    def end(self):
        self.end_start = time.time()


if __name__ == "__main__":
    CardOverheadFlow()
"""

PROBE = """\
import json
from metaflow import Flow, namespace

namespace(None)
run = Flow("CardOverheadFlow").latest_run
task = run["train"].task
print(json.dumps({
    "after_seconds": run["end"].task.data.end_start - task.data.body_end,
    "body_seconds": task.data.body_seconds,
    "runtime_renders": task.data.runtime_renders,
}))
"""

VARIANTS = ("none", "final", "live")


def _env(work: Path, variant: str, saves: int, gap: float) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    env.update(
        USER="bench",
        METAFLOW_USER="bench",
        METAFLOW_HOME=str(work / "home"),
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(work),
        METAFLOW_DEFAULT_METADATA="local",
        METAFLOW_DEFAULT_DATASTORE="local",
        METAFLOW_CLIENT_CACHE_PATH=str(work / "cache"),
        PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        MFCKPT_CARD_VARIANT=variant,
        MFCKPT_CARD_SAVES=str(saves),
        MFCKPT_CARD_GAP=str(gap),
    )
    return env


def run_once(root: Path, variant: str, saves: int, gap: float) -> dict:
    """One run of the flow in its own directory; its timings."""
    work = Path(tempfile.mkdtemp(prefix="%s-" % variant, dir=root))
    (work / "home").mkdir()
    (work / "flow.py").write_text(FLOW)
    (work / "probe.py").write_text(PROBE)
    env = _env(work, variant, saves, gap)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "flow.py", "--no-pylint", "run"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit("%s run failed:\n%s" % (variant, (proc.stdout + proc.stderr)[-4000:]))
    probe = subprocess.run(
        [sys.executable, "probe.py"], cwd=work, env=env, capture_output=True, text=True
    )
    if probe.returncode != 0:
        raise SystemExit("probe failed:\n%s" % probe.stderr[-4000:])
    out = json.loads(probe.stdout.strip().splitlines()[-1])
    out["wall_seconds"] = wall
    cards = work / ".metaflow" / "mf.cards"
    out["card_files"] = len(list(cards.rglob("*.html"))) if cards.exists() else 0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per variant (default 5)")
    parser.add_argument("--saves", type=int, default=10, help="saves in the task (default 10)")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between saves (0.3)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="mfckpt-card-bench-"))
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    try:
        for _ in range(args.runs):  # interleaved: drift on the machine hits every variant
            for variant in VARIANTS:
                results[variant].append(run_once(root, variant, args.saves, args.gap))
    finally:
        if args.keep:
            print("work directory kept: %s" % root)
        else:
            shutil.rmtree(root, ignore_errors=True)

    def med(variant: str, field: str) -> float:
        return statistics.median(r[field] for r in results[variant])

    print(
        "\n%d runs per variant; train saves %d x 64 KiB, %.1f s apart; medians; "
        "Python %s, %d CPUs\n"
        % (args.runs, args.saves, args.gap, sys.version.split()[0], os.cpu_count() or 0)
    )
    print(
        "| variant | run wall (s) | vs none (s) | step code (s) | vs none (s) "
        "| task end (s) | vs none (s) | runtime renders |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for variant in VARIANTS:
        cells = []
        for field in ("wall_seconds", "body_seconds", "after_seconds"):
            value = med(variant, field)
            cells += ["%.2f" % value, "%+.2f" % (value - med("none", field))]
        cells.append("%g" % med(variant, "runtime_renders"))
        print("| %s | %s |" % (variant, " | ".join(cells)))
    print(
        "\nstep code: train's saves and their gaps (the live card's renders run in subprocesses "
        "Metaflow does not wait for);\ntask end: end of train's code to start of end's code "
        "(includes the final card render Metaflow waits for)."
    )


if __name__ == "__main__":
    main()
