"""The flow ``bench_upload_policy.py`` runs: a training-like loop under one upload policy.

Not meant to be run by hand: ``bench_upload_policy.py`` starts it in an isolated environment and
passes what to do in ``MFCKPT_BENCH_SPEC`` (JSON).  The decorator's attributes are read at import
(they are fixed when the flow file is loaded): ``MFCKPT_BENCH_UPLOAD`` (``each``/``end``),
``MFCKPT_BENCH_KEEP_BEST`` (a ``keep_best`` rule, or empty), ``MFCKPT_BENCH_TIER`` (the tier's
base, ``temp_dir_root``) and ``MFCKPT_BENCH_TIER_BY_ATTEMPT=1`` (each attempt gets its own tier
base under it, as a retry on another machine would).

* ``train`` (``@checkpoint``, ``@retry(times=1)``), attempt 0: writes ``spec["files"]`` random
  files, ``spec["size_mib"]`` MiB in all, into ``spec["data"]`` and saves that directory
  ``spec["saves"]`` times with metadata ``{"step": i, "val_loss": ...}`` (lowest at 60% of the
  saves).  Before every save but the first, the first file (the "weights") gets new random bytes;
  the others (frozen layers, tokenizer) stay as they are.  Every ``save()`` is timed.  With
  ``spec["kill_after"] = k`` the task kills itself after save ``k``: ``SIGKILL`` (a hard kill:
  no hook runs) or, with ``spec["signal"] = "TERM"``, ``SIGTERM`` (what Ctrl+C and the
  preemption watchers deliver).  The retry (attempt 1) records which save it resumed from
  (``current.checkpoint.info``'s ``step``, or none) and ends.
* Results go to ``<out>.attempt-<n>.json``; attempt 0 rewrites its file after every save, so a
  killed attempt leaves what it did.
"""

import json
import os
import shutil
import signal
import sys
import time

from metaflow import FlowSpec, checkpoint, current, retry, step

MiB = 1 << 20
UPLOAD = os.environ.get("MFCKPT_BENCH_UPLOAD", "each")
KEEP_BEST = os.environ.get("MFCKPT_BENCH_KEEP_BEST") or None
TIER = os.environ.get("MFCKPT_BENCH_TIER") or None
# The task's attempt, from its command line (`step train ... --retry-count N`).
ATTEMPT = int(sys.argv[sys.argv.index("--retry-count") + 1]) if "--retry-count" in sys.argv else 0
if TIER and os.environ.get("MFCKPT_BENCH_TIER_BY_ATTEMPT") == "1":
    TIER = os.path.join(TIER, "attempt-%d" % ATTEMPT)


def _spec() -> dict:
    return json.loads(os.environ["MFCKPT_BENCH_SPEC"])


def _write_random(path: str, nbytes: int) -> None:
    with open(path, "wb") as f:
        left = nbytes
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n


def _dump(spec: dict, attempt: int, result: dict) -> None:
    path = "%s.attempt-%d.json" % (spec["out"], attempt)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)


class UploadPolicyBenchFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @checkpoint(upload=UPLOAD, keep_best=KEEP_BEST, temp_dir_root=TIER)
    @retry(times=1)
    @step
    def train(self):
        spec = _spec()
        if current.retry_count:
            info = current.checkpoint.info
            _dump(
                spec,
                current.retry_count,
                {
                    "resumed_from": info["metadata"].get("step") if info is not None else None,
                    "resumed_key": info["key"] if info is not None else None,
                },
            )
            self.next(self.end)
            return
        data = spec["data"]
        shutil.rmtree(data, ignore_errors=True)
        os.makedirs(data)
        per_file = spec["size_mib"] * MiB // spec["files"]
        names = ["part-%02d.bin" % i for i in range(spec["files"])]
        for name in names:
            _write_random(os.path.join(data, name), per_file)
        saves, kill_after = spec["saves"], spec.get("kill_after") or 0
        best_at = max(1, round(0.6 * saves))
        result = {"root": None, "save_seconds": [], "rewrite_seconds": 0.0, "keys": []}
        t_loop = time.perf_counter()
        for i in range(1, saves + 1):
            if i > 1:
                t0 = time.perf_counter()
                _write_random(os.path.join(data, names[0]), per_file)
                result["rewrite_seconds"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            ref = current.checkpoint.save(
                path=data, metadata={"step": i, "val_loss": 1.0 + abs(i - best_at) / saves}
            )
            result["save_seconds"].append(time.perf_counter() - t0)
            result["root"] = ref["root"]
            result["keys"].append(ref["key"])
            result["loop_seconds"] = time.perf_counter() - t_loop
            if i == kill_after:
                _dump(spec, 0, result)
                sig = signal.SIGTERM if spec.get("signal") == "TERM" else signal.SIGKILL
                os.kill(os.getpid(), sig)
                time.sleep(60)  # SIGTERM: the decorator's handler ends the task
        _dump(spec, 0, result)
        shutil.rmtree(data, ignore_errors=True)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    UploadPolicyBenchFlow()
