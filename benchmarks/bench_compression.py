"""When ``@checkpoint(compression="zstd")`` pays: size, save and load time against plain saves.

    python benchmarks/bench_compression.py                  # 64 MiB of each kind, local and S3
    python benchmarks/bench_compression.py --mib 16 --skip-s3

Two checkpoints, written under a temporary directory:

* ``model``: a real ``model.safetensors`` of a small torch MLP with its random initial weights
  (float32, what a model looks like before and, to a compressor, after training);
* ``logs``: a text-heavy directory, JSONL metrics and CSV logs in 50 files.

Each is saved and loaded through :class:`CheckpointStore` with the options a task uses
(``common.settings.transfer_options``), plain and with ``compression="zstd"``, into a fresh store
each time, on a local directory and on S3 (moto on 127.0.0.1, in a child process).  Times are
medians of ``--repeat`` runs; "stored" is the bytes under ``blobs/`` after the save.  Nothing
asserts; see benchmarks/README.md ("Compression") for the reading.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import S3_ENV, MotoServer, fmt_bytes, log  # noqa: E402

MiB = 1 << 20


def make_model(root: Path, mib: int) -> None:
    """``model.safetensors`` of an MLP of about ``mib`` MiB of float32 weights."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    width = 1024
    layers = max(1, (mib * MiB) // (width * width * 4))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    root.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, root / "model.safetensors"
    )
    (root / "config.json").write_text(json.dumps({"layers": layers, "width": width}))


def make_logs(root: Path, mib: int) -> None:
    """JSONL metrics and CSV logs, about ``mib`` MiB in 50 files."""
    r = random.Random(1)
    root.mkdir(parents=True)
    per_file = mib * MiB // 50
    for i in range(50):
        rows = []
        size = 0
        step = 0
        while size < per_file:
            step += 1
            if i % 2:
                row = "%d,%d,%.6f,%.6f,%.3e,train\n" % (i, step, r.random(), r.random(), 1e-3)
            else:
                row = (
                    json.dumps(
                        {
                            "epoch": i,
                            "step": step,
                            "loss": round(r.random(), 6),
                            "lr": 1e-3,
                            "grad_norm": round(r.uniform(0, 5), 4),
                            "phase": "train",
                        }
                    )
                    + "\n"
                )
            rows.append(row)
            size += len(row)
        (root / ("log-%02d.%s" % (i, "csv" if i % 2 else "jsonl"))).write_text("".join(rows))


def stored_bytes(storage) -> int:
    return sum(o.size for o in storage.list("blobs/"))


def measure(make_storage, src: Path, codec, repeat: int, scratch: Path) -> dict:
    """Median save and load seconds and the stored bytes of ``src`` with ``codec``."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
        transfer_options,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import Scope
    from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import (
        CheckpointStore,
    )

    saves, loads, stored = [], [], 0
    for i in range(repeat):
        storage = make_storage()
        store = CheckpointStore(storage, transfer_options().with_compression(codec))
        scope = Scope("user:bench", "Bench", "train", "_", "1", "1", 0)
        t0 = time.perf_counter()
        m = store.save(str(src), scope)
        saves.append(time.perf_counter() - t0)
        stored = stored_bytes(storage)
        dest = scratch / ("load-%d" % i)
        fresh = CheckpointStore(storage, transfer_options())  # a new process: nothing cached
        t0 = time.perf_counter()
        fresh.load(fresh.read(m.key), str(dest))
        loads.append(time.perf_counter() - t0)
        shutil.rmtree(dest)
        store.close()
        fresh.close()
    return {"save": statistics.median(saves), "load": statistics.median(loads), "stored": stored}


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=64, help="size of each checkpoint")
    p.add_argument("--repeat", type=int, default=3, help="runs per row (medians)")
    p.add_argument("--skip-s3", action="store_true", help="local rows only (no moto server)")
    p.add_argument("--json", help="also write the measurements to this file")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="mfckpt-bench-zstd-"))
    moto = None
    try:
        data = {"model (safetensors)": work / "model", "logs (JSONL/CSV)": work / "logs"}
        make_model(data["model (safetensors)"], args.mib)
        make_logs(data["logs (JSONL/CSV)"], args.mib)
        backends = {"local": lambda: _local(work)}
        if not args.skip_s3:
            moto = MotoServer(work / "moto.log")
            os.environ.update(S3_ENV, METAFLOW_S3_ENDPOINT_URL=moto.endpoint)
            backends["S3 (moto)"] = lambda: _s3(moto.endpoint)
        import metaflow  # noqa: F401 - after the S3 settings: Metaflow reads them at import

        rows = []
        for label, src in data.items():
            size = tree_size(src)
            for backend, make in backends.items():
                log("%s on %s" % (label, backend))
                plain = measure(make, src, None, args.repeat, work)
                zstd = measure(make, src, "zstd", args.repeat, work)
                rows.append((label, backend, size, plain, zstd))
        print(_table(rows))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    finally:
        if moto is not None:
            moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _local(work: Path):
    from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage

    return LocalStorage(str(work / ("store-" + uuid.uuid4().hex[:8])))


def _s3(endpoint: str):
    import boto3

    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
        storage_for_url,
    )

    bucket = "bench-" + uuid.uuid4().hex[:12]
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return storage_for_url("s3://%s/ckpt" % bucket)


def _table(rows) -> str:
    out = [
        "| checkpoint | store | size | stored, zstd | save plain | save zstd | load plain "
        "| load zstd |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, backend, size, plain, zstd in rows:
        out.append(
            "| %s | %s | %s | %s (%.0f%%) | %.2f s | %.2f s (%.2fx) | %.2f s | %.2f s (%.2fx) |"
            % (
                label,
                backend,
                fmt_bytes(size),
                fmt_bytes(zstd["stored"]),
                100.0 * zstd["stored"] / max(plain["stored"], 1),
                plain["save"],
                zstd["save"],
                zstd["save"] / plain["save"],
                plain["load"],
                zstd["load"],
                zstd["load"] / plain["load"],
            )
        )
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
