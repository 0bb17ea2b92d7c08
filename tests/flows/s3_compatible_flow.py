"""Save in ``start`` (with ``show_card=True``), load that checkpoint in ``end``: for a run on
``--datastore=s3-compatible`` (tests/integration/test_reference_datastores.py)."""

import os

from metaflow import FlowSpec, checkpoint, current, step


class S3CompatibleFlow(FlowSpec):
    @checkpoint(show_card=True)
    @step
    def start(self):
        with open(os.path.join(current.checkpoint.directory, "w.txt"), "w") as f:
            f.write("weights")
        self.saved = current.checkpoint.save()
        self.next(self.end)

    @checkpoint
    @step
    def end(self):
        target = current.checkpoint.load(self.saved)
        with open(os.path.join(target, "w.txt")) as f:
            self.loaded = f.read()


if __name__ == "__main__":
    S3CompatibleFlow()
