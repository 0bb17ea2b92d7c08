"""One DistributedDataParallel worker of ``ddp_flow.py``, started by ``torchrun`` on every node.

torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous; the worker trains a
tiny ``nn.Linear`` on its shard of a toy regression (gloo, CPU).  It resumes from the task's
newest checkpoint (``Checkpoint().load("last")``) when there is one, and RANK 0 alone saves the
model, the optimizer and the epoch after every epoch through ``Checkpoint(init_dir=True)``: on a
retry every rank of every node loads that checkpoint.  Each rank writes what it resumed from and
its final weights to ``<results-dir>/rank-<RANK>.json``; RANK 0 writes the trained model to
``<model-dir>/model.pt``.

    torchrun --nnodes=1 --nproc_per_node=2 train.py --epochs 5 --results-dir out --model-dir out
"""

import argparse
import hashlib
import json
import os

import torch
import torch.distributed as dist
from metaflow import Checkpoint, CheckpointNotFound
from torch.nn.parallel import DistributedDataParallel


def weights_digest(state_dict: dict) -> str:
    """A short fingerprint of a model's weights (equal weights, equal digest)."""
    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def toy_data(rank: int, world: int) -> tuple:
    """This rank's shard of y = x . [1..8] (the same data on every rank, then split)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = x @ torch.arange(1.0, 9.0).unsqueeze(1)
    return x[rank::world], y[rank::world]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--results-dir", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument(
        "--crash-after", type=int, default=None, help="Raise after this epoch's checkpoint."
    )
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = toy_data(rank, world)
    result = {"rank": rank, "world_size": world, "resumed": None, "epochs": []}

    with Checkpoint(init_dir=True) as ckpt:
        first_epoch = 0
        try:
            state_file = os.path.join(ckpt.load("last"), "state.pt")
        except CheckpointNotFound:
            state_file = None  # the first attempt: nothing saved yet
        if state_file is not None:
            state = torch.load(state_file, weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            first_epoch = int(state["epoch"]) + 1
            result["resumed"] = {
                "epoch": int(state["epoch"]),
                "weights": weights_digest(model.state_dict()),
            }
            print("rank %d resumed after epoch %d" % (rank, state["epoch"]), flush=True)

        ddp = DistributedDataParallel(model)
        for epoch in range(first_epoch, args.epochs):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(ddp(x), y)
            loss.backward()
            optimizer.step()
            result["epochs"].append(epoch)
            if rank == 0:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch,
                    },
                    os.path.join(ckpt.directory, "state.pt"),
                )
                ckpt.save(metadata={"epoch": epoch, "loss": loss.item()})
            dist.barrier()  # every rank goes on once this epoch's checkpoint is committed
            if epoch == args.crash_after:
                raise RuntimeError("rank %d crashes after epoch %d (crash_once)" % (rank, epoch))

    result["loss"] = loss.item() if args.epochs > first_epoch else None
    result["weights"] = weights_digest(model.state_dict())
    with open(os.path.join(args.results_dir, "rank-%d.json" % rank), "w") as f:
        json.dump(result, f)
    if rank == 0:
        torch.save(model.state_dict(), os.path.join(args.model_dir, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
