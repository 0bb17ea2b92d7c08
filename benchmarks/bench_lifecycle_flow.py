"""The flow ``bench_lifecycle.py`` runs: many saves of a changing directory under keep-last-N.

Not meant to be run by hand: ``bench_lifecycle.py`` starts it in an isolated environment and
passes what to do in ``MFCKPT_BENCH_SPEC`` (JSON).  ``MFCKPT_BENCH_KEEP_LAST`` (default 3) is the
``keep_last`` of the decorator (read at import: decorator attributes are fixed when the flow
file is loaded).

* ``train`` (``@checkpoint(keep_last=N)``) writes ``spec["files"]`` random files,
  ``spec["size_mib"]`` MiB in all, into ``spec["data"]``, then saves that directory
  ``spec["saves"]`` times; before every save but the first, one file (in turn) gets new random
  bytes.  Each save after the first therefore adds one new blob of ``size_mib / files`` MiB, and
  the decorator's retention deletes the manifests of all but the newest N checkpoints after each
  save (the blobs stay until garbage collection).
* It times every ``save()`` (retention included) and, separately, the retention step inside it;
  then lists the task's checkpoints to check that N remain.  Results go to ``<out>.json``.
"""

import json
import os
import shutil
import time

from metaflow import FlowSpec, checkpoint, current, step

KEEP_LAST = int(os.environ.get("MFCKPT_BENCH_KEEP_LAST", "3"))
MiB = 1 << 20


def _spec() -> dict:
    return json.loads(os.environ["MFCKPT_BENCH_SPEC"])


def _write_random(path: str, nbytes: int) -> None:
    with open(path, "wb") as f:
        left = nbytes
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n


class LifecycleBenchFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @checkpoint(keep_last=KEEP_LAST)
    @step
    def train(self):
        spec = _spec()
        data = spec["data"]
        shutil.rmtree(data, ignore_errors=True)
        os.makedirs(data)
        per_file = spec["size_mib"] * MiB // spec["files"]
        names = ["part-%02d.bin" % i for i in range(spec["files"])]
        for name in names:
            _write_random(os.path.join(data, name), per_file)

        cp = current.checkpoint
        prune_times = []
        # Instrumentation only: time the retention step that save() runs after each commit.
        original = getattr(cp, "_apply_retention", None)
        if original is not None:

            def timed_retention(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    prune_times.append(time.perf_counter() - t0)

            cp._apply_retention = timed_retention

        save_times, rewrite_seconds = [], 0.0
        t_loop = time.perf_counter()
        for i in range(spec["saves"]):
            if i:
                t0 = time.perf_counter()
                _write_random(os.path.join(data, names[i % len(names)]), per_file)
                rewrite_seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            ref = cp.save(path=data, metadata={"save": i})
            save_times.append(time.perf_counter() - t0)
        loop_seconds = time.perf_counter() - t_loop
        remaining = cp.list()
        result = {
            "keep_last": KEEP_LAST,
            "saves": spec["saves"],
            "files": spec["files"],
            "file_bytes": per_file,
            "dir_bytes": per_file * len(names),
            "save_seconds": save_times,
            "prune_seconds": prune_times,
            "rewrite_seconds": rewrite_seconds,
            "loop_seconds": loop_seconds,
            "root": ref["root"],
            "remaining": [r["key"] for r in remaining],
            "remaining_saves": [r["metadata"].get("save") for r in remaining],
        }
        with open(spec["out"] + ".json", "w") as f:
            json.dump(result, f)
        shutil.rmtree(data, ignore_errors=True)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LifecycleBenchFlow()
