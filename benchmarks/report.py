"""Run the benchmarks and rewrite the README's "Performance" section from what they measured.

    python benchmarks/report.py            # full sizes (``make bench-report``; over an hour)
    python benchmarks/report.py --quick    # smoke sizes: checks the pipeline, numbers are not final
    python benchmarks/report.py --skip bench_curves --skip bench_local_files
    python benchmarks/report.py --reuse    # a script with a run in benchmarks/results/: not rerun
    python benchmarks/report.py --adopt bench_curves.py=/tmp/c.json   # keep a run made by hand

Runs ``bench.py`` and ``bench_vs_reference.py`` (and ``bench_curves.py`` and
``bench_local_files.py`` when they exist and take ``--json``), each with ``--json``, keeps every
output under ``.bench/report/`` (JSON, printed tables, logs) and each full run's JSON, stamped
with its time, in ``benchmarks/results/`` (committed: the data behind the section, so that
``--reuse`` works in any checkout), and replaces what lies between the markers
``<!-- perf:begin -->`` and ``<!-- perf:end -->`` in README.md (the section is created before
"## Documentation" when the markers are missing) with: the machine (CPUs, RAM, kernel, CPU
model), the date, the command, the head-to-head table, ``bench.py``'s table, the local-files
table and the cost curves' growth rates, all measured by this run (with ``--reuse``, by the
kept runs; each is dated). A ``--quick`` run says so in the section's heading and keeps
nothing. A script that fails or is missing is named in the section, not silently left out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"
#: The JSON of the runs behind README.md's section, committed: ``--reuse`` reads it here, so
#: the section can be rebuilt (or one script rerun) in any checkout.
RESULTS = HERE / "results"
#: Key under which a kept JSON records when its run ended (file times do not survive a clone).
RUN_AT = "report_run_utc"

# (script, arguments of a full run, arguments of a --quick run)
SCRIPTS = [
    (
        "bench.py",
        ["--ext4-image", "48"],
        [
            "--size-mib",
            "64",
            "--small-files",
            "500",
            "--repeat",
            "1",
            "--overhead-runs",
            "2",
            "--latency-saves",
            "5",
            "--ext4-image",
            "8",
        ],
    ),  # fmt: skip
    ("bench_vs_reference.py", ["--ext4-image", "40"], ["--quick", "--ext4-image", "16"]),
    ("bench_curves.py", [], ["--quick"]),
    # A fresh journaled ext4 (loop image): see _benchutil.ext4_image.
    ("bench_local_files.py", ["--ext4-image", "48"], ["--quick", "--ext4-image", "8"]),
]


def log(msg: str) -> None:
    print("[report] %s" % msg, file=sys.stderr, flush=True)


def machine() -> str:
    """CPUs, RAM, kernel and CPU model of this machine, in one line."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown RAM"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = "%.1f GiB RAM" % (int(line.split()[1]) / (1 << 20))
    except OSError:
        pass
    return "%d CPUs (nproc), %s, Linux %s, %s" % (
        len(os.sched_getaffinity(0)),
        ram,
        platform.release(),
        model,
    )


def run_script(name: str, extra: list, out: Path) -> dict:
    """Run one benchmark with ``--json``; its JSON (None if it failed), stdout and status."""
    json_path = out / (Path(name).stem + ".json")
    cmd = [sys.executable, str(HERE / name), *extra, "--json", str(json_path)]
    log("running %s" % " ".join(cmd[1:]))
    proc = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True)
    (out / (Path(name).stem + ".out.md")).write_text(proc.stdout)
    (out / (Path(name).stem + ".err.log")).write_text(proc.stderr)
    if proc.returncode != 0 or not json_path.exists():
        log("%s failed (exit %d); see %s" % (name, proc.returncode, out))
        return {"status": "failed (exit %d)" % proc.returncode, "stdout": proc.stdout}
    return {"status": "ok", "stdout": proc.stdout, "json": json.loads(json_path.read_text())}


def keep(name: str, raw: dict, when: str, results: Path) -> None:
    """Keep a full run's JSON in ``results`` (committed), stamped with when it ran."""
    results.mkdir(parents=True, exist_ok=True)
    kept = dict(raw, **{RUN_AT: when})
    (results / (Path(name).stem + ".json")).write_text(json.dumps(kept, indent=1) + "\n")


def reused(name: str, results: Path) -> dict | None:
    """The kept run of ``name`` as :func:`main` records it, or None when none is kept."""
    kept = results / (Path(name).stem + ".json")
    if not kept.exists():
        return None
    raw = json.loads(kept.read_text())
    when = raw.get(RUN_AT) or datetime.datetime.fromtimestamp(
        kept.stat().st_mtime, datetime.timezone.utc
    ).strftime("%Y-%m-%d %H:%M UTC")
    return {"status": "ok (run %s)" % when, "json": raw}


def bench_table(raw: dict) -> str:
    """``bench.py``'s table, rebuilt from its raw JSON by its own code."""
    import bench

    args = Namespace(**raw["args"])
    big_bytes = max(1, args.size_mib * bench.MiB // bench.BIG_FILES) * bench.BIG_FILES
    return bench.build_table(raw, big_bytes, args).markdown()


def vs_table(raw: dict) -> str:
    """The head-to-head table, shortened to the columns that decide each row."""
    head = ("row", "ours", "theirs", "theirs/ours", "raw baseline", "peak RSS ours / theirs")
    head += ("result",)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    from bench import fmt_bytes
    from bench_vs_reference import time_cells

    for r in raw["rows"]:
        ours, theirs, base = time_cells(r)
        rss = "—"
        if "ours_rss" in r:
            rss = "%s / %s" % (fmt_bytes(r["ours_rss"]), fmt_bytes(r["theirs_rss"]))
        ratio = "—" if r.get("ratio") is None else "%.1f×" % r["ratio"]
        cells = (
            r["row"],
            ours,
            theirs,
            ratio,
            base,
            rss,
            "%s (%s)" % (r["verdict"], r["target"]),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bench_fs(results: dict) -> str:
    """Where bench.py's kept run worked (its JSON records its arguments)."""
    raw = (results.get("bench.py") or {}).get("json") or {}
    if (raw.get("args") or {}).get("ext4_image"):
        return "too"
    return "on the VM's root ext4, which has no journal"


def _baseline_slope(rate: dict, rates: list):
    """The slope of the raw baseline measured beside ``rate``'s series (``cp -r`` on the same
    side of a size curve, the bare listing of a list curve), or None."""
    series = rate["series"]
    if series.startswith(("cp -r", "raw_list")):
        return None
    if rate["curve"].startswith("size"):
        side = series.split()[0]  # "save" / "load"
        name = "cp -r %s-side time" % side
    elif rate["curve"].startswith("list") and "requests" not in series:
        name = "raw_list"
    else:
        return None
    for other in rates:
        if other["curve"] == rate["curve"] and other["series"] == name:
            return other["slope"]
    return None


def _growth(rate: dict, rates: list) -> str:
    """The verdict, saying so when the raw baseline beside it grows as fast or faster: the
    machine's growth (its disk, its memory; moto's listing), not the code's."""
    base = _baseline_slope(rate, rates)
    if base is None or rate["verdict"] != "WORSE THAN LINEAR" or rate["slope"] > base + 0.05:
        return rate["verdict"]
    return "%s, as the raw baseline beside it (%.2f)" % (rate["verdict"], base)


def section(results: dict, args, when: str) -> str:
    quick = " — quick run (smoke sizes, not the final figures)" if args.quick else ""
    command = "make bench-report" if not args.quick else "python benchmarks/report.py --quick"
    if getattr(args, "reuse", False):
        command = "python benchmarks/report.py --reuse%s" % (" --quick" if args.quick else "")
    parts = [
        BEGIN,
        "## Performance%s" % quick,
        "",
        "Measured on %s; section written %s by `%s` (`make bench-report` runs every script "
        "and rewrites it; with `--reuse`, from the runs dated below). Every number below is "
        "measured by those runs. The head-to-head and local-files rows ran in a fresh "
        "journaled ext4 (a loop image, `--ext4-image`), bench.py's %s. What each row means, "
        "the method and the other benchmarks are in [benchmarks/README.md](benchmarks/README.md)."
        % (machine(), when, command, _bench_fs(results)),
        "",
    ]
    parts += [
        "Scripts: %s." % "; ".join("%s %s" % (n, r["status"]) for n, r in results.items()),
        "",
    ]
    vs = results.get("bench_vs_reference.py", {})
    parts.append("### Head-to-head with metaflow-checkpoint 0.2.14")
    parts.append("")
    if vs.get("status", "").startswith("ok"):
        raw = vs["json"]
        local = raw["ours"].get("local", [])
        baselines = ""
        if any("cp_seconds" in r["save"]["dir"] for r in local):
            baselines = " Local raw baselines are timed in the same task just before each "
            baselines += "operation (median over our runs)"
            if all(r["save"]["dir"].get("raw_sampled") for r in local):
                baselines += ", beside the same memory sampler"
            baselines += "."
        parts += [
            "Same flows, same bytes, each package in its own venv; medians of %d runs. "
            "theirs/ours above 1: ours is faster. ¹ their load leaves links into their store, "
            "so their time includes reading every byte.%s" % (raw["args"]["repeat"], baselines),
            "",
            vs_table(raw),
        ]
    else:
        parts.append("Not measured: bench_vs_reference.py %s." % vs.get("status", "not run"))
    parts += ["", "### Speed and memory targets (bench.py)", ""]
    b = results.get("bench.py", {})
    if b.get("status", "").startswith("ok"):
        raw = b["json"]
        a = raw["args"]
        parts += [
            "%d × %d MiB in 16 files and %d × %d files of 4 KiB; medians."
            % (a["repeat"], a["size_mib"], a["repeat"], a["small_files"]),
            "",
            bench_table(raw),
        ]
    else:
        parts.append("Not measured: bench.py %s." % b.get("status", "not run"))
    parts += ["", "### Local files against cp -r (bench_local_files.py)", ""]
    lf = results.get("bench_local_files.py", {})
    if lf.get("status", "").startswith("ok"):
        import bench_local_files

        raw = lf["json"]
        parts += [
            "Store level, medians of %d rounds, wall time (CPU time); cp/ours above 1: ours is "
            "faster (target >= 0.8). Every byte is hashed (BLAKE3) on save and on load."
            % raw["repeat"],
            "",
            bench_local_files.table(raw["cases"], raw.get("flow") or {}),
        ]
    else:
        parts.append("Not measured: bench_local_files.py %s." % lf.get("status", "not run"))
    parts += ["", "### Cost curves: growth rates (bench_curves.py)", ""]
    cv = results.get("bench_curves.py", {})
    if cv.get("status", "").startswith("ok"):
        import contextlib
        import io

        import bench_curves

        with contextlib.redirect_stdout(io.StringIO()):  # its tables go to benchmarks/README
            rates = bench_curves.report(cv["json"])
        parts += [
            "Least-squares slope of log(cost) on log(size, count or tasks): 1 linear, 0 flat. "
            'Tables and plots: benchmarks/README.md, "Cost curves".',
            "",
            "| curve | series | slope | growth |",
            "|---|---|---:|---|",
        ]
        parts += [
            "| %s | %s | %.2f | %s |" % (r["curve"], r["series"], r["slope"], _growth(r, rates))
            for r in rates
        ]
    else:
        parts.append("Not measured: bench_curves.py %s." % cv.get("status", "not run"))
    parts.append(END)
    return "\n".join(parts)


def rewrite_readme(readme: Path, text: str) -> None:
    """Replace the marked section, or put it before "## Documentation" (else at the end)."""
    old = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _m: text, old, count=1)
    elif "\n## Documentation" in old:
        new = old.replace("\n## Documentation", "\n" + text + "\n\n## Documentation", 1)
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    readme.write_text(new)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke sizes (numbers not final)")
    p.add_argument("--skip", action="append", default=[], help="a script to leave out (stem)")
    p.add_argument("--out", default=str(REPO / ".bench" / "report"), help="outputs go here")
    p.add_argument("--readme", default=str(REPO / "README.md"))
    p.add_argument(
        "--reuse",
        action="store_true",
        help="use a script's kept JSON (--results, from an earlier run) instead of running it",
    )
    p.add_argument(
        "--results",
        default=str(RESULTS),
        help="where full runs' JSON is kept and --reuse reads it (default: benchmarks/results)",
    )
    p.add_argument(
        "--adopt",
        action="append",
        default=[],
        metavar="SCRIPT=JSON",
        help="keep the JSON of a run made by hand (e.g. bench_curves.py=/tmp/c.json, dated by "
        "the file's time) in --results, as if this script had run it; implies --reuse",
    )
    args = p.parse_args(argv)
    for item in args.adopt:
        name, _, path = item.partition("=")
        stem = Path(name).stem
        if stem not in {Path(n).stem for n, _f, _q in SCRIPTS} or not path:
            p.error(
                "--adopt %r: expected SCRIPT=JSON with SCRIPT one of %s"
                % (item, ", ".join(n for n, _f, _q in SCRIPTS))
            )
        raw_path = Path(path)
        ran = datetime.datetime.fromtimestamp(raw_path.stat().st_mtime, datetime.timezone.utc)
        keep(
            stem,
            json.loads(raw_path.read_text()),
            ran.strftime("%Y-%m-%d %H:%M UTC"),
            Path(args.results),
        )
        args.reuse = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results: dict = {}
    for name, full, quick in SCRIPTS:
        if Path(name).stem in args.skip or name in args.skip:
            continue
        if not (HERE / name).exists():
            log("%s is missing: skipped" % name)
            results[name] = {"status": "missing, skipped"}
            continue
        helptext = subprocess.run(
            [sys.executable, str(HERE / name), "--help"], capture_output=True, text=True
        ).stdout
        if "--json" not in helptext:
            log("%s has no --json option: skipped" % name)
            results[name] = {"status": "no --json option, skipped"}
            continue
        kept = reused(name, Path(args.results)) if args.reuse else None
        if kept is not None:
            log("%s: reusing its run in %s" % (name, args.results))
            results[name] = kept
            continue
        results[name] = run_script(name, quick if args.quick else full, out)
        if results[name]["status"] == "ok":
            results[name]["status"] = "ok (run %s)" % when
            if not args.quick:  # smoke numbers never replace a full run's
                keep(name, results[name]["json"], when, Path(args.results))
    rewrite_readme(Path(args.readme), section(results, args, when))
    log("README.md rewritten; outputs in %s" % out)
    ok = all(r["status"].startswith("ok") or "skipped" in r["status"] for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
