"""Ctrl+C to a local run whose two tasks save on interrupt (tests/integration/
test_interrupt_limits.py): ``big`` cannot save its directory within the time allowed, ``small``
can.

Each ``train`` task commits a first checkpoint ("epoch 1"), registers an ``on_interrupt`` callback
writing "interrupted in epoch 2", writes ``READY_DIR/<size>`` and sleeps until the Ctrl+C.
``big`` first adds 32 MiB of fresh bytes and slows its store to 0.25 s per blob write (about 8 s
for the final save with 256 KiB chunks and 4 workers, where Metaflow kills tasks 4 to 5 s after
Ctrl+C).

With ``SIGINT_OWN_GROUP`` set, the run (``python flow.py run``, not its task processes) leads
its own process group, as a shell's foreground job does, so the test can Ctrl+C it as a terminal
would: SIGINT to the group, i.e. to the runtime and every task at once.
"""

import os
import sys
import time

from metaflow import FlowSpec, checkpoint, current, step

if os.environ.get("SIGINT_OWN_GROUP") and "step" not in sys.argv:
    os.setpgrp()

#: Seconds each blob write of the ``big`` task's store takes.
BLOB_WRITE_SECONDS = 0.25


def write(name, data):
    with open(os.path.join(current.checkpoint.directory, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def slowed(write, blobs_only=False):
    """``write`` (a storage method) taking BLOB_WRITE_SECONDS more per blob."""

    def slow(*args, **kwargs):
        if not blobs_only or str(args[0]).startswith("blobs/"):
            time.sleep(BLOB_WRITE_SECONDS)
        return write(*args, **kwargs)

    return slow


class SigintLimitFlow(FlowSpec):
    @step
    def start(self):
        self.sizes = ["big", "small"]
        self.next(self.train, foreach="sizes")

    @checkpoint(save_on_interrupt=True)
    @step
    def train(self):
        write("state.txt", "epoch 1")
        self.first = current.checkpoint.save(metadata={"epoch": 1}).key
        current.checkpoint.on_interrupt(lambda: write("state.txt", "interrupted in epoch 2"))
        if self.input == "big":
            write("big.bin", os.urandom(32 << 20))
            storage = current.checkpoint._store.storage
            storage.ingest_range = slowed(storage.ingest_range)  # chunks of files
            storage._put_bytes = slowed(storage._put_bytes, blobs_only=True)  # packs
        with open(os.path.join(os.environ["READY_DIR"], self.input), "w") as f:
            f.write(self.first)
        time.sleep(120)  # Ctrl+C interrupts this
        raise AssertionError("not reached")
        self.next(self.join)  # noqa: F841 - the graph needs it; Ctrl+C ends the step first

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SigintLimitFlow()
