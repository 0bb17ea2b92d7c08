"""Distributed and long-running training targets: background saves, @parallel saves (sharded and
rank 0 only), SIGTERM, and how fast a gang fails when one of its ranks does.

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
2. **@parallel save** (``bench_distributed_parallel_flow.py``), local datastore, against one
   ``@checkpoint`` task saving all of ``--size-mib``:

   * sharded: a gang of 2 ranks, each saving half of it with ``save(..., sharded=True)`` (one
     checkpoint, a shard per rank).  Per rank: from the ``save()`` call to its return; the row
     shows the slower rank.  Target: ≤ 1.2× the single save.
   * rank 0 only: node 0 alone saves all of it with a plain ``save()`` while node 1 does
     nothing (``if rank == 0: save()``).  Target: ≤ 1.1× the single save (the same code path:
     the row proves no gang wait is left in a plain save).
3. **SIGTERM** (``bench_distributed_interrupt_flow.py``): a task with
   ``@checkpoint(save_on_interrupt=True)`` writes ``--state-mib`` of fresh state into
   ``current.checkpoint.directory`` and trains; this script sends SIGTERM to the task's pid and
   polls the store for the final checkpoint's manifest (written last, atomically: the commit).
   Target: committed ≤ 10 s after the signal.  Baseline: ``cp -r`` of that many bytes.
4. **A rank's failure → the gang's failure** (``bench_distributed_gang_fail_flow.py``, local
   datastore, ``METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT`` at its default 600 s, no ``@retry``):
   node 0 waits in a sharded save while node 1 raises before saving; from node 1's raise (a
   timestamp the flow writes) to node 0's ``save()`` raising (timestamp) and to the end of the
   ``run`` process.  Targets: ≤ 5 s and ≤ 30 s (issue 13).  And SIGTERM to node 0 while it waits
   in a sharded save (node 1 never saves): from the signal to node 0's task process ending.
   Target: ≤ 5 s.  One flow run per repeat and case.

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
GANG_FAIL_FLOW = "bench_distributed_gang_fail_flow.py"
WORLD = 2
#: At most this many interrupted attempts per flow run (@retry allows times <= 4).
INTERRUPTS_PER_RUN = 4
ASYNC_VS_CP, ASYNC_VS_BLOCKING_S3, PARALLEL_VS_SINGLE, SIGTERM_SECONDS = 1.5, 0.25, 1.2, 10.0
RANK0_VS_SINGLE = 1.1
#: Issue 13: the gang's save fails within this many seconds of a rank's failure, the run within
#: FAIL_RUN_SECONDS; SIGTERM during a sharded wait ends the task within GANG_SIGTERM_SECONDS.
FAIL_SAVE_SECONDS, FAIL_RUN_SECONDS, GANG_SIGTERM_SECONDS = 5.0, 30.0, 5.0
#: The wait a gang ran into before ADR 004 (the default METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT).
PARALLEL_TIMEOUT = 600
#: How long a gang-failure flow run may take before it is killed and reported as a miss.
GANG_FAIL_CAP = 120.0
#: Fresh state node 0 saves in the gang-failure flow (its size does not matter there).
GANG_FAIL_STATE = 16 * MiB


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
        "rank0": [str(p) for p in data["c"]],
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
    out["rank0"] = ranks[0]["rank0_saves"]
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


# ===================================================================== 4. a rank fails
def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _gang_fail_run(work: Path, sub: Path, mode: str, k: int) -> dict:
    """One run of the gang-failure flow in ``mode`` ("fail" or "sigterm"); times in seconds
    from node 1's raise (fail) or from the SIGTERM (sigterm), None for what never happened."""
    out = sub / ("%s-%d" % (mode, k))
    out.mkdir()
    spec = {"out": str(out), "mode": mode, "state_bytes": GANG_FAIL_STATE}
    env = dict(
        flow_environment(sub, METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT=str(PARALLEL_TIMEOUT)),
        MFCKPT_BENCH_SPEC=json.dumps(spec),
    )
    cmd = [sys.executable, str(HERE / GANG_FAIL_FLOW), "--no-pylint", "run"]
    logfile = work / ("flow-gang-%s-%d.log" % (mode, k))
    t_sig = node0_end = run_end = None
    killed = False
    with open(logfile, "w") as logf:
        proc = subprocess.Popen(cmd, env=env, cwd=str(sub), stdout=logf, stderr=subprocess.STDOUT)
        try:
            node0 = None
            if mode == "sigterm":
                _wait_file(out / "waiting.json", proc, 300)
                node0 = _wait_file(out / "node0.json", proc, 10)["pid"]
                t_sig = time.time()
                os.kill(node0, signal.SIGTERM)
            deadline = time.monotonic() + GANG_FAIL_CAP
            while run_end is None:
                now = time.time()
                if node0 is None and (out / "node0.json").exists():
                    node0 = (_read(out / "node0.json") or {}).get("pid")
                if node0 is not None and node0_end is None and _exited(node0):
                    node0_end = now
                if proc.poll() is not None:
                    run_end = now
                    break
                if time.monotonic() > deadline:
                    killed = True
                    proc.kill()
                    proc.wait()
                    break
                time.sleep(0.002)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if proc.returncode == 0:
        raise RuntimeError("the gang-failure flow (%s) succeeded: it must fail" % mode)
    raised = _read(out / "raised.json")
    save = _read(out / "save_raised.json")
    if mode == "fail":
        if raised is None:
            tail = "\n".join(logfile.read_text().splitlines()[-40:])
            raise RuntimeError("node 1 never raised (exit %d):\n%s" % (proc.returncode, tail))
        t0 = raised["time"]
    else:
        t0 = t_sig

    def since(t):
        return None if t is None else t - t0

    return {
        "save_raised": since(save and save["time"]),
        "node0_exited": since(node0_end),
        "run_ended": None if killed else since(run_end),
        "killed_after": GANG_FAIL_CAP if killed else None,
        "error": save and save["error"],
        "save_returned": (out / "save_returned.json").exists(),
        "exit": proc.returncode,
    }


def gang_fail_bench(work: Path, args) -> dict:
    sub = work / "gang-fail"
    sub.mkdir()
    res: dict = {"fail": [], "sigterm": []}
    for k in range(args.repeat):
        for mode in ("fail", "sigterm"):
            res[mode].append(_gang_fail_run(work, sub, mode, k))
            r = res[mode][-1]
            log(
                "gang %s %d/%d: save raised after %s s, run ended after %s s"
                % (mode, k + 1, args.repeat, _opt(r["save_raised"]), _opt(r["run_ended"]))
            )
    remove(sub / "mf-local" / ".metaflow" / "mf.checkpointing")
    return res


def _opt(value, fmt="%.2f") -> str:
    return "—" if value is None else fmt % value


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
        "local @parallel sharded save, %d ranks × %s: slower rank's `save(sharded=True)`%s"
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
        "local @parallel sharded save: where the time goes (medians)",
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


def rank0_rows(t: Table, res: dict) -> None:
    """Rank 0 alone saving the whole size with a plain save() while node 1 idles."""
    if not res.get("rank0"):
        return
    single = med([s["seconds"] for s in res["single"]])
    rank0 = med([s["seconds"] for s in res["rank0"]])
    t.add(
        "local @parallel rank-0-only `save()` of %s (node 1 idle)"
        % fmt_bytes(res["rank0"][0]["bytes"]),
        _s(rank0),
        "%s (1 task saving %s)" % (_s(single), fmt_bytes(res["single"][0]["bytes"])),
        "%.2f×" % (rank0 / single),
        "≤ %.1f× single" % RANK0_VS_SINGLE,
        rank0 / single <= RANK0_VS_SINGLE,
    )
    steps = sum(len(s["events"]) for s in res["rank0"])
    waited = sum(e[2] for s in res["rank0"] for e in s["events"] if e[0] == "waited")
    flags = sorted({_flag(s["key"]) for s in res["rank0"]})
    t.add(
        "local @parallel rank-0-only `save()`: gang protocol steps taken; key flag",
        "%d steps (%s waiting) in %d saves; flag %s (rank 0's)"
        % (steps, _ms(waited), len(res["rank0"]), "/".join(flags)),
        "—",
        "—",
        "no step, flag L",
        steps == 0 and flags == ["L"],
    )


def _flag(key: str) -> str:
    """The latest/writer flag of a manifest key (``<created>-<attempt>-<seq>-<flag>-...``)."""
    parts = key.rsplit("/", 1)[-1].split("-")
    return parts[3] if len(parts) > 3 else "?"


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


def gang_fail_rows(t: Table, res: dict) -> None:
    before = "%d s (the timeout, before ADR 004)" % PARALLEL_TIMEOUT

    def row(metric, values, limit, baseline=before):
        done = [v for v in values if v is not None]
        if len(done) == len(values):
            value = med(done)
            t.add(metric, _s(value), baseline, "—", "≤ %.0f s" % limit, value <= limit)
        else:
            t.add(
                metric,
                "%d of %d never (%.0f s cap)"
                % (len(values) - len(done), len(values), GANG_FAIL_CAP),
                baseline,
                "—",
                "≤ %.0f s" % limit,
                False,
            )

    fail, term = res["fail"], res["sigterm"]
    row(
        "local gang, node 1 raises before saving → node 0's `save(sharded=True)` raises",
        [r["save_raised"] for r in fail],
        FAIL_SAVE_SECONDS,
    )
    row(
        "local gang, node 1 raises before saving → the run has failed (process exited)",
        [r["run_ended"] for r in fail],
        FAIL_RUN_SECONDS,
    )
    named = sum(1 for r in fail if r["error"] and "node 1" in r["error"])
    t.add(
        "local gang, node 1 raises: node 0's error names node 1",
        "%d of %d" % (named, len(fail)),
        "—",
        "—",
        "all",
        named == len(fail),
    )
    row(
        "local gang, SIGTERM to node 0 waiting in `save(sharded=True)` → its task process ended",
        [r["node0_exited"] for r in term],
        GANG_SIGTERM_SECONDS,
        baseline="— (before ADR 004: the wait absorbed it)",
    )
    raised = [r["save_raised"] for r in term if r["save_raised"] is not None]
    ended = [r["run_ended"] for r in term if r["run_ended"] is not None]
    t.add(
        "local gang, SIGTERM to node 0 waiting: → its `save()` raised / → the run ended",
        "%s / %s" % (_s(med(raised)) if raised else "—", _s(med(ended)) if ended else "—"),
        "—",
        "—",
        "— (info)",
    )


def build_table(raw: dict) -> Table:
    t = Table()
    if "async_local" in raw:
        async_rows(t, "local", raw["async_local"], "cp")
    if "async_s3" in raw:
        async_rows(t, "S3 (moto)", raw["async_s3"], "blocking")
    if "parallel" in raw:
        parallel_rows(t, raw["parallel"], raw["args"].get("gang_poll"))
        rank0_rows(t, raw["parallel"])
    if "interrupt" in raw:
        interrupt_rows(t, raw["interrupt"], raw["cp"]["state"])
    if "gang_fail" in raw:
        gang_fail_rows(t, raw["gang_fail"])
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
    if par and par.get("rank0"):
        notes.append(
            "rank-0-only saves (s): %s (single-task saves above). Phases of the first: %s."
            % (
                _all(s["seconds"] for s in par["rank0"]),
                ", ".join(
                    "%s %.2f s" % kv for kv in par["rank0"][0]["stats"].get("seconds", {}).items()
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
    fails = raw.get("gang_fail")
    if fails:
        notes.append(
            "A rank fails, per run (s after node 1's raise): save raised %s; node 0's task "
            "process ended %s; run ended %s. SIGTERM, per run (s after the signal): save raised "
            "%s; node 0's task process ended %s; run ended %s. "
            "METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT=%d. Node 0's error (first run): %s"
            % (
                tuple(
                    ", ".join(_opt(r[field]) for r in fails[mode])
                    for mode in ("fail", "sigterm")
                    for field in ("save_raised", "node0_exited", "run_ended")
                )
                + (PARALLEL_TIMEOUT, (fails["fail"][0]["error"] or "—") if fails["fail"] else "—")
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
    p.add_argument("--skip-gang-fail", action="store_true", help="skip benchmark 4")
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
    split by hard links into the ranks' shares of benchmark 2), c-i (rank-0-only saves of
    benchmark 2: new bytes, else they would be deduplicated) and the SIGTERM-sized one."""
    data: dict = {"a": [], "b": [], "c": [], "gang": []}
    kinds = ("a", "b") if args.skip_parallel else ("a", "b", "c")
    for i in range(args.repeat):
        for kind in kinds:
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
            "data: %d × %d × %s, %s"
            % (
                2 if args.skip_parallel else 3,
                args.repeat,
                fmt_bytes(args.size_mib * MiB),
                fmt_bytes(args.state_mib * MiB),
            )
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
        if not args.skip_gang_fail:
            attempt("gang_fail", lambda: gang_fail_bench(work, args))
            log("gang failures: done")
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
