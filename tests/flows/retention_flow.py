"""A training loop whose @checkpoint keeps the last two checkpoints and the best by loss."""

import os

from metaflow import FlowSpec, checkpoint, current, step


class RetentionFlow(FlowSpec):
    @checkpoint(keep_last=2, keep_best="loss:min:1")
    @step
    def start(self):
        d = current.checkpoint.directory
        losses = [0.9, 0.2, 0.5, 0.4, 0.6, 0.7]
        for epoch, loss in enumerate(losses):
            with open(os.path.join(d, "epoch.txt"), "w") as f:
                f.write(str(epoch))
            current.checkpoint.save(metadata={"epoch": epoch, "loss": loss})
        # A differently named series is pruned on its own.
        current.checkpoint.save(name="export", metadata={"loss": 9.9})
        self.kept = sorted((r.name, r.metadata.get("epoch")) for r in current.checkpoint.list())
        with open(
            os.path.join(current.checkpoint.load("best:loss", path="best"), "epoch.txt")
        ) as f:
            self.best_epoch = int(f.read())
        with open(os.path.join(current.checkpoint.load("last", path="last"), "epoch.txt")) as f:
            self.last_epoch = int(f.read())
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RetentionFlow()
