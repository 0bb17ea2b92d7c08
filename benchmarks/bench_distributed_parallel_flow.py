"""The flow ``bench_distributed.py`` runs for the ``@parallel`` target (benchmark 2).

Not meant to be run by hand: ``bench_distributed.py`` starts it in an isolated environment with
the venv's ``bin`` first on ``PATH`` (local ``@parallel`` starts its workers with ``python``) and
passes what to do in ``MFCKPT_BENCH_SPEC`` (JSON).

* ``start`` (a plain ``@checkpoint`` step, one process) saves each directory of
  ``spec["single"]`` (the whole size, e.g. 1 GiB) and times ``save()``.
* ``train`` (``@checkpoint @parallel``, ``num_parallel=spec["world"]``) does, for every round
  ``r``, a gang save in which rank ``k`` saves ``spec["gang"][r][k]`` (its share, e.g. 512 MiB):
  one checkpoint with a shard per rank.  Before each round the ranks meet at a file barrier in
  ``spec["barrier"]``: each announces it is ready, rank 0 runs ``_benchutil.prepare`` (sync and
  memory recycling for the gang's bytes, as before the single save) and then releases everyone;
  each rank times its ``save()`` from the call to its return.  A tiny gang save first warms up
  (untimed).  Wrappers around ``core.gang.write_part`` and ``core.gang._wait`` record when the
  rank's part was written and how long it waited for the other parts (rank 0) or for the
  commit (other ranks).  ``spec["gang_poll"]`` (``--gang-poll``, what-if experiments only)
  replaces the poll interval of those waits.

Results: ``<out>.single.json`` and ``<out>.rank-<k>.json``.
"""

import json
import os
import time

from _benchutil import prepare, recycle_size
from metaflow import FlowSpec, checkpoint, current, parallel, step


def _spec() -> dict:
    return json.loads(os.environ["MFCKPT_BENCH_SPEC"])


def _tree_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(d, n)) for d, _dirs, names in os.walk(path) for n in names
    )


def _touch(path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(time.time()))
    os.replace(tmp, path)


def _wait_for(paths, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(p) for p in paths):
        if time.monotonic() > deadline:
            raise RuntimeError("barrier: %s missing after %g s" % (paths, timeout))
        time.sleep(0.0005)


def _instrument_gang(events: list, poll=None) -> None:
    """Record (event, wall time, seconds) of this rank's gang protocol steps; ``poll`` (what-if
    experiments only) replaces the protocol's poll interval."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.core import gang

    write_part, wait = gang.write_part, gang._wait

    def timed_write_part(*args, **kwargs):
        t0 = time.time()
        out = write_part(*args, **kwargs)
        events.append(("part_written", t0, time.time() - t0))
        return out

    def timed_wait(check, timeout, interval, describe):
        t0 = time.time()
        out = wait(check, timeout, interval if poll is None else poll, describe)
        events.append(("waited", t0, time.time() - t0))
        return out

    gang.write_part, gang._wait = timed_write_part, timed_wait


class ParallelSaveBenchFlow(FlowSpec):
    """One process saving the whole size, then a gang of ranks each saving a share of it."""

    @checkpoint(load_policy="none")
    @step
    def start(self):
        spec = _spec()
        cp = current.checkpoint
        tiny = os.path.join(spec["tiny"], "single")
        os.makedirs(tiny, exist_ok=True)
        with open(os.path.join(tiny, "w.bin"), "wb") as f:
            f.write(os.urandom(4096))
        cp.save(path=tiny, name="warmup")  # untimed: imports, clients
        saves = []
        for src in spec["single"]:
            nbytes = _tree_bytes(src)
            prepare(recycle_size(nbytes), spec["recycle"], spec["workdir"])
            w0, t0 = time.time(), time.perf_counter()
            ref = cp.save(path=src, name="single")
            seconds = time.perf_counter() - t0
            saves.append(
                {
                    "bytes": nbytes,
                    "seconds": seconds,
                    "start": w0,
                    "stats": dict(ref["stats"]),
                    "key": ref["key"],
                }
            )
        with open(spec["out"] + ".single.json", "w") as f:
            json.dump({"saves": saves, "pid": os.getpid()}, f, indent=1)
        self.next(self.train, num_parallel=spec["world"])

    @checkpoint(load_policy="none")
    @parallel
    @step
    def train(self):
        spec = _spec()
        cp = current.checkpoint
        rank, world = current.parallel.node_index, current.parallel.num_nodes
        barrier = spec["barrier"]
        os.makedirs(barrier, exist_ok=True)
        tiny = os.path.join(spec["tiny"], "rank-%d" % rank)
        os.makedirs(tiny, exist_ok=True)
        with open(os.path.join(tiny, "w.bin"), "wb") as f:
            f.write(os.urandom(4096))
        cp.save(path=tiny, name="warmup")  # untimed; every rank returns once it is committed
        events: list = []
        _instrument_gang(events, spec.get("gang_poll"))
        saves = []
        for r, shares in enumerate(spec["gang"]):
            src = shares[rank]
            nbytes = _tree_bytes(src)
            _touch(os.path.join(barrier, "%d-ready-%d" % (r, rank)))
            go = os.path.join(barrier, "%d-go" % r)
            if rank == 0:
                _wait_for([os.path.join(barrier, "%d-ready-%d" % (r, k)) for k in range(world)])
                total = sum(_tree_bytes(s) for s in shares)
                prepare(recycle_size(total), spec["recycle"], spec["workdir"])
                _touch(go)
            else:
                _wait_for([go])
            del events[:]
            w0, t0 = time.time(), time.perf_counter()
            ref = cp.save(path=src, name="gang")
            seconds = time.perf_counter() - t0
            w1 = time.time()
            saves.append(
                {
                    "bytes": nbytes,
                    "seconds": seconds,
                    "start": w0,
                    "end": w1,
                    "events": list(events),
                    "key": ref["key"],
                    "files": ref["files_count"],
                    "size": ref["size"],
                }
            )
        with open(spec["out"] + ".rank-%d.json" % rank, "w") as f:
            json.dump({"rank": rank, "world": world, "pid": os.getpid(), "saves": saves}, f)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ParallelSaveBenchFlow()
