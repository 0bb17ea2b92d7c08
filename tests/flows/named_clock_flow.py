"""Publishes two named versions from a run whose machine clock may be off (the test shifts it):
the launcher uploads ``./upload_dir`` as ``uploaded`` (``models=["uploaded=./upload_dir"]``),
the step saves ``saved`` with ``current.model.save``."""

import os
import tempfile

from metaflow import FlowSpec, checkpoint, current, model, step


class NamedClockFlow(FlowSpec):
    @checkpoint(models=["uploaded=./upload_dir"])
    @model
    @step
    def start(self):
        # What the step got by name: the version its launcher just uploaded.
        with open(os.path.join(current.checkpoint.models["uploaded"], "w")) as f:
            self.uploaded_seen = f.read()
        d = tempfile.mkdtemp()
        with open(os.path.join(d, "w"), "w") as f:
            f.write("flow")
        current.model.save(d, label="saved", metadata={"by": "flow"})
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    NamedClockFlow()
