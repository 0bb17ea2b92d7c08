"""Checkpoints in several stores of one flow: ``start`` saves in the run's datastore root,
``side`` in its own ``@checkpoint(root=...)`` store (``MULTI_STORE_SIDE_ROOT``, read when the
flow file is imported, as a decorator attribute is)."""

import os

from metaflow import FlowSpec, checkpoint, current, step

SIDE_ROOT = os.environ.get("MULTI_STORE_SIDE_ROOT")


def _save(tag: str, losses: list) -> None:
    for epoch, loss in enumerate(losses):
        with open(os.path.join(current.checkpoint.directory, "state.txt"), "w") as f:
            f.write("%s %d" % (tag, epoch))
        current.checkpoint.save(metadata={"epoch": epoch, "loss": loss})


class MultiStoreFlow(FlowSpec):
    @checkpoint
    @step
    def start(self):
        _save("start", [0.9, 0.5])
        self.next(self.side)

    @checkpoint(root=SIDE_ROOT)
    @step
    def side(self):
        _save("side", [0.8, 0.2])
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    MultiStoreFlow()
