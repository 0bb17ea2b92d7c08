"""The flow ``bench_distributed.py`` runs for the ``@parallel`` target (benchmark 2).

Not meant to be run by hand: ``bench_distributed.py`` starts it in an isolated environment with
the venv's ``bin`` first on ``PATH`` (local ``@parallel`` starts its workers with ``python``) and
passes what to do in ``MFCKPT_BENCH_SPEC`` (JSON).

* ``start`` (a plain ``@checkpoint`` step, one process) saves each directory of
  ``spec["single"]`` (the whole size, e.g. 1 GiB) and times ``save()``.
* ``train`` (``@checkpoint @parallel``, ``num_parallel=spec["world"]``) does, for every round
  ``r``, a sharded save (``save(..., sharded=True)``, ADR 004) in which rank ``k`` saves
  ``spec["gang"][r][k]`` (its share, e.g. 512 MiB): one checkpoint with a shard per rank.
  Before each round the ranks meet at a file barrier in ``spec["barrier"]``: each announces it
  is ready, rank 0 runs ``_benchutil.prepare`` (sync and memory recycling for the gang's bytes,
  as before the single save) and then releases everyone; each rank times its ``save()`` from
  the call to its return.  A tiny sharded save first warms up (untimed).  Wrappers around
  ``core.gang.write_part`` and ``core.gang._wait`` record when the rank's part was written and
  how long it waited for the other parts (rank 0) or for the commit (other ranks).
  ``spec["gang_poll"]`` (``--gang-poll``, what-if experiments only) replaces the poll interval
  of those waits.
* Then, for every directory of ``spec["rank0"]`` (the whole size), a **rank-0-only** round: the
  same barrier and ``prepare``, then rank 0 alone calls a plain ``save()`` (the
  ``if rank == 0: save()`` pattern) while rank 1 does nothing but wait, sleeping, for rank 0's
  "done" file.  The same wrappers record any gang protocol step rank 0 takes (there must be
  none: a plain save never waits).

Results: ``<out>.single.json`` and ``<out>.rank-<k>.json`` (``saves``: the sharded rounds;
``rank0_saves`` on rank 0: the rank-0-only rounds).
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


def _wait_for(paths, timeout: float = 600.0, interval: float = 0.0005) -> None:
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(p) for p in paths):
        if time.monotonic() > deadline:
            raise RuntimeError("barrier: %s missing after %g s" % (paths, timeout))
        time.sleep(interval)


def _barrier(spec: dict, tag: str, rank: int, world: int, prepare_bytes: int) -> None:
    """Every rank arrives; rank 0 runs ``prepare`` for ``prepare_bytes`` and releases them."""
    barrier = spec["barrier"]
    _touch(os.path.join(barrier, "%s-ready-%d" % (tag, rank)))
    go = os.path.join(barrier, "%s-go" % tag)
    if rank == 0:
        _wait_for([os.path.join(barrier, "%s-ready-%d" % (tag, k)) for k in range(world)])
        prepare(recycle_size(prepare_bytes), spec["recycle"], spec["workdir"])
        _touch(go)
    else:
        _wait_for([go])


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

    def timed_wait(check, timeout, interval, *rest):
        # rest: describe, stop (the gone markers and signals that end a wait early)
        t0 = time.time()
        out = wait(check, timeout, interval if poll is None else poll, *rest)
        events.append(("waited", t0, time.time() - t0))
        return out

    gang.write_part, gang._wait = timed_write_part, timed_wait


class ParallelSaveBenchFlow(FlowSpec):
    """One process saving the whole size; then a gang of ranks each saving a share of it (sharded),
    and rank 0 alone saving the whole size (plain save)."""

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
        # Untimed; every rank returns once the sharded checkpoint is committed.
        cp.save(path=tiny, name="warmup", sharded=True)
        if rank == 0:
            cp.save(path=tiny, name="warmup-rank0")  # untimed: the plain save's first call
        events: list = []
        _instrument_gang(events, spec.get("gang_poll"))
        saves = []
        for r, shares in enumerate(spec["gang"]):
            src = shares[rank]
            nbytes = _tree_bytes(src)
            _barrier(spec, "sharded-%d" % r, rank, world, sum(_tree_bytes(s) for s in shares))
            del events[:]
            w0, t0 = time.time(), time.perf_counter()
            ref = cp.save(path=src, name="gang", sharded=True)
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
        rank0_saves = []
        for r, src in enumerate(spec["rank0"]):
            nbytes = _tree_bytes(src)
            _barrier(spec, "rank0-%d" % r, rank, world, nbytes)
            done = os.path.join(barrier, "rank0-%d-done" % r)
            if rank != 0:
                # Does nothing: a sleeping wait, so that it takes no CPU from rank 0's save.
                _wait_for([done], interval=0.05)
                continue
            del events[:]
            w0, t0 = time.time(), time.perf_counter()
            ref = cp.save(path=src, name="rank0")
            seconds = time.perf_counter() - t0
            _touch(done)
            rank0_saves.append(
                {
                    "bytes": nbytes,
                    "seconds": seconds,
                    "start": w0,
                    "events": list(events),
                    "key": ref["key"],
                    "stats": dict(ref["stats"]),
                }
            )
        with open(spec["out"] + ".rank-%d.json" % rank, "w") as f:
            json.dump(
                {
                    "rank": rank,
                    "world": world,
                    "pid": os.getpid(),
                    "saves": saves,
                    "rank0_saves": rank0_saves,
                },
                f,
            )
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ParallelSaveBenchFlow()
