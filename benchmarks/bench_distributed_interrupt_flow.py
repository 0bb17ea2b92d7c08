"""The flow ``bench_distributed.py`` runs for the SIGTERM target (benchmark 3).

Not meant to be run by hand: ``bench_distributed.py`` starts it in an isolated environment,
passes what to do in ``MFCKPT_BENCH_SPEC`` (JSON) and sends the task SIGTERM from outside.
``MFCKPT_BENCH_INTERRUPTS`` (read at import: decorator attributes are fixed when the flow file is
loaded) is the number of attempts that get interrupted; ``@retry`` allows one more.

``start`` has ``@checkpoint(save_on_interrupt=True)``.  Each attempt ``k`` below that number
writes ``spec["files"]`` files of fresh random bytes, ``spec["state_bytes"]`` in all, into
``current.checkpoint.directory`` (overwriting what the retry loaded: every byte is new, nothing
of it was ever saved), writes ``ready-<k>.json`` (its pid, the store root and the task's manifest
prefix) and then "trains" (hashing 1 MiB, sleeping 5 ms, forever) until the benchmark's SIGTERM
makes the decorator save the directory as the final checkpoint and fail the attempt.  An
``on_interrupt`` callback records when the handler started (``handler-<k>.json``).  Each retry
records what it loaded (``loaded-<k>.json``); the last attempt just finishes.
"""

import hashlib
import json
import os
import time

from metaflow import FlowSpec, checkpoint, current, retry, step

INTERRUPTS = int(os.environ.get("MFCKPT_BENCH_INTERRUPTS", "1"))
MiB = 1 << 20


def _spec() -> dict:
    return json.loads(os.environ["MFCKPT_BENCH_SPEC"])


def _dump(path: str, value: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _train_until_interrupted(spec: dict, attempt: int) -> None:
    """Write fresh state, announce readiness, then train until SIGTERM."""
    out, cp = spec["out"], current.checkpoint
    per_file = spec["state_bytes"] // spec["files"]
    for i in range(spec["files"]):
        with open(os.path.join(cp.directory, "state-%02d.bin" % i), "wb") as f:
            left = per_file
            while left:
                n = min(left, 8 * MiB)
                f.write(os.urandom(n))
                left -= n

    def handler_started(attempt=attempt):
        _dump(os.path.join(out, "handler-%d.json" % attempt), {"time": time.time()})

    cp.on_interrupt(handler_started)
    _dump(
        os.path.join(out, "ready-%d.json" % attempt),
        {
            "pid": os.getpid(),
            "attempt": attempt,
            "time": time.time(),
            # The store's root (a benchmark may read internals) and this task's prefix.
            "root": cp._store.url,
            "task_prefix": cp.scope.task_prefix(),
        },
    )
    batch = os.urandom(MiB)
    deadline = time.monotonic() + spec["timeout"]
    while time.monotonic() < deadline:  # "training", until SIGTERM interrupts it
        hashlib.sha256(batch).digest()
        time.sleep(0.005)
    raise RuntimeError("no SIGTERM within %s s" % spec["timeout"])


class InterruptSaveBenchFlow(FlowSpec):
    """Gets SIGTERM mid-training ``INTERRUPTS`` times; each retry resumes from the final save."""

    @checkpoint(save_on_interrupt=True)
    @retry(times=INTERRUPTS, minutes_between_retries=0)
    @step
    def start(self):
        spec = _spec()
        out = spec["out"]
        cp = current.checkpoint
        attempt = current.retry_count
        if attempt > 0:
            info = cp.info
            files = sorted(os.listdir(cp.directory))
            _dump(
                os.path.join(out, "loaded-%d.json" % attempt),
                {
                    "is_loaded": cp.is_loaded,
                    "attempt": info.attempt if info else None,
                    "metadata": dict(info.metadata) if info else None,
                    "key": info.key if info else None,
                    "files": len(files),
                    "bytes": sum(os.path.getsize(os.path.join(cp.directory, n)) for n in files),
                },
            )
        if attempt < INTERRUPTS:
            _train_until_interrupted(spec, attempt)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    InterruptSaveBenchFlow()
