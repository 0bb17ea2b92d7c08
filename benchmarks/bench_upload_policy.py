"""What ``@checkpoint(upload="end")`` saves against ``upload="each"``, and what a hard kill loses.

    python benchmarks/bench_upload_policy.py                       # defaults below, local and S3
    python benchmarks/bench_upload_policy.py --saves 5 --size-mib 4   # smoke run, < 1 minute
    python benchmarks/bench_upload_policy.py --skip-s3             # local datastore only

1. **Cost.**  ``bench_upload_policy_flow.py`` (a real flow) saves a directory of ``--files``
   random files, ``--size-mib`` MiB in all, ``--saves`` times; before every save but the first
   the first file (the "weights") gets new random bytes, the others stay.  It runs once per
   policy: ``upload="each"``, ``upload="end"``, and both again with ``keep_best="val_loss:min:1"``.
   Counted for the flow's checkpoint store only (its own bucket, ``METAFLOW_CHECKPOINT_ROOT``):
   the requests by kind and the bytes sent and received, from the request log of a moto server
   this script starts on 127.0.0.1 (a WSGI wrapper around moto's app writes one JSON line per
   request: method, path, query, body length, response length); on the local datastore, the
   objects and bytes the store holds after the run.  Times: every ``save()`` in the step, the
   end-of-task uploads (the decorator's "Uploaded checkpoint ..." log lines), the train task
   (Metaflow's "Task is starting." to "Task finished successfully.") and the ``run``.
2. **What a kill loses.**  The same flow under ``@retry(times=1)`` kills its attempt 0 after save
   ``--kill-after`` (``SIGKILL``: no hook runs; and ``SIGTERM`` for comparison, what Ctrl+C and
   the preemption watchers send); the retry records which save it resumed from.  "Another
   machine" gives each attempt its own tier base (``temp_dir_root``), "same machine" shares it.

Every flow runs in an isolated Metaflow environment (``bench.flow_environment``).  Nothing here
asserts: the exit status is non-zero only when something fails to run.  See benchmarks/README.md
("Upload policy").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, unquote

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import S3_ENV, flow_environment, fmt_bytes, free_port, remove, run_flow  # noqa: E402

FLOW = "bench_upload_policy_flow.py"
KEEP_BEST = "val_loss:min:1"
#: (label, upload, keep_best) of the cost runs, in pairs each/end.
POLICIES = (
    ("each", "each", None),
    ("end", "end", None),
    ("each, keep_best", "each", KEEP_BEST),
    ("end, keep_best", "end", KEEP_BEST),
)
#: (label, upload, signal, tier shared by the attempts) of the kill runs.
KILLS = (
    ("each, SIGKILL, retry on another machine", "each", "KILL", False),
    ("end, SIGKILL, retry on another machine", "end", "KILL", False),
    ("end, SIGKILL, retry on the same machine", "end", "KILL", True),
    ("end, SIGTERM, retry on another machine", "end", "TERM", False),
)
UPLOADED = re.compile(r"Uploaded checkpoint \S+ to \S+: (\d+) bytes in (\d+) blobs, ([0-9.]+) s")
KINDS = ("PUT", "GET", "HEAD", "LIST", "DELETE")
#: Metaflow's timestamped log lines of the train task starting and finishing.
TASK_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \[\d+/train/\d+ \(pid \d+\)\] "
    r"Task (is starting|finished successfully)\.",
    re.M,
)


def log(msg: str) -> None:
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


# =========================================================================== counting moto
_MOTO = """
import json, sys, threading
from moto.server import DomainDispatcherApplication, create_backend_app
from moto.moto_server.werkzeug_app import MotoRequestHandler
from werkzeug.serving import make_server

app = DomainDispatcherApplication(create_backend_app)
out = open(sys.argv[2], "a", buffering=1)
lock = threading.Lock()


def counting(environ, start_response):
    sent = environ.get("HTTP_X_AMZ_DECODED_CONTENT_LENGTH") or environ.get("CONTENT_LENGTH")
    status = []

    def start(code, headers, exc_info=None):
        status.append(int(code.split()[0]))
        return start_response(code, headers, exc_info)

    body = app(environ, start)
    chunks = list(body)
    if hasattr(body, "close"):
        body.close()
    line = json.dumps({
        "method": environ["REQUEST_METHOD"], "host": environ.get("HTTP_HOST", ""),
        "path": environ.get("PATH_INFO", ""), "query": environ.get("QUERY_STRING", ""),
        "sent": int(sent or 0), "received": sum(len(c) for c in chunks),
        "status": status[0] if status else 0,
    })
    with lock:
        out.write(line + "\\n")
    return chunks


server = make_server("127.0.0.1", int(sys.argv[1]), counting, True,
                     request_handler=MotoRequestHandler)
threading.Thread(target=server.serve_forever, daemon=True).start()
sys.stdin.read()  # until the parent closes our stdin (or dies)
server.shutdown()
"""


class CountingMoto:
    """moto's S3 app in a child process behind a WSGI wrapper logging every request (JSONL)."""

    def __init__(self, work: Path):
        self.port = free_port()
        self.endpoint = "http://127.0.0.1:%d" % self.port
        self.requests = work / "moto-requests.jsonl"
        with open(work / "moto.log", "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _MOTO, str(self.port), str(self.requests)],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, **S3_ENV),
            )
        import socket

        deadline = time.time() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)

    def of_bucket(self, bucket: str) -> list:
        """The logged requests to ``bucket`` (path-style or virtual-hosted)."""
        out = []
        for line in self.requests.read_text().splitlines():
            r = json.loads(line)
            host = r["host"].split(":")[0]
            if host.startswith(bucket + "."):
                name, key = bucket, r["path"].lstrip("/")
            else:
                name, _, key = r["path"].lstrip("/").partition("/")
            if name == bucket:
                out.append(dict(r, key=unquote(key)))
        return out

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - stop it one way or the other
            self.proc.kill()
            self.proc.wait()


def kind_of(r: dict) -> str:
    """The S3 request class of one logged request (multipart calls count as PUTs)."""
    query = parse_qs(r["query"], keep_blank_values=True)
    method = r["method"]
    if method == "GET" and not r["key"]:
        return "LIST"
    if method == "POST" and "delete" in query:
        return "DELETE"
    if method == "POST":
        return "PUT"
    return method


def count_requests(requests: list) -> dict:
    # Not the bucket's creation by this script (PUT on the bucket itself).
    requests = [r for r in requests if r["key"] or r["method"] != "PUT"]
    kinds = Counter(kind_of(r) for r in requests)
    return {
        "requests": dict(kinds),
        "sent": sum(r["sent"] for r in requests if r["method"] in ("PUT", "POST")),
        "received": sum(r["received"] for r in requests if r["method"] == "GET" and r["key"]),
    }


# =========================================================================== flows
def end_uploads(logfile: Path) -> dict:
    """The end-of-task uploads the decorator logged: count, bytes, seconds."""
    found = UPLOADED.findall(logfile.read_text())
    return {
        "count": len(found),
        "bytes": sum(int(b) for b, _n, _s in found),
        "seconds": sum(float(s) for _b, _n, s in found),
    }


def train_task_seconds(logfile: Path) -> float:
    """Wall time of the train task's first attempt: Metaflow's "Task is starting." to its
    "Task finished successfully." (process start, the step, the end upload, persisting)."""
    from datetime import datetime

    start = end = None
    for stamp, what in TASK_LINE.findall(logfile.read_text()):
        at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f")
        if what == "is starting" and start is None:
            start = at
        elif what == "finished successfully" and start is not None and end is None:
            end = at
    return (end - start).total_seconds() if start and end else float("nan")


def local_store(root: Path) -> dict:
    objects = total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            objects += 1
            total += os.path.getsize(os.path.join(dirpath, name))
    return {"objects": objects, "bytes": total}


def run_one(work: Path, tag: str, args, store: dict, upload: str, keep_best, **spec_extra) -> dict:
    """Run the flow once under one policy; return what it measured and what its store saw."""
    out = work / ("result-%s" % tag)
    tier = work / ("tier-%s" % tag)
    spec = dict(
        out=str(out),
        data=str(work / ("data-%s" % tag)),
        saves=args.saves,
        size_mib=args.size_mib,
        files=args.files,
        **spec_extra,
    )
    env = flow_environment(
        work,
        MFCKPT_BENCH_SPEC=json.dumps(spec),
        MFCKPT_BENCH_UPLOAD=upload,
        MFCKPT_BENCH_KEEP_BEST=keep_best or "",
        MFCKPT_BENCH_TIER=str(tier),
        MFCKPT_BENCH_TIER_BY_ATTEMPT="0" if spec_extra.get("same_machine") else "1",
        METAFLOW_CHECKPOINT_ROOT=store["root"].replace("{tag}", tag),
        **store["env"],
    )
    logfile = work / ("flow-%s.log" % tag)
    wall = run_flow(FLOW, env, work, store["top_args"], logfile=logfile)
    result = json.loads(Path(str(out) + ".attempt-0.json").read_text())
    retry = Path(str(out) + ".attempt-1.json")
    result["retry"] = json.loads(retry.read_text()) if retry.exists() else None
    result["run_seconds"] = wall
    result["end_uploads"] = end_uploads(logfile)
    result["task_seconds"] = train_task_seconds(logfile)
    result["tier_bytes"] = local_store(tier)["bytes"]
    remove(tier)
    remove(Path(spec["data"]))
    return result


# =========================================================================== report
def cost_table(raw: dict, args) -> str:
    head = (
        "store",
        "policy",
        "PUT",
        "GET",
        "HEAD",
        "LIST",
        "DELETE",
        "bytes uploaded",
        "checkpoints in store",
        "saves in step",
        "end upload",
        "train task",
    )
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for where in ("local", "s3"):
        for label, _up, _kb in POLICIES:
            r = raw.get("cost", {}).get("%s/%s" % (where, label))
            if r is None:
                continue
            up = r["end_uploads"]
            if where == "s3":
                req = r["store"]["requests"]
                counts = ["%d" % req.get(k, 0) for k in KINDS]
                sent = fmt_bytes(r["store"]["sent"])
            else:
                counts = ["—"] * len(KINDS)
                sent = "%s (stored, %d objects)" % (
                    fmt_bytes(r["store"]["bytes"]),
                    r["store"]["objects"],
                )
            lines.append(
                "| "
                + " | ".join(
                    [
                        "S3 (moto)" if where == "s3" else "local",
                        "`%s`" % label,
                        *counts,
                        sent,
                        "%d" % r["manifests"],
                        "%.2f s" % sum(r["save_seconds"]),
                        ("%.2f s (%d)" % (up["seconds"], up["count"])) if up["count"] else "—",
                        "%.1f s" % r["task_seconds"],
                    ]
                )
                + " |"
            )
    return "\n".join(lines)


def ratio_lines(raw: dict) -> list:
    out = []
    for a, b in ((POLICIES[0][0], POLICIES[1][0]), (POLICIES[2][0], POLICIES[3][0])):
        each, end = raw["cost"].get("s3/" + a), raw["cost"].get("s3/" + b)
        if each is None or end is None:
            continue
        e_req, n_req = each["store"]["requests"], end["store"]["requests"]
        parts = []
        for k in ("PUT", "GET", "HEAD", "LIST"):
            if n_req.get(k):
                parts.append("%s %.1f×" % (k, e_req.get(k, 0) / n_req[k]))
        total_e, total_n = sum(e_req.values()), sum(n_req.values())
        out.append(
            "- S3 `%s` / `%s`: all requests %d / %d = %.1f×; %s; bytes uploaded %.1f×; saves in "
            "step %.1f×."
            % (
                a,
                b,
                total_e,
                total_n,
                total_e / total_n,
                ", ".join(parts),
                each["store"]["sent"] / max(1, end["store"]["sent"]),
                sum(each["save_seconds"]) / sum(end["save_seconds"]),
            )
        )
    return out


def kill_table(raw: dict, args) -> str:
    head = ("store", "scenario", "attempt 0 saved", "retry resumed from", "saves lost")
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|---:|"]
    for where in ("local", "s3"):
        for label, *_rest in KILLS:
            r = raw.get("kill", {}).get("%s/%s" % (where, label))
            if r is None:
                continue
            saved = len(r["save_seconds"])
            resumed = (r["retry"] or {}).get("resumed_from")
            lines.append(
                "| %s | %s | %d | %s | %d |"
                % (
                    "S3 (moto)" if where == "s3" else "local",
                    label,
                    saved,
                    "save %d" % resumed if resumed else "nothing (starts over)",
                    saved - (resumed or 0),
                )
            )
    return "\n".join(lines)


def print_report(raw: dict, args) -> None:
    print(
        "\n## Upload policy: %d saves of %d MiB in %d files (%.0f MiB changing per save)\n"
        % (args.saves, args.size_mib, args.files, args.size_mib / args.files)
    )
    print(cost_table(raw, args))
    print()
    for line in ratio_lines(raw):
        print(line)
    if raw.get("kill"):
        print("\n### A kill after save %d of %d\n" % (args.kill_after, args.saves))
        print(kill_table(raw, args))
    print("\nNotes:")
    print("- load average at start / end: %s / %s" % (raw["load"][0], raw["load"][1]))
    for key, r in sorted(raw.get("cost", {}).items()):
        print(
            "- %s: save() median %.0f ms, training loop %.2f s (rewriting files %.2f s), `run` "
            "wall %.1f s, tier bytes at the end %s, end uploads %s in %d"
            % (
                key,
                1000 * sorted(r["save_seconds"])[len(r["save_seconds"]) // 2],
                r["loop_seconds"],
                r["rewrite_seconds"],
                r["run_seconds"],
                fmt_bytes(r["tier_bytes"]),
                fmt_bytes(r["end_uploads"]["bytes"]),
                r["end_uploads"]["count"],
            )
        )


# =========================================================================== main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--saves", type=int, default=20, help="saves in the training loop (20)")
    p.add_argument("--size-mib", type=int, default=16, help="size of the saved directory (16)")
    p.add_argument("--files", type=int, default=2, help="files in it; the first changes (2)")
    p.add_argument("--kill-after", type=int, default=0, help="kill after this save (3/4 of saves)")
    p.add_argument("--skip-s3", action="store_true", help="local rows only (no moto server)")
    p.add_argument("--skip-local", action="store_true", help="S3 rows only")
    p.add_argument("--skip-kill", action="store_true", help="no kill runs")
    p.add_argument("--workdir", help="where to create the temporary directory")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, request log)")
    p.add_argument("--json", help="also write the raw measurements to this file")
    args = p.parse_args(argv)
    if args.saves < 2 or args.size_mib < 1 or args.files < 1:
        p.error("--saves must be at least 2, --size-mib and --files at least 1")
    args.kill_after = args.kill_after or max(1, args.saves * 3 // 4)
    if not 1 <= args.kill_after <= args.saves:
        p.error("--kill-after must be between 1 and --saves")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mfckpt-bench-upload-", dir=args.workdir))
    raw: dict = {"load": [os.getloadavg()[0], None], "cost": {}, "kill": {}}
    moto = None
    log("work dir %s" % work)
    try:
        stores = []
        if not args.skip_local:
            stores.append(
                ("local", {"root": str(work / "ckpt-{tag}"), "env": {}, "top_args": ()}, None)
            )
        if not args.skip_s3:
            import boto3

            os.environ.update(S3_ENV)
            moto = CountingMoto(work)
            log("moto server on %s" % moto.endpoint)
            client = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1")
            mf_bucket = "mfckpt-upload-mf-%s" % uuid.uuid4().hex[:8]
            client.create_bucket(Bucket=mf_bucket)
            s3 = {
                "root": "",  # a bucket per run (bucket_store)
                "env": dict(
                    S3_ENV,
                    METAFLOW_S3_ENDPOINT_URL=moto.endpoint,
                    METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % mf_bucket,
                ),
                "top_args": ("--datastore=s3",),
            }
            stores.append(("s3", s3, client))

        def bucket_store(where, store, client, tag):
            """The store spec of one run: on S3 a bucket of its own, counted alone."""
            if client is None:
                return dict(store), None
            bucket = "ckpt-%s" % uuid.uuid4().hex[:12]
            client.create_bucket(Bucket=bucket)
            return dict(store, root="s3://%s/ckpt" % bucket), bucket

        for where, store, client in stores:
            for label, upload, keep_best in POLICIES:
                tag = "%s-%s" % (where, re.sub(r"\W+", "-", label))
                log("%s: %s" % (where, label))
                spec, bucket = bucket_store(where, store, client, tag)
                r = run_one(work, tag, args, spec, upload, keep_best)
                if bucket:
                    r["store"] = count_requests(moto.of_bucket(bucket))
                    keys = [x["Key"] for x in _list_all(client, bucket)]
                else:
                    root = Path(store["root"].replace("{tag}", tag))
                    r["store"] = local_store(root)
                    keys = [str(p) for p in root.rglob("*") if p.is_file()]
                r["manifests"] = sum(1 for k in keys if "/manifests/" in k.replace(os.sep, "/"))
                raw["cost"]["%s/%s" % (where, label)] = r
            if args.skip_kill:
                continue
            for label, upload, sig, same in KILLS:
                tag = "%s-kill-%s" % (where, re.sub(r"\W+", "-", label))
                log("%s: %s" % (where, label))
                spec, bucket = bucket_store(where, store, client, tag)
                raw["kill"]["%s/%s" % (where, label)] = run_one(
                    work,
                    tag,
                    args,
                    spec,
                    upload,
                    None,
                    kill_after=args.kill_after,
                    signal=sig,
                    same_machine=same,
                )
        raw["load"][1] = os.getloadavg()[0]
        print_report(raw, args)
        if args.json:
            Path(args.json).write_text(json.dumps(raw, indent=1))
    finally:
        if moto is not None:
            moto.stop()
        if args.keep:
            log("kept %s" % work)
        else:
            remove(work)
    return 0


def _list_all(client, bucket: str) -> list:
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out += page.get("Contents", [])
    return out


if __name__ == "__main__":
    sys.exit(main())
