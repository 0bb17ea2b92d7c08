"""Checkpoints for the CLI tests: three epochs with metrics and a nested file tree, plus a
second series saved with latest=False.  ``CLI_CKPT_ROOT`` (read when the flow file is loaded)
puts them in a store of their own instead of the datastore's."""

import os

from metaflow import FlowSpec, checkpoint, current, step

#: val_loss per epoch; the CLI tests order by it.
LOSSES = [0.5, 0.2, 0.3]


def weights(epoch: int) -> bytes:
    """300 KiB that differ per epoch (tests compare loaded bytes with this)."""
    return bytes((i * 7 + epoch) % 251 for i in range(256)) * 1200


class CliCkptFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @checkpoint(root=os.environ.get("CLI_CKPT_ROOT"))
    @step
    def train(self):
        d = current.checkpoint.directory
        os.makedirs(os.path.join(d, "nested"), exist_ok=True)
        self.keys = []
        for epoch, loss in enumerate(LOSSES):
            with open(os.path.join(d, "weights.bin"), "wb") as f:
                f.write(weights(epoch))
            with open(os.path.join(d, "nested", "epoch.txt"), "w") as f:
                f.write(str(epoch))
            ref = current.checkpoint.save(
                metadata={"epoch": epoch, "val_loss": loss, "lr": 0.1, "note": "cli test"}
            )
            self.keys.append(ref.key)
        current.checkpoint.save(name="final", metadata={"done": True}, latest=False)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CliCkptFlow()
