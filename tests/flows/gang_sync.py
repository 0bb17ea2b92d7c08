"""A barrier through a directory every process of a local gang sees: a stand-in for
``torch.distributed.barrier()`` in the test flows, so that a rank saves its next checkpoint only
once every rank has loaded the previous one (as real training does: no rank gets ahead of the
others' first collective)."""

import os
import time


def barrier(directory: str, me: int, world: int, timeout: float = 120.0) -> None:
    """Mark ``me`` arrived in ``directory`` and wait until all ``world`` members have."""
    os.makedirs(directory, exist_ok=True)
    open(os.path.join(directory, str(me)), "w").close()
    deadline = time.time() + timeout
    while len(os.listdir(directory)) < world:
        if time.time() > deadline:
            raise RuntimeError(
                "barrier %s: only %s of %d arrived" % (directory, os.listdir(directory), world)
            )
        time.sleep(0.02)
