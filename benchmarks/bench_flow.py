"""The flow ``bench.py`` runs: times ``current.checkpoint`` inside real Metaflow tasks.

Not meant to be run by hand: ``bench.py`` starts it with an isolated environment and passes what
to do in ``MFCKPT_BENCH_SPEC`` (JSON).  ``spec["big"]`` and ``spec["small"]`` are lists of
directories with the same shape but different random bytes (a repeated *first* save needs new
content: equal content would be deduplicated).

* ``start`` saves every directory (each a first save), then saves the first one of each kind
  again unchanged, as the same task does it (its store remembers the files and blobs it saved:
  unchanged large files are not even read again, known blobs are not looked up).  Then
  ``latency_saves`` saves of a directory holding one 4 KiB file whose content changes before
  every save (one new blob and one manifest each).
* ``load`` (a new task in a new process, as a later step or run) loads every checkpoint into a
  fresh directory (a fresh process also keeps memory the saves left in the allocator from hiding
  what the loads need), then saves the first directory of each kind again unchanged: a new
  task's re-save, which reads and hashes every byte and looks every blob up in the store.

Every timed operation is preceded by ``_benchutil.prepare`` (``sync`` and memory recycling, as
for the baselines) and sampled for RSS on a background thread.  Results go to the JSON files
``<out>.save.json`` and ``<out>.load.json``.
"""

import json
import os
import shutil
import statistics
import time

from _benchutil import PeakRSS, prepare, recycle_size
from metaflow import FlowSpec, checkpoint, current, step


def _spec() -> dict:
    return json.loads(os.environ["MFCKPT_BENCH_SPEC"])


def _tree_size(path: str) -> tuple:
    files = total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            files += 1
            total += os.path.getsize(os.path.join(dirpath, name))
    return files, total


def _stats(ref) -> dict:
    """The save statistics stored in the committed manifest of ``ref``."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
        store_for_url,
    )

    return store_for_url(ref["root"]).read(ref["key"]).stats


def _timed(fn, recycle_bytes: int, spec: dict) -> dict:
    prepare(recycle_bytes, spec["recycle"] and recycle_bytes > 0, spec["workdir"])
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - t0
    return dict(rss.to_json(), seconds=seconds, value=value)


def _save(name: str, src: str, recycle_bytes: int, spec: dict) -> dict:
    measured = _timed(lambda: current.checkpoint.save(path=src, name=name), recycle_bytes, spec)
    ref = measured.pop("value")
    measured["stats"] = _stats(ref)
    measured["ref"] = dict(ref)
    return measured


def _latency(tiny_dir: str, count: int) -> dict:
    cp = current.checkpoint
    os.makedirs(tiny_dir, exist_ok=True)
    path = os.path.join(tiny_dir, "state.bin")
    times = []
    for _ in range(count):
        with open(path, "wb") as f:
            f.write(os.urandom(4096))
        t0 = time.perf_counter()
        ref = cp.save(path=tiny_dir, name="tiny")
        times.append(time.perf_counter() - t0)
    return {"seconds": times, "median": statistics.median(times), "last_stats": _stats(ref)}


def _write(path: str, results: dict) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


class CheckpointBenchFlow(FlowSpec):
    """Times save/load of the benchmark directories through ``current.checkpoint``."""

    @checkpoint(load_policy="none")
    @step
    def start(self):
        from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
            transfer_options,
        )

        spec = _spec()
        opts = transfer_options()  # what the decorator's store is built with
        results = {
            "options": {
                "workers": opts.workers,
                "inflight": opts.inflight,
                "chunk_size": opts.chunk_size,
                "small_size": opts.small_size,
            },
        }
        self.refs = {}
        for name in ("big", "small"):
            saves = []
            for src in spec.get(name) or ():
                nbytes = _tree_size(src)[1]
                saves.append(_save(name, src, recycle_size(nbytes), spec))
            if not saves:
                continue
            self.refs[name] = [s["ref"] for s in saves]
            # Nothing new is written by a re-save: no memory recycling needed (sync only).
            results[name] = {"save": saves, "resave": _save(name, spec[name][0], 0, spec)}
        if spec.get("latency_saves"):
            results["tiny"] = _latency(spec["tiny"], int(spec["latency_saves"]))
        _write(spec["out"] + ".save.json", results)
        self.next(self.load)

    @checkpoint(load_policy="none")
    @step
    def load(self):
        spec = _spec()
        cp = current.checkpoint
        results = {}
        for name, refs in self.refs.items():
            loads = []
            for i, ref in enumerate(refs):
                dest = os.path.join(spec["workdir"], "load-%s-%d" % (name, i))
                measured = _timed(
                    lambda ref=ref, dest=dest: cp.load(ref, path=dest),
                    recycle_size(ref["size"]),
                    spec,
                )
                measured.pop("value")
                measured["files"], measured["bytes"] = _tree_size(dest)
                shutil.rmtree(dest)
                loads.append(measured)
            # A new task re-saving unchanged data starts with no memory of stored blobs.
            results[name] = {"load": loads, "resave_cold": _save(name, spec[name][0], 0, spec)}
        _write(spec["out"] + ".load.json", results)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CheckpointBenchFlow()
