"""Distributed and long-running training targets: background saves, @parallel saves, SIGTERM.

    python benchmarks/bench_distributed.py                     # defaults: 1 GiB, 3 repeats
    python benchmarks/bench_distributed.py --size-mib 64 --repeat 2   # smoke run, ~1 minute
    python benchmarks/bench_distributed.py --skip-s3           # local datastore only

1. **Background save** (``bench_distributed_async_flow.py``): inside a real task, how long
   ``current.checkpoint.save(path=..., blocking=False)`` blocks the step (until it returns),
   how long the whole save takes (until ``handle.wait()``), and a blocking ``save()`` of a
   directory of the same shape, on the local datastore and with ``--datastore=s3`` against a
   moto server.  Baseline: ``cp -r`` of the same directory, run by the task right next to the
   background save (order rotated).  Targets: blocked ≤ 1.5× ``cp -r``; on S3, blocked ≤ 25% of
   the blocking save.
2. **@parallel save** (``bench_distributed_parallel_flow.py``): a gang of 2 ranks, each saving
   half of ``--size-mib`` (one checkpoint, a shard per rank), against one ``@checkpoint`` task
   saving all of it, local datastore.  Per rank: from the ``save()`` call to its return; the row
   shows the slower rank.  Target: ≤ 1.2× the single save.
3. **SIGTERM** (``bench_distributed_interrupt_flow.py``): a task with
   ``@checkpoint(save_on_interrupt=True)`` writes ``--state-mib`` of fresh state into
   ``current.checkpoint.directory`` and trains; this script sends SIGTERM to the task's pid and
   polls the store for the final checkpoint's manifest (written last, atomically: the commit).
   Target: committed ≤ 10 s after the signal.  Baseline: ``cp -r`` of that many bytes.

Data is written before any timing (page cache warm); every timed operation, ours and the
baselines, is preceded by ``_benchutil.prepare`` (sync and memory recycling) as in ``bench.py``.
Every time is a median over ``--repeat`` directories (equal bytes would be deduplicated, so each
save gets new ones).  Nothing here asserts: targets are printed, not enforced; the exit status
is non-zero only when something fails to run.  See benchmarks/README.md ("Distributed, async and
interruption").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _benchutil import MiB, prepare, recycle_size  # noqa: E402
from bench import (  # noqa: E402
    BIG_FILES,
    S3_ENV,
    MotoServer,
    Table,
    flow_environment,
    fmt_bytes,
    make_big,
    remove,
    run_flow,
    s3_client,
    time_cp,
)

ASYNC_FLOW = "bench_distributed_async_flow.py"
PARALLEL_FLOW = "bench_distributed_parallel_flow.py"
INTERRUPT_FLOW = "bench_distributed_interrupt_flow.py"
WORLD = 2
#: At most this many interrupted attempts per flow run (@retry allows times <= 4).
INTERRUPTS_PER_RUN = 4
ASYNC_VS_CP, ASYNC_VS_BLOCKING_S3, PARALLEL_VS_SINGLE, SIGTERM_SECONDS = 1.5, 0.25, 1.2, 10.0


def log(msg: str) -> None:
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def med(values) -> float:
    return statistics.median(values)


def loadavg() -> str:
    try:
        return "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "?"


# ===================================================================== 1. background saves
def async_bench(work: Path, tag: str, data: dict, env: dict, recycle: bool, top_args=()) -> dict:
    tmp = work / ("tmp-%s" % tag)  # the decorator's temp_dir_root: snapshots are written here
    tmp.mkdir()
    spec = {
        "out": str(work / ("async-%s.json" % tag)),
        "tiny": str(work / ("tiny-%s" % tag)),
        "async": [str(p) for p in data["a"]],
        "blocking": [str(p) for p in data["b"]],
        "recycle": recycle,
    }
    env = dict(env, MFCKPT_BENCH_SPEC=json.dumps(spec), MFCKPT_BENCH_TMP=str(tmp))
    seconds = run_flow(ASYNC_FLOW, env, work, top_args, logfile=work / ("flow-async-%s.log" % tag))
    result = json.loads(Path(spec["out"]).read_text())
    result["run_seconds"] = seconds
    remove(Path(spec["tiny"]))
    return result


# ===================================================================== 2. @parallel
def parallel_bench(work: Path, data: dict, recycle: bool, gang_poll=None) -> dict:
    sub = work / "parallel"
    sub.mkdir()
    spec = {
        "out": str(sub / "result"),
        "workdir": str(work),
        "tiny": str(sub / "tiny"),
        "barrier": str(sub / "barrier"),
        "world": WORLD,
        "single": [str(p) for p in data["a"]],
        "gang": [[str(p) for p in shares] for shares in data["gang"]],
        "recycle": recycle,
        "gang_poll": gang_poll,
    }
    env = dict(flow_environment(sub), MFCKPT_BENCH_SPEC=json.dumps(spec))
    seconds = run_flow(PARALLEL_FLOW, env, sub, logfile=work / "flow-parallel.log")
    out = {"run_seconds": seconds}
    out["single"] = json.loads(Path(spec["out"] + ".single.json").read_text())["saves"]
    ranks = [json.loads(Path(spec["out"] + ".rank-%d.json" % k).read_text()) for k in range(WORLD)]
    out["rounds"] = []
    for r in range(len(data["gang"])):
        per_rank = [rank["saves"][r] for rank in ranks]
        if len({s["key"] for s in per_rank}) != 1:
            raise RuntimeError("@parallel round %d: ranks returned different checkpoints" % r)
        out["rounds"].append(
            {
                "seconds": [s["seconds"] for s in per_rank],
                "start": [s["start"] for s in per_rank],
                "max": max(s["seconds"] for s in per_rank),
                "wall": max(s["end"] for s in per_rank) - min(s["start"] for s in per_rank),
                "start_skew": max(s["start"] for s in per_rank) - min(s["start"] for s in per_rank),
                "events": [s["events"] for s in per_rank],
                "bytes": sum(s["bytes"] for s in per_rank),
                "committed_size": per_rank[0]["size"],
                "committed_files": per_rank[0]["files"],
            }
        )
    remove(sub / "mf-local" / ".metaflow" / "mf.checkpointing")
    return out


# ===================================================================== 3. SIGTERM
def _wait_file(path: Path, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError("the interrupt flow exited (%d) before %s" % (proc.returncode, path))
        if time.monotonic() > deadline:
            raise RuntimeError("%s did not appear within %g s" % (path, timeout))
        time.sleep(0.01)
    return json.loads(path.read_text())


def _manifests(directory: Path, attempt: int) -> list:
    """Manifest files of ``attempt`` in a task's manifest directory (names start with
    ``<created ms>-<attempt>-``; temp files of the atomic write do not end in ``.json``)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [n for n in names if n.endswith(".json") and n.split("-")[1:2] == [str(attempt)]]


def _exited(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def interrupt_bench(work: Path, args, recycle: bool) -> dict:
    sub = work / "interrupt"
    sub.mkdir()
    state_bytes = args.state_mib * MiB // BIG_FILES * BIG_FILES
    attempts: list = []
    runs: list = []
    left, run_no = args.repeat, 0
    while left > 0:
        n = min(left, INTERRUPTS_PER_RUN)
        left -= n
        out = sub / ("run-%d" % run_no)
        out.mkdir()
        spec = {
            "out": str(out),
            "state_bytes": state_bytes,
            "files": BIG_FILES,
            "timeout": 600,
        }
        env = dict(
            flow_environment(sub),
            MFCKPT_BENCH_SPEC=json.dumps(spec),
            MFCKPT_BENCH_INTERRUPTS=str(n),
        )
        cmd = [sys.executable, str(HERE / INTERRUPT_FLOW), "--no-pylint", "run"]
        logfile = work / ("flow-interrupt-%d.log" % run_no)
        t_run = time.perf_counter()
        with open(logfile, "w") as logf:
            proc = subprocess.Popen(
                cmd, env=env, cwd=str(sub), stdout=logf, stderr=subprocess.STDOUT
            )
            try:
                for k in range(n):
                    ready = _wait_file(out / ("ready-%d.json" % k), proc, 300)
                    pid = ready["pid"]
                    task_dir = Path(ready["root"]) / ready["task_prefix"]
                    prepare(recycle_size(state_bytes), recycle, str(work))
                    before = set(_manifests(task_dir, k))
                    t_sig = time.time()
                    os.kill(pid, signal.SIGTERM)
                    committed = exited = None
                    manifest = None
                    deadline = t_sig + 120
                    while time.time() < deadline and (committed is None or exited is None):
                        now = time.time()
                        if committed is None:
                            new = set(_manifests(task_dir, k)) - before
                            if new:
                                committed, manifest = now - t_sig, sorted(new)[0]
                        if exited is None and _exited(pid):
                            exited = now - t_sig
                        time.sleep(0.002)
                    handler = out / ("handler-%d.json" % k)
                    handler_at = (
                        json.loads(handler.read_text())["time"] if handler.exists() else None
                    )
                    attempts.append(
                        {
                            "run": run_no,
                            "attempt": k,
                            "pid": pid,
                            "committed": committed,
                            "exited": exited,
                            "handler": None if handler_at is None else handler_at - t_sig,
                            "created": None
                            if manifest is None
                            else int(manifest.split("-")[0]) / 1000.0 - t_sig,
                            "manifest": manifest,
                            "stats": _stats_of(ready["root"], ready["task_prefix"], manifest),
                        }
                    )
                    log(
                        "SIGTERM %d/%d: committed after %s s"
                        % (len(attempts), args.repeat, "%.2f" % committed if committed else "—")
                    )
                rc = proc.wait(timeout=600)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        if rc != 0:
            tail = "\n".join(logfile.read_text().splitlines()[-40:])
            raise RuntimeError("the interrupt flow failed (exit %d):\n%s" % (rc, tail))
        runs.append(time.perf_counter() - t_run)
        for k in range(1, n + 1):
            loaded = json.loads((out / ("loaded-%d.json" % k)).read_text())
            attempts[len(attempts) - n + k - 1]["loaded_by_retry"] = loaded
        run_no += 1
    remove(sub / "mf-local" / ".metaflow" / "mf.checkpointing")
    return {"state_bytes": state_bytes, "attempts": attempts, "run_seconds": runs}


def _stats_of(root: str, task_prefix: str, manifest) -> dict:
    """Save statistics of the committed manifest (read as plain JSON, without the library)."""
    if manifest is None:
        return {}
    try:
        body = json.loads((Path(root) / task_prefix / manifest).read_text())
    except (OSError, ValueError):
        return {}
    return body.get("stats") or {}


# ===================================================================== table
def _s(seconds: float) -> str:
    return "%.2f s" % seconds


def _ms(seconds: float) -> str:
    return "%.0f ms" % (1000 * seconds)


def async_rows(t: Table, label: str, res: dict, judged_against: str) -> None:
    blocked = med([m["blocked"] for m in res["async"]])
    total = med([m["total"] for m in res["async"]])
    blocking = med([m["seconds"] for m in res["blocking"]])
    size = fmt_bytes(res["async"][0]["bytes"])
    cp_a = cp_b = med([m["seconds"] for m in res["cp"]])
    # Each background save has its cp -r right next to it: the median of the per-repeat ratios
    # cancels the machine's drift between repeats, which the ratio of the medians does not.
    paired = med([m["blocked"] / c["seconds"] for m, c in zip(res["async"], res["cp"])])
    if judged_against == "cp":
        t.add(
            "%s `save(blocking=False)` of %s: time the step is blocked" % (label, size),
            _s(blocked),
            "%s (cp -r)" % _s(cp_a),
            "%.2f× (paired; %.2f× of medians)" % (paired, blocked / cp_a),
            "≤ %.1f× cp -r" % ASYNC_VS_CP,
            paired <= ASYNC_VS_CP,
        )
        t.add(
            "%s `save(blocking=False)` of %s: blocked time vs blocking `save()`" % (label, size),
            _s(blocked),
            "%s (blocking save)" % _s(blocking),
            "%.0f%%" % (100 * blocked / blocking),
            "— (info)",
        )
    else:
        t.add(
            "%s `save(blocking=False)` of %s: time the step is blocked" % (label, size),
            _s(blocked),
            "%s (blocking save)" % _s(blocking),
            "%.0f%%" % (100 * blocked / blocking),
            "≤ %.0f%% of blocking save" % (100 * ASYNC_VS_BLOCKING_S3),
            blocked / blocking <= ASYNC_VS_BLOCKING_S3,
        )
        t.add(
            "%s `save(blocking=False)` of %s: blocked time vs cp -r" % (label, size),
            _s(blocked),
            "%s (cp -r)" % _s(cp_a),
            "%.2f× (paired; %.2f× of medians)" % (paired, blocked / cp_a),
            "— (info)",
        )
    t.add(
        "%s `save(blocking=False)` of %s: until `handle.wait()` (whole save)" % (label, size),
        _s(total),
        "%s (blocking save)" % _s(blocking),
        "%.2f×" % (total / blocking),
        "— (info)",
    )
    t.add(
        "%s blocking `save()` of %s" % (label, size),
        _s(blocking),
        "%s (cp -r)" % _s(cp_b),
        "%.2f×" % (blocking / cp_b),
        "— (info)",
    )


def parallel_rows(t: Table, res: dict, gang_poll=None) -> None:
    single = med([s["seconds"] for s in res["single"]])
    gang = med([r["max"] for r in res["rounds"]])
    nbytes = res["rounds"][0]["bytes"]
    t.add(
        "local @parallel save, %d ranks × %s: slower rank's `save()`%s"
        % (
            WORLD,
            fmt_bytes(nbytes // WORLD),
            "" if gang_poll is None else " (WHAT-IF: gang poll %g s)" % gang_poll,
        ),
        _s(gang),
        "%s (1 task saving %s)" % (_s(single), fmt_bytes(res["single"][0]["bytes"])),
        "%.2f×" % (gang / single),
        "≤ %.1f× single" % PARALLEL_VS_SINGLE,
        gang / single <= PARALLEL_VS_SINGLE,
    )
    phases = _gang_phases(res)
    t.add(
        "local @parallel save: where the time goes (medians)",
        "rank 0 / rank 1 save their shard %s / %s; rank 0 waits for the other part %s, "
        "commits %s; rank 1 waits for the commit %s"
        % (
            _ms(phases["upload"][0]),
            _ms(phases["upload"][1]),
            _ms(phases["wait"][0]),
            _ms(phases["commit"]),
            _ms(phases["wait"][1]),
        ),
        "—",
        "—",
        "— (info)",
    )


def _gang_phases(res: dict) -> dict:
    """Medians over rounds: each rank's own save until its part is written, the waits."""
    upload: list = [[] for _ in range(WORLD)]
    wait: list = [[] for _ in range(WORLD)]
    commit = []
    for rnd in res["rounds"]:
        for k, events in enumerate(rnd["events"]):
            start = rnd["start"][k]
            part = [e for e in events if e[0] == "part_written"]
            waits = [e for e in events if e[0] == "waited"]
            if part:
                upload[k].append(part[0][1] + part[0][2] - start)
            wait[k].append(sum(e[2] for e in waits))
            if k == 0 and waits:
                commit.append(rnd["seconds"][0] - (waits[-1][1] + waits[-1][2] - rnd["start"][0]))
    return {
        "upload": [med(u) if u else float("nan") for u in upload],
        "wait": [med(w) for w in wait],
        "commit": med(commit) if commit else float("nan"),
    }


def interrupt_rows(t: Table, res: dict, cp_state: list) -> None:
    attempts = res["attempts"]
    size = fmt_bytes(res["state_bytes"])
    done = [a["committed"] for a in attempts if a["committed"] is not None]
    cp = med(cp_state)
    if len(done) == len(attempts):
        value = med(done)
        t.add(
            "local SIGTERM mid-training → final checkpoint (%s of fresh state) committed" % size,
            _s(value),
            "%s (cp -r)" % _s(cp),
            "%.2f×" % (value / cp),
            "≤ %.0f s" % SIGTERM_SECONDS,
            value <= SIGTERM_SECONDS,
        )
    else:
        t.add(
            "local SIGTERM mid-training → final checkpoint (%s of fresh state) committed" % size,
            "%d of %d never committed (120 s)" % (len(attempts) - len(done), len(attempts)),
            "%s (cp -r)" % _s(cp),
            "—",
            "≤ %.0f s" % SIGTERM_SECONDS,
            False,
        )
    exits = [a["exited"] for a in attempts if a["exited"] is not None]
    t.add(
        "local SIGTERM → task process exited",
        _s(med(exits)) if exits else "—",
        "—",
        "—",
        "— (info)",
    )
    good = sum(
        1
        for a in attempts
        if (a.get("loaded_by_retry") or {}).get("bytes") == res["state_bytes"]
        and (a["loaded_by_retry"].get("metadata") or {}).get("reason") == "interrupted"
        and a["loaded_by_retry"].get("attempt") == a["attempt"]
    )
    t.add(
        "local SIGTERM: the retry loaded the final checkpoint",
        "%d of %d" % (good, len(attempts)),
        "—",
        "—",
        "all, %s each" % size,
        good == len(attempts),
    )


def build_table(raw: dict) -> Table:
    t = Table()
    if "async_local" in raw:
        async_rows(t, "local", raw["async_local"], "cp")
    if "async_s3" in raw:
        async_rows(t, "S3 (moto)", raw["async_s3"], "blocking")
    if "parallel" in raw:
        parallel_rows(t, raw["parallel"], raw["args"].get("gang_poll"))
    if "interrupt" in raw:
        interrupt_rows(t, raw["interrupt"], raw["cp"]["state"])
    return t


def _all(values, fmt="%.2f") -> str:
    return ", ".join(fmt % v for v in values)


def print_report(raw: dict, table: Table, args) -> None:
    opts = (raw.get("async_local") or raw.get("async_s3") or {}).get("options", {})
    print(
        "metaflow-checkpointing distributed/async/interrupt benchmark: %d × %s (%d files); "
        "%d CPUs; workers=%s; load average at start %s, at end %s"
        % (
            args.repeat,
            fmt_bytes(args.size_mib * MiB),
            BIG_FILES,
            os.cpu_count() or 1,
            opts.get("workers", "?"),
            raw["load_start"],
            raw.get("load_end", "?"),
        )
    )
    print()
    print(table.markdown())
    print()
    notes = [
        "Times are medians over %d repeats, each on new random bytes. Before every timed "
        "operation, ours and the baselines: `sync`, then %s."
        % (
            args.repeat,
            "nothing else (--no-recycle)"
            if args.no_recycle
            else "memory recycling (_benchutil.recycle_memory, as in bench.py)",
        )
    ]
    cp = raw.get("cp", {})
    for tag, label in (("async_local", "local"), ("async_s3", "S3 (moto)")):
        res = raw.get(tag)
        if not res:
            continue
        notes.append(
            "%s background saves (s): blocked %s; until wait() %s; blocking saves %s; cp -r of "
            "the background saves' directories, in the task, next to them %s. Phases of the "
            "first background save (from its stats, in the worker thread): %s."
            % (
                label,
                _all(m["blocked"] for m in res["async"]),
                _all(m["total"] for m in res["async"]),
                _all(m["seconds"] for m in res["blocking"]),
                _all(m["seconds"] for m in res["cp"]),
                ", ".join("%s %.2f s" % kv for kv in res["async"][0]["stats"]["seconds"].items()),
            )
        )
    par = raw.get("parallel")
    if par:
        notes.append(
            "@parallel (s): single-task saves %s; gang saves, per round (rank 0, rank 1) %s; "
            "rank start skew ≤ %.1f ms (file barrier). Phases of the first single save: %s."
            % (
                _all(s["seconds"] for s in par["single"]),
                "; ".join("(%s)" % _all(r["seconds"]) for r in par["rounds"]),
                1000 * max(r["start_skew"] for r in par["rounds"]),
                ", ".join(
                    "%s %.2f s" % kv for kv in par["single"][0]["stats"].get("seconds", {}).items()
                ),
            )
        )
    intr = raw.get("interrupt")
    if intr:
        parts = []
        for a in intr["attempts"]:
            sec = (a.get("stats") or {}).get("seconds", {})
            parts.append(
                "handler %s s, manifest created %s s, committed %s s, exited %s s (save: %s)"
                % tuple(
                    [
                        "%.3f" % v if v is not None else "—"
                        for v in (a["handler"], a["created"], a["committed"], a["exited"])
                    ]
                    + [", ".join("%s %.2f" % kv for kv in sec.items()) or "—"]
                )
            )
        notes.append(
            "SIGTERM, per attempt, after the signal: %s. cp -r of %s: %s s. The flow ran %s s."
            % (
                "; ".join(parts),
                fmt_bytes(intr["state_bytes"]),
                _all(cp.get("state", [])),
                _all(intr["run_seconds"], "%.1f"),
            )
        )
    for name, error in raw.get("errors", {}).items():
        notes.append("**%s failed to run**: %s" % (name, error.splitlines()[0]))
    notes.append("Total benchmark time: %.0f s." % raw["total_seconds"])
    for n in notes:
        print("- " + n)


# ===================================================================== main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="size of each saved directory")
    p.add_argument(
        "--state-mib",
        type=int,
        help="fresh state saved on SIGTERM (default: --size-mib / 4, i.e. 256 MiB)",
    )
    p.add_argument("--repeat", type=int, default=3, help="repeats of each measurement (medians)")
    p.add_argument("--skip-s3", action="store_true", help="no moto server, no S3 rows")
    p.add_argument("--skip-async", action="store_true", help="skip benchmark 1")
    p.add_argument("--skip-parallel", action="store_true", help="skip benchmark 2")
    p.add_argument("--skip-interrupt", action="store_true", help="skip benchmark 3")
    p.add_argument(
        "--gang-poll",
        type=float,
        help="what-if: poll interval (s) of the @parallel commit waits instead of the library's "
        "own (patched in the ranks; the header says so)",
    )
    p.add_argument("--no-recycle", action="store_true", help="no memory recycling (see bench.py)")
    p.add_argument("--workdir", help="parent of the temporary directory (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--json", help="also write every raw measurement to this file")
    args = p.parse_args(argv)
    if args.state_mib is None:
        args.state_mib = max(1, args.size_mib // 4)
    if min(args.repeat, args.size_mib, args.state_mib) < 1:
        p.error("--repeat, --size-mib and --state-mib must be positive")
    return args


def make_data(work: Path, args) -> dict:
    """Directories a-i (background saves; single-task saves of benchmark 2), b-i (blocking saves;
    split by hard links into the ranks' shares of benchmark 2), and the SIGTERM-sized one."""
    data: dict = {"a": [], "b": [], "gang": []}
    for i in range(args.repeat):
        for kind in ("a", "b"):
            data[kind].append(work / "data" / ("%s-%d" % (kind, i)))
            make_big(data[kind][-1], args.size_mib)
        files = sorted(os.listdir(data["b"][-1]))
        shares = []
        for k in range(WORLD):
            share = work / "data" / ("gang-%d" % i) / ("rank-%d" % k)
            share.mkdir(parents=True)
            for name in files[k::WORLD]:
                os.link(data["b"][-1] / name, share / name)
            shares.append(share)
        data["gang"].append(shares)
    data["state"] = work / "data" / "state"
    make_big(data["state"], args.state_mib)
    os.sync()
    return data


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mfckpt-dist-", dir=args.workdir or None)).resolve()
    t_start = time.perf_counter()
    raw: dict = {"args": vars(args), "workdir": str(work), "load_start": loadavg(), "errors": {}}
    recycle = not args.no_recycle
    moto = None

    def attempt(name: str, fn):
        try:
            raw[name] = fn()
        except Exception as exc:  # noqa: BLE001 - reported, the other benchmarks still run
            raw["errors"][name] = "%s: %s" % (type(exc).__name__, exc)
            log("%s FAILED: %s" % (name, raw["errors"][name]))

    try:
        log("work dir %s" % work)
        data = make_data(work, args)
        log(
            "data: 2 × %d × %s, %s"
            % (args.repeat, fmt_bytes(args.size_mib * MiB), fmt_bytes(args.state_mib * MiB))
        )
        scratch = work / "scratch"
        scratch.mkdir()
        raw["cp"] = {
            "state": time_cp([data["state"]] * args.repeat, scratch, recycle)["seconds"],
        }
        log("cp -r done")

        if not args.skip_async:
            local = work / "async-local"
            local.mkdir()
            attempt(
                "async_local",
                lambda: async_bench(work, "local", data, flow_environment(local), recycle),
            )
            remove(local / "mf-local" / ".metaflow" / "mf.checkpointing")
            log("background saves, local: done")
            if not args.skip_s3:
                os.environ.update(S3_ENV)
                moto = MotoServer(work / "moto.log")
                log("moto server on %s" % moto.endpoint)
                client = s3_client(moto.endpoint, 10)
                bucket = "mfckpt-dist-%s" % uuid.uuid4().hex[:8]
                client.create_bucket(Bucket=bucket)
                s3 = work / "async-s3"
                s3.mkdir()
                s3env = flow_environment(
                    s3,
                    METAFLOW_S3_ENDPOINT_URL=moto.endpoint,
                    METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket,
                    **S3_ENV,
                )
                attempt(
                    "async_s3",
                    lambda: async_bench(work, "s3", data, s3env, recycle, ("--datastore=s3",)),
                )
                moto.stop()  # frees the server's copies before the next benchmarks
                moto = None
                log("background saves, S3: done")
        if not args.skip_parallel:
            attempt("parallel", lambda: parallel_bench(work, data, recycle, args.gang_poll))
            log("@parallel: done")
        if not args.skip_interrupt:
            attempt("interrupt", lambda: interrupt_bench(work, args, recycle))
            log("SIGTERM: done")
    finally:
        if moto is not None:
            moto.stop()
        if args.keep:
            log("kept %s" % work)
        else:
            remove(work)
    raw["total_seconds"] = time.perf_counter() - t_start
    raw["load_end"] = loadavg()

    table = build_table(raw)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
    print()
    print_report(raw, table, args)
    return 1 if raw["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
