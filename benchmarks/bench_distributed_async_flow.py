"""The flow ``bench_distributed.py`` runs for the background-save target (benchmark 1).

Not meant to be run by hand: ``bench_distributed.py`` starts it in an isolated environment
(``--datastore=s3`` for the S3 rows) and passes what to do in ``MFCKPT_BENCH_SPEC`` (JSON).
``MFCKPT_BENCH_TMP`` is the decorator's ``temp_dir_root`` (read at import), so that the
snapshots of background saves are written where the ``cp -r`` baseline writes its copies.

``start`` first saves a 4 KiB directory once blocking and once in the background (untimed: lazy
imports, the background worker thread).  Then, for every pair ``(spec["async"][i],
spec["blocking"][i])`` of directories with the same shape and different random bytes (equal
bytes would be deduplicated):

* background save: ``h = current.checkpoint.save(path=a, blocking=False)`` is timed until it
  returns (how long the step is blocked: the snapshot) and until ``h.wait()`` returns (the whole
  save: snapshot, hashing, upload, commit), the step doing nothing else meanwhile;
* blocking save: ``current.checkpoint.save(path=b)``;
* baseline: ``cp -r a <temp_dir_root>/cp-baseline`` (a subprocess), next to the background save
  of the same directory, so that both meet the same state of the machine.

The order of the three rotates over the repeats.  Each is preceded by ``_benchutil.prepare`` (sync
and memory recycling for the bytes it makes the machine write: the snapshot, the local store or
moto's files).  Results go to ``spec["out"]`` (JSON).
"""

import glob
import json
import os
import shutil
import subprocess
import time

from _benchutil import prepare, recycle_size
from metaflow import FlowSpec, checkpoint, current, step

TMP = os.environ.get("MFCKPT_BENCH_TMP") or None


def _spec() -> dict:
    return json.loads(os.environ["MFCKPT_BENCH_SPEC"])


def _tree_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(d, n)) for d, _dirs, names in os.walk(path) for n in names
    )


def _wait_staging_removed(parent: str, timeout: float = 60.0) -> float:
    """The worker removes a snapshot right after it commits it (after ``wait()`` returned):
    wait until it is gone so that the next timed save does not overlap that removal."""
    t0 = time.perf_counter()
    while glob.glob(os.path.join(parent, ".mfckpt-snapshot-*")):
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError("a background-save snapshot was not removed within %g s" % timeout)
        time.sleep(0.002)
    return time.perf_counter() - t0


class AsyncSaveBenchFlow(FlowSpec):
    """Times ``save(blocking=False)`` against ``save()`` of same-sized directories."""

    @checkpoint(load_policy="none", temp_dir_root=TMP)
    @step
    def start(self):
        from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
            async_budget,
            transfer_options,
        )

        spec = _spec()
        cp = current.checkpoint
        staging_parent = os.path.dirname(cp.directory)
        opts = transfer_options()
        results = {
            "options": {
                "workers": opts.workers,
                "inflight": opts.inflight,
                "chunk_size": opts.chunk_size,
                "async_budget": async_budget(),
            },
            "async": [],
            "blocking": [],
            "cp": [],
        }
        # Warm-up, untimed: imports, clients, the background worker thread.
        tiny = spec["tiny"]
        os.makedirs(tiny, exist_ok=True)
        for blocking in (True, False):
            with open(os.path.join(tiny, "w.bin"), "wb") as f:
                f.write(os.urandom(4096))
            out = cp.save(path=tiny, name="warmup", blocking=blocking)
            if not blocking:
                out.wait()
        _wait_staging_removed(staging_parent)

        kinds = ("async", "cp", "blocking")
        for i, (a, b) in enumerate(zip(spec["async"], spec["blocking"])):
            # Rotate the order (a Latin square over the repeats) so that drift hits all alike.
            order = kinds[i % 3 :] + kinds[: i % 3]
            for kind in order:
                if kind == "async":
                    nbytes = _tree_bytes(a)
                    # The snapshot writes nbytes, then the store (or moto's files) once more.
                    prepare(recycle_size(2 * nbytes), spec["recycle"], staging_parent)
                    t0 = time.perf_counter()
                    handle = cp.save(path=a, name="async", metadata={"i": i}, blocking=False)
                    t1 = time.perf_counter()
                    ref = handle.wait()
                    t2 = time.perf_counter()
                    removed = _wait_staging_removed(staging_parent)
                    results["async"].append(
                        {
                            "path": a,
                            "bytes": nbytes,
                            "blocked": t1 - t0,
                            "total": t2 - t0,
                            "staging_removal_wait": removed,
                            "stats": dict(ref["stats"]),
                            "key": ref["key"],
                            "order": order.index(kind),
                        }
                    )
                elif kind == "cp":
                    # The baseline, on the same directory as the background save, next to it.
                    nbytes = _tree_bytes(a)
                    dst = os.path.join(staging_parent, "cp-baseline")
                    prepare(recycle_size(nbytes), spec["recycle"], staging_parent)
                    t0 = time.perf_counter()
                    subprocess.run(["cp", "-r", a, dst], check=True)
                    t1 = time.perf_counter()
                    shutil.rmtree(dst)
                    results["cp"].append(
                        {"path": a, "bytes": nbytes, "seconds": t1 - t0, "order": order.index(kind)}
                    )
                else:
                    nbytes = _tree_bytes(b)
                    prepare(recycle_size(nbytes), spec["recycle"], staging_parent)
                    t0 = time.perf_counter()
                    ref = cp.save(path=b, name="blocking", metadata={"i": i})
                    t1 = time.perf_counter()
                    results["blocking"].append(
                        {
                            "path": b,
                            "bytes": nbytes,
                            "seconds": t1 - t0,
                            "stats": dict(ref["stats"]),
                            "key": ref["key"],
                            "order": order.index(kind),
                        }
                    )
        with open(spec["out"], "w") as f:
            json.dump(results, f, indent=1)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    AsyncSaveBenchFlow()
