"""How long ``TrainingState.save`` blocks training: blocking, the old async, the staged async.

A ``TrainingState`` of one model (an MLP of ``--mib`` MiB of float32 parameters, 1 GiB by
default) is saved through a real ``current.checkpoint`` (``build_runtime`` on a local store in
a temporary directory), three ways, interleaved in each round:

- ``blocking``: ``state.save(ckpt)``; blocked = committed.
- ``write + save(blocking=False)``: what ``save(..., blocking=False)`` did before the state was
  staged in memory: ``state.write(ckpt.directory)`` (safetensors to disk) in the caller, then
  ``ckpt.save(blocking=False)`` (an in-kernel snapshot copy; hash, upload, commit in the
  background).
- ``staged (blocking=False)``: ``state.save(ckpt, blocking=False)`` now: copy to host memory
  in the caller, write and commit in the background.
- ``memcpy``: the floor for the staged call: ``copy_`` of every parameter into buffers that are
  already faulted in (what the staged save does from its second call on, reusing its buffers).

"blocked" is the time the call takes (the training loop is stopped), "committed" the time
until ``handle.wait()`` returns.  Every parameter changes before each save (the store
de-duplicates identical blobs) and each round starts from a synced, empty store.  Before every
timed save, memory is recycled (``_benchutil.prepare``): see there why.

Usage::

    .venv/bin/python benchmarks/bench_async_state.py              # 1 GiB, 3 rounds
    .venv/bin/python benchmarks/bench_async_state.py --mib 64 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _benchutil import MiB, prepare, recycle_size  # noqa: E402

from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope  # noqa: E402
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import (  # noqa: E402
    CheckpointStore,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.frameworks.pytorch import (  # noqa: E402
    TrainingState,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import (  # noqa: E402
    LocalStorage,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.builder import (  # noqa: E402
    build_runtime,
)


def make_model(mib: int) -> torch.nn.Module:
    """An MLP of square layers holding ``mib`` MiB of float32 parameters (no biases)."""
    width = 4096  # 64 MiB per layer
    layers = max(1, round(mib * MiB / (width * width * 4)))
    model = torch.nn.Sequential(*(torch.nn.Linear(width, width, bias=False) for _ in range(layers)))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    return model


def runtime(work: str, attempt: int):
    store = CheckpointStore(LocalStorage(os.path.join(work, "store")))
    scope = Scope("user:bench", "BenchFlow", "train", "_", "1", "2", attempt)
    directory = os.path.join(work, "dir%d" % attempt)
    os.makedirs(directory, exist_ok=True)
    return build_runtime(store, scope, directory, log=lambda msg: None)


def one(kind: str, state: TrainingState, ckpt, nbytes: int, work: str) -> tuple[float, float]:
    with torch.no_grad():  # every blob differs from the last save's
        for p in state.model.parameters():
            p.add_(1.0)
    state.step += 1
    prepare(recycle_size(nbytes), True, work)
    start = time.perf_counter()
    if kind == "memcpy":  # the floor: copying every parameter into memory already mapped
        buffers = [torch.empty_like(p) for p in state.model.parameters()]
        for b in buffers:
            b.fill_(0)  # faulted in before the clock starts
        start = time.perf_counter()
        with torch.no_grad():
            for b, p in zip(buffers, state.model.parameters()):
                b.copy_(p)
        blocked = time.perf_counter() - start
        return blocked, blocked
    if kind == "blocking":
        state.save(ckpt)
        blocked = time.perf_counter() - start
        return blocked, blocked
    if kind == "old":
        state.write(ckpt.directory)
        handle = ckpt.save(metadata={"step": state.step}, blocking=False)
    else:
        handle = state.save(ckpt, blocking=False)
    blocked = time.perf_counter() - start
    handle.wait()
    return blocked, time.perf_counter() - start


KINDS = [
    ("memcpy", "memcpy of the parameters (floor)"),
    ("blocking", "blocking"),
    ("old", "write + save(blocking=False)"),
    ("staged", "staged (blocking=False)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="state size in MiB (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    model = make_model(args.mib)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    state = TrainingState(model=model, rng=True)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k, _ in KINDS}
    for r in range(args.rounds):
        order = KINDS[r % len(KINDS) :] + KINDS[: r % len(KINDS)]  # rotate who goes first
        for kind, _ in order:
            work = tempfile.mkdtemp(prefix="bench-async-state-", dir=args.dir)
            try:
                ckpt = runtime(work, r)
                times[kind].append(one(kind, state, ckpt, nbytes, work))
                ckpt.flush()
            finally:
                shutil.rmtree(work, ignore_errors=True)

    print(
        "TrainingState of %d MiB (%d parameters), local store, median of %d interleaved rounds"
        % (nbytes // MiB, nbytes // 4, args.rounds)
    )
    print()
    base = statistics.median(b for b, _ in times["blocking"])
    print("| save | blocked (s) | committed (s) | blocked vs blocking |")
    print("| --- | ---: | ---: | ---: |")
    for kind, label in KINDS:
        blocked = statistics.median(b for b, _ in times[kind])
        total = statistics.median(t for _, t in times[kind])
        print("| %s | %.3f | %.3f | %.2fx |" % (label, blocked, total, blocked / base))
    print()
    print(
        "rounds (blocked/committed s): "
        + "; ".join("%s %s" % (k, ", ".join("%.2f/%.2f" % bt for bt in times[k])) for k, _ in KINDS)
    )


if __name__ == "__main__":
    main()
