"""Checkpoints for the reference-spelling table (tests/integration/test_resolver.py): a task
saving three latest=True checkpoints and a newer latest=False one, then a later step saving
one; each holds a ``label.txt`` (and metadata ``label``) naming it, and an ``acc`` metric."""

import os

from metaflow import FlowSpec, checkpoint, current, step

#: (label, acc, latest) of the train task's saves, oldest first.
TRAIN = [("train-0", 0.5, True), ("train-1", 0.9, True), ("train-2", 0.7, True)]
SIDE = ("train-side", 0.1, False)
EVALUATE = ("eval-0", 0.8, True)


def save(label, acc, latest, name="mfchckpt"):
    with open(os.path.join(current.checkpoint.directory, "label.txt"), "w") as f:
        f.write(label)
    current.checkpoint.save(metadata={"label": label, "acc": acc}, latest=latest, name=name)


class ResolverFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @checkpoint
    @step
    def train(self):
        for label, acc, latest in TRAIN:
            save(label, acc, latest)
        save(*SIDE, name="side")
        self.next(self.evaluate)

    @checkpoint
    @step
    def evaluate(self):
        save(*EVALUATE)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ResolverFlow()
