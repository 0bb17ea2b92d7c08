"""Speed and memory of ``current.checkpoint`` against plain baselines, as a markdown table.

    python benchmarks/bench.py                                  # full size (1 GiB, 10,000 files)
    python benchmarks/bench.py --size-mib 64 --small-files 500  # smoke run, < 1 minute
    python benchmarks/bench.py --skip-s3                        # local datastore only

Under a temporary directory it writes ``--repeat`` large directories (16 random files,
``--size-mib`` in total, each) and ``--repeat`` directories of ``--small-files`` random 4 KiB
files.  Every contender then copies the same bytes, after the same preparation (``sync`` and
memory recycling, see ``_benchutil.py``) and with the page cache warm for all of them:

* ours: ``current.checkpoint.save(path=...)`` / ``load(ref, path=...)`` timed with
  ``time.perf_counter`` inside real Metaflow tasks (``bench_flow.py`` run as
  ``python bench_flow.py --no-pylint run`` in an isolated environment), once on the local
  datastore and once on S3 (a moto server on 127.0.0.1, ``--datastore=s3``);
* baselines: ``cp -r`` for the local rows, boto3's ``TransferManager`` with the same
  concurrency as ours for the S3 rows, against the same moto server.

Each time in the table is the median over the ``--repeat`` directories.  The decorator's cost on
an empty task comes from ``bench_empty_flow.py`` run with and without ``@checkpoint``.  Nothing
here asserts: targets are printed, not enforced; the exit status is non-zero only when something
fails to run.  See benchmarks/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _benchutil import MiB, PeakRSS, ext4_workdir, prepare, recycle_size  # noqa: E402

BIG_FILES = 16
SMALL_FILE_SIZE = 4096
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def log(msg: str) -> None:
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def median(values) -> float:
    return statistics.median(values)


# ------------------------------------------------------------------------------------- data
def make_big(root: Path, total_mib: int) -> int:
    """``BIG_FILES`` files of random bytes, ``total_mib`` MiB in all; returns the byte count."""
    root.mkdir(parents=True)
    per_file = max(1, total_mib * MiB // BIG_FILES)
    block = 8 * MiB
    for i in range(BIG_FILES):
        with open(root / ("shard-%02d.bin" % i), "wb") as f:
            left = per_file
            while left:
                n = min(block, left)
                f.write(os.urandom(n))
                left -= n
    return per_file * BIG_FILES


def make_small(root: Path, count: int) -> int:
    """``count`` random 4 KiB files in one directory; returns the byte count."""
    root.mkdir(parents=True)
    for i in range(count):
        with open(root / ("f%05d.bin" % i), "wb") as f:
            f.write(os.urandom(SMALL_FILE_SIZE))
    return count * SMALL_FILE_SIZE


def tree_bytes(root: Path) -> tuple[int, int]:
    files = total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            files += 1
            total += os.path.getsize(os.path.join(dirpath, name))
    return files, total


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------- cp -r
def time_cp(sources: list, scratch: Path, recycle: bool) -> dict:
    """Wall time of ``cp -r src dst`` for each source (fresh dst, ``prepare`` before each)."""
    times = []
    for i, src in enumerate(sources):
        dst = scratch / ("cp-%d" % i)
        prepare(recycle_size(tree_bytes(src)[1]), recycle, str(scratch))
        t0 = time.perf_counter()
        subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
        times.append(time.perf_counter() - t0)
        remove(dst)
    return {"seconds": times}


# ------------------------------------------------------------------------------------- flows
def flow_environment(work: Path, **extra: str) -> dict:
    """Isolated Metaflow environment under ``work`` (as tests/conftest.py's flow_environment)."""
    home = work / "home"
    home.mkdir(exist_ok=True)
    env = {
        "USER": "tester",
        "METAFLOW_USER": "tester",
        "METAFLOW_HOME": str(home),
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(work / "mf-local"),
        "METAFLOW_DEFAULT_METADATA": "local",
        "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_CLIENT_CACHE_PATH": str(work / "cache"),
        # Local @parallel workers (and Metaflow's subprocesses) run `python` from PATH.
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    # Keep the user's checkpoint settings (e.g. METAFLOW_CHECKPOINT_WORKERS) and basics.
    for key, value in os.environ.items():
        if key.startswith("METAFLOW_CHECKPOINT_") or key in ("LANG", "LC_ALL", "TMPDIR", "HOME"):
            env.setdefault(key, value)
    env.update(extra)
    return env


def run_flow(flow: str, env: dict, cwd: Path, top_args=(), logfile: Path = None) -> float:
    """Run ``python <flow> --no-pylint [top_args] run``; return its wall time in seconds."""
    cmd = [sys.executable, str(HERE / flow), "--no-pylint", *top_args, "run"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=str(cwd), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if logfile is not None:
        logfile.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RuntimeError("%s failed (exit %d):\n%s" % (" ".join(cmd), proc.returncode, tail))
    return seconds


def run_bench_flow(work: Path, tag: str, data: dict, args, env: dict, top_args=()) -> dict:
    """Run bench_flow.py on the prepared directories; return what its steps measured."""
    out = work / ("result-%s" % tag)
    spec = {
        "out": str(out),
        "workdir": str(work),
        "big": [str(p) for p in data["big"]],
        "small": [str(p) for p in data["small"]],
        "tiny": str(work / ("tiny-%s" % tag)),
        "latency_saves": args.latency_saves,
        "recycle": not args.no_recycle,
    }
    env = dict(env, MFCKPT_BENCH_SPEC=json.dumps(spec))
    run_flow("bench_flow.py", env, work, top_args, logfile=work / ("flow-%s.log" % tag))
    result = json.loads(Path(str(out) + ".save.json").read_text())
    for name, measured in json.loads(Path(str(out) + ".load.json").read_text()).items():
        result[name].update(measured)
    remove(Path(spec["tiny"]))
    return result


def decorator_overhead(work: Path, runs: int) -> dict:
    """``run`` wall times of the empty flow with and without ``@checkpoint``, interleaved,
    and the time spent in the decorator's hooks of each decorated run."""
    base = flow_environment(work)
    hooks = work / "hooks"
    hooks.mkdir()

    def once(decorated: bool, tag: str) -> float:
        env = dict(base, MFCKPT_BENCH_DECORATE="1" if decorated else "0")
        env["MFCKPT_BENCH_HOOKS"] = str(hooks / (tag + ".jsonl"))
        return run_flow("bench_empty_flow.py", env, work)

    # Warm up: byte-compile, fill the OS caches for both variants.
    once(True, "warmup")
    once(False, "warmup")
    times: dict = {True: [], False: []}
    for i in range(runs):
        # ABBA order so that drifts and "first/second of a pair" effects hit both alike.
        order = (True, False) if i % 4 in (0, 3) else (False, True)
        for decorated in order:
            times[decorated].append(once(decorated, "run-%d" % i))
    per_run = []
    for i in range(runs):
        lines = (hooks / ("run-%d.jsonl" % i)).read_text().splitlines()
        per_run.append(sum(json.loads(line)["seconds"] for line in lines))
    return {"with": times[True], "without": times[False], "hooks": per_run}


# ------------------------------------------------------------------------------------- S3
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_MOTO = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
sys.stdin.read()  # until the parent closes our stdin (or dies)
server.stop()
"""


class MotoServer:
    """moto's ThreadedMotoServer in a child process.

    Not in this process: the TransferManager baseline runs here, and a server sharing its GIL
    would slow the baseline down but not our flow (a separate process): an unfair comparison.
    """

    def __init__(self, logfile: Path):
        self.port = free_port()
        self.endpoint = "http://127.0.0.1:%d" % self.port
        with open(logfile, "wb") as out:  # werkzeug logs every request
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _MOTO, str(self.port)],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, **S3_ENV),
            )
        deadline = time.time() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - stop it one way or the other
            self.proc.kill()
            self.proc.wait()


def s3_client(endpoint: str, workers: int):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(max_pool_connections=max(10, workers)),
    )


def tm_transfer(client, bucket: str, prefix: str, sources: list, work: Path, workers, recycle):
    """Upload each source directory, then download it, with boto3's TransferManager.

    One ``s3transfer`` TransferManager per transfer (what ``client.upload_file`` uses under the
    hood) with ``max_concurrency=workers``: its thread pool runs the files, and the parts of
    multipart transfers, ``workers`` requests at a time: the same concurrency as our pipeline.
    """
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    config = TransferConfig(max_concurrency=workers)
    out: dict = {"save": [], "load": []}
    for i, src in enumerate(sources):
        files = sorted(p for p in src.rglob("*") if p.is_file())
        keys = ["%s/%d/%s" % (prefix, i, p.relative_to(src).as_posix()) for p in files]
        nbytes = sum(p.stat().st_size for p in files)

        prepare(recycle_size(nbytes), recycle, str(work))
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            with create_transfer_manager(client, config) as tm:
                for fut in [tm.upload(str(p), bucket, k) for p, k in zip(files, keys)]:
                    fut.result()
            out["save"].append(dict(rss.to_json(), seconds=time.perf_counter() - t0))

        dest = work / ("tm-%s-%d" % (prefix.replace("/", "-"), i))
        targets = [dest / p.relative_to(src) for p in files]
        for d in {t.parent for t in targets}:
            d.mkdir(parents=True, exist_ok=True)
        prepare(recycle_size(nbytes), recycle, str(work))
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            with create_transfer_manager(client, config) as tm:
                for fut in [tm.download(bucket, k, str(t)) for k, t in zip(keys, targets)]:
                    fut.result()
            load = dict(rss.to_json(), seconds=time.perf_counter() - t0)
        load["files"], load["bytes"] = tree_bytes(dest)
        if load["bytes"] != nbytes:
            raise RuntimeError("TransferManager download of %s is incomplete" % src)
        out["load"].append(load)
        remove(dest)
        for start in range(0, len(keys), 1000):  # free the server's memory and disk
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            client.delete_objects(Bucket=bucket, Delete={"Objects": batch})
    return out


# ------------------------------------------------------------------------------------- table
def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1024)):
        if abs(n) >= size:
            return "%.1f %s" % (n / size, unit)
    return "%d B" % n


def seconds_of(measurements) -> list:
    """Seconds of a list of measurements (dicts or floats) or a ``{"seconds": [...]}``."""
    if isinstance(measurements, dict):
        return measurements["seconds"]
    return [m["seconds"] if isinstance(m, dict) else m for m in measurements]


class Table:
    def __init__(self):
        self.rows: list = []

    def add(self, metric, ours, baseline="—", ratio="—", target="—", ok=None):
        verdict = "—" if ok is None else ("PASS" if ok else "MISS")
        self.rows.append((metric, ours, baseline, ratio, target, verdict))

    def markdown(self) -> str:
        head = ("metric", "ours", "baseline", "ratio", "target", "result")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)


def throughput_rows(t, label, nbytes, ours, base, base_name, target):
    for op in ("save", "load"):
        o = mbps(nbytes, median(seconds_of(ours[op])))
        b = mbps(nbytes, median(seconds_of(base[op])))
        t.add(
            "%s %s %s (MB/s)" % (label, op, fmt_bytes(nbytes)),
            "%.0f" % o,
            "%.0f (%s)" % (b, base_name),
            "%.2f×" % (o / b),
            "≥ %.1f× %s" % (target, base_name),
            o / b >= target,
        )


def small_rows(t, label, nfiles, ours, base, base_name, target=None):
    """Times for the many-small-files directories; ``target`` applies to the save only."""
    for op in ("save", "load"):
        o = median(seconds_of(ours[op]))
        judged = op == "save" and target is not None
        if base is None:
            t.add("%s %s %d × 4 KiB files (s)" % (label, op, nfiles), "%.2f" % o, "not run")
            continue
        b = median(seconds_of(base[op]))
        t.add(
            "%s %s %d × 4 KiB files (s)" % (label, op, nfiles),
            "%.2f" % o,
            "%.2f (%s)" % (b, base_name),
            "%.2f× the time" % (o / b),
            ("≤ %.0f× %s" % (target, base_name)) if judged else "— (info)",
            (o / b <= target) if judged else None,
        )


def resave_rows(t, label, res):
    first = res["save"][0]
    for key, what, judged in (
        ("resave", "same task", True),
        ("resave_cold", "new task, info", False),
    ):
        again = res[key]
        frac = again["seconds"] / first["seconds"]
        uploaded = again["stats"]["bytes_uploaded"]
        t.add(
            "%s unchanged re-save (%s): time" % (label, what),
            "%.3f s" % again["seconds"],
            "%.3f s (first save)" % first["seconds"],
            "%.1f%%" % (100 * frac),
            "< 10% of first save" if judged else "—",
            (frac < 0.10) if judged else None,
        )
        t.add(
            "%s unchanged re-save (%s): bytes uploaded" % (label, what),
            fmt_bytes(uploaded),
            fmt_bytes(first["stats"]["bytes_uploaded"]) + " (first save)",
            "—",
            "0 B (manifest only)" if judged else "—",
            (uploaded == 0) if judged else None,
        )


def rss_rows(t, label, nbytes, res, base=None, base_name=""):
    for op in ("save", "load"):
        extra = max(m["rss_extra"] for m in res[op])
        t.add(
            "%s peak extra RSS, %s %s" % (label, op, fmt_bytes(nbytes)),
            fmt_bytes(extra),
            "%s (%s)" % (fmt_bytes(max(m["rss_extra"] for m in base[op])), base_name)
            if base
            else "—",
            "—",
            "≤ 256 MiB",
            extra <= 256 * MiB,
        )


def build_table(raw: dict, big_bytes: int, args) -> Table:
    t = Table()
    local = raw["local"]
    cp_big = {"save": raw["cp_big"], "load": raw["cp_big"]}
    cp_small = {"save": raw["cp_small"], "load": raw["cp_small"]}
    throughput_rows(t, "local", big_bytes, local["big"], cp_big, "cp -r", 0.8)
    small_rows(t, "local", args.small_files, local["small"], cp_small, "cp -r", 3.0)
    resave_rows(t, "local", local["big"])
    if "s3" in raw:
        s3 = raw["s3"]
        throughput_rows(t, "S3", big_bytes, s3["big"], raw["tm_big"], "TransferManager", 0.9)
        # The small-file target is about cp -r; against TransferManager it is information only.
        small_rows(t, "S3", args.small_files, s3["small"], raw.get("tm_small"), "TransferManager")
        resave_rows(t, "S3", s3["big"])
    for label, res, limit in (("local", local, 0.020), ("S3", raw.get("s3"), 0.050)):
        if res is None:
            continue
        times = res["tiny"]["seconds"]
        t.add(
            "%s save of a 4 KiB checkpoint, median of %d" % (label, len(times)),
            "%.1f ms" % (1000 * median(times)),
            "—",
            "min %.1f / max %.1f ms" % (1000 * min(times), 1000 * max(times)),
            "≤ %d ms" % (1000 * limit),
            median(times) <= limit,
        )
    ov = raw["overhead"]
    with_, without = statistics.mean(ov["with"]), statistics.mean(ov["without"])
    diff = with_ - without
    # Two standard errors of the difference of the means: process start-up noise is large.
    noise = float("nan")
    if min(len(ov["with"]), len(ov["without"])) > 1:
        var = statistics.variance(ov["with"]) / len(ov["with"])
        var += statistics.variance(ov["without"]) / len(ov["without"])
        noise = 2 * var**0.5
    verdict = diff <= 0.1
    t.add(
        "@checkpoint on an empty task: extra `run` wall time (mean of %d)" % len(ov["with"]),
        "%.3f s ± %.3f" % (diff, noise),
        "%.2f s without / %.2f s with" % (without, with_),
        "%+.1f%%" % (100 * diff / without),
        "≤ 0.1 s",
        verdict,
    )
    if abs(diff - 0.1) < noise:  # the verdict could flip with another run
        t.rows[-1] = t.rows[-1][:5] + (t.rows[-1][5] + " (within noise)",)
    t.add(
        "@checkpoint hooks' own time per run (step_init + task_pre_step + task_finished)",
        "%.1f ms" % (1000 * median(ov["hooks"])),
        "—",
        "max %.1f ms" % (1000 * max(ov["hooks"])),
        "≤ 0.1 s",
        median(ov["hooks"]) <= 0.1,
    )
    rss_rows(t, "local", big_bytes, local["big"])
    if "s3" in raw:
        rss_rows(t, "S3", big_bytes, raw["s3"]["big"], raw["tm_big"], "TransferManager")
    return t


def print_report(raw: dict, table: Table, big_bytes: int, args) -> None:
    opts = raw["local"]["options"]
    print(
        "metaflow-checkpointing benchmark: %d × (%s in %d files) and %d × (%d × 4 KiB files); "
        "%d CPUs; workers=%d inflight=%d chunk=%s small files < %s"
        % (
            args.repeat,
            fmt_bytes(big_bytes),
            BIG_FILES,
            args.repeat,
            args.small_files,
            os.cpu_count() or 1,
            opts["workers"],
            opts["inflight"],
            fmt_bytes(opts["chunk_size"]),
            fmt_bytes(opts["small_size"]),
        )
    )
    print()
    print(table.markdown())
    print()

    def all_of(measurements) -> str:
        return ", ".join("%.2f" % s for s in seconds_of(measurements))

    local = raw["local"]
    notes = [
        "Times are medians over the %d directories of each kind (a first save needs new bytes). "
        "MB/s = 10^6 bytes of checkpoint data per second." % args.repeat,
        "Before each timed operation, for every contender: `sync`, then %s. Page cache warm "
        "for all (data written before any timing); no fsync after any copy."
        % (
            "nothing else (--no-recycle)"
            if args.no_recycle
            else "a ballast file of 1.5× the bytes to be written + 256 MiB written and deleted "
            "(_benchutil.recycle_memory: on this VM, page-cache writes are 3-10× slower at "
            "random unless freed pages are at hand)"
        ),
        "All runs (s): cp -r big %s; ours local save %s, load %s; cp -r small %s; ours local "
        "small save %s, load %s."
        % (
            all_of(raw["cp_big"]),
            all_of(local["big"]["save"]),
            all_of(local["big"]["load"]),
            all_of(raw["cp_small"]),
            all_of(local["small"]["save"]),
            all_of(local["small"]["load"]),
        ),
        "Phases of our first local save (from its manifest): %s."
        % ", ".join("%s %.3f s" % kv for kv in local["big"]["save"][0]["stats"]["seconds"].items()),
    ]
    if "s3" in raw:
        s3 = raw["s3"]
        notes.append(
            "All S3 runs (s): TransferManager upload %s, download %s; ours save %s, load %s%s."
            % (
                all_of(raw["tm_big"]["save"]),
                all_of(raw["tm_big"]["load"]),
                all_of(s3["big"]["save"]),
                all_of(s3["big"]["load"]),
                "; TransferManager small upload %s, download %s"
                % (all_of(raw["tm_small"]["save"]), all_of(raw["tm_small"]["load"]))
                if "tm_small" in raw
                else "",
            )
        )
        notes.append(
            "S3 is moto (Python, one process) on 127.0.0.1 sharing the 2 CPUs: it bounds both "
            "contenders, so the S3 ratios compare request patterns, not network bandwidth."
            + (
                ""
                if "tm_small" in raw
                else " The TransferManager small-file baseline (one request per file, ~2 min "
                "at 10,000 files) runs only with --tm-small."
            )
        )
    ov = raw["overhead"]
    notes += [
        "Decorator rows: wall time of `python bench_empty_flow.py run` (launcher + 2 tasks, "
        "only `start` decorated), %d runs per variant in ABBA order, mean difference ± two "
        "standard errors; without: %s s, with: %s s. Process start-up noise hides anything "
        "below ~0.1 s there, so the hooks row times what the decorator itself runs (every hook "
        "it implements, launcher and task side, timed by wrappers the flow file installs)."
        % (len(ov["with"]), all_of(ov["without"]), all_of(ov["with"])),
        "Peak extra RSS: the task's RSS, sampled every 5 ms, minus its RSS just before the "
        "call; the largest over the %d directories." % args.repeat,
        "Total benchmark time: %.0f s." % raw["total_seconds"],
    ]
    for n in notes:
        print("- " + n)


# ------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="large directory size (16 files)")
    p.add_argument("--small-files", type=int, default=10000, help="number of 4 KiB files")
    p.add_argument("--skip-s3", action="store_true", help="local rows only (no moto server)")
    p.add_argument(
        "--tm-small",
        action="store_true",
        help="also run the TransferManager small-file baseline (slow: one request per file)",
    )
    p.add_argument("--workdir", help="parent of the temporary directory (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--repeat", type=int, default=3, help="directories of each kind (medians)")
    p.add_argument("--latency-saves", type=int, default=20, help="4 KiB saves (median)")
    p.add_argument("--overhead-runs", type=int, default=8, help="empty-flow runs per variant")
    p.add_argument(
        "--no-recycle",
        action="store_true",
        help="skip the memory recycling before timed operations (see _benchutil.py)",
    )
    p.add_argument(
        "--ext4-image",
        type=int,
        metavar="GIB",
        help="work in a fresh journaled ext4 of GIB GiB, loop-mounted (root; _benchutil)",
    )
    p.add_argument("--json", help="also write every raw measurement to this file")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.size_mib < 1 or args.small_files < 1:
        p.error("--repeat, --size-mib and --small-files must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with ext4_workdir(args):  # a fresh journaled ext4 with --ext4-image (_benchutil)
        return run(args)


def run(args) -> int:
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mfckpt-bench-", dir=args.workdir or None)).resolve()
    t_start = time.perf_counter()
    raw: dict = {"args": vars(args), "workdir": str(work)}
    recycle = not args.no_recycle
    moto = None
    try:
        log("work dir %s" % work)
        # First, on a quiet machine: the decorator's cost on an empty task.
        raw["overhead"] = decorator_overhead(work, args.overhead_runs)
        log("decorator overhead: %d runs per variant done" % args.overhead_runs)

        data: dict = {"big": [], "small": []}
        for i in range(args.repeat):
            data["big"].append(work / "data" / ("big-%d" % i))
            big_bytes = make_big(data["big"][-1], args.size_mib)
            data["small"].append(work / "data" / ("small-%d" % i))
            small_bytes = make_small(data["small"][-1], args.small_files)
        os.sync()
        log(
            "data: %d × %s in %d files, %d × %s in 4 KiB files"
            % (args.repeat, fmt_bytes(big_bytes), BIG_FILES, args.repeat, fmt_bytes(small_bytes))
        )

        # ---- local
        scratch = work / "scratch"
        scratch.mkdir()
        raw["cp_big"] = time_cp(data["big"], scratch, recycle)
        raw["cp_small"] = time_cp(data["small"], scratch, recycle)
        log("cp -r done")
        raw["local"] = run_bench_flow(work, "local", data, args, flow_environment(work))
        log("local flow done")
        # The local store is not needed any more: free disk and page cache before S3.
        remove(work / "mf-local" / ".metaflow" / "mf.checkpointing")

        # ---- S3 (moto)
        if not args.skip_s3:
            os.environ.update(S3_ENV)
            moto = MotoServer(work / "moto.log")
            log("moto server on %s" % moto.endpoint)
            workers = raw["local"]["options"]["workers"]
            client = s3_client(moto.endpoint, workers)
            bucket = "mfckpt-bench-%s" % uuid.uuid4().hex[:8]
            client.create_bucket(Bucket=bucket)
            raw["tm_big"] = tm_transfer(
                client, bucket, "tm/big", data["big"], work, workers, recycle
            )
            log("TransferManager big done")
            if args.tm_small:
                raw["tm_small"] = tm_transfer(
                    client, bucket, "tm/small", data["small"], work, workers, recycle
                )
                log("TransferManager small done")
            s3env = flow_environment(
                work,
                METAFLOW_S3_ENDPOINT_URL=moto.endpoint,
                METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket,
                **S3_ENV,
            )
            raw["s3"] = run_bench_flow(work, "s3", data, args, s3env, ("--datastore=s3",))
            log("S3 flow done")
    finally:
        if moto is not None:
            moto.stop()
        if args.keep:
            log("kept %s" % work)
        else:
            remove(work)
    raw["total_seconds"] = time.perf_counter() - t_start

    table = build_table(raw, big_bytes, args)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
    print()
    print_report(raw, table, big_bytes, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
