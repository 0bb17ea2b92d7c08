"""Checkpoints to browse: a foreach of two trainers saving several checkpoints with metrics,
a second series name, and an evaluation step."""

import os

from metaflow import FlowSpec, checkpoint, current, step


class BrowseFlow(FlowSpec):
    @step
    def start(self):
        self.lrs = [0.1, 0.01]
        self.next(self.train, foreach="lrs")

    @checkpoint
    @step
    def train(self):
        d = current.checkpoint.directory
        losses = [1.0, 0.4, 0.6] if self.index == 0 else [0.9, 0.7, 0.3]
        for epoch, loss in enumerate(losses):
            with open(os.path.join(d, "weights.bin"), "wb") as f:
                f.write(bytes([epoch, self.index]) * 2048)
            with open(os.path.join(d, "epoch.txt"), "w") as f:
                f.write(str(epoch))
            current.checkpoint.save(metadata={"epoch": epoch, "val_loss": loss, "lr": self.input})
        current.checkpoint.save(name="final", metadata={"note": "no metric"}, latest=False)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.evaluate)

    @checkpoint
    @step
    def evaluate(self):
        with open(os.path.join(current.checkpoint.directory, "report.txt"), "w") as f:
            f.write("ok")
        current.checkpoint.save(name="eval", metadata={"accuracy": 0.93})
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    BrowseFlow()
