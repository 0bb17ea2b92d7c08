"""current.model.save on one node of a @parallel gang, loaded by @model(load=...) later."""

import os
import tempfile

from metaflow import FlowSpec, current, model, parallel, step


class ModelParallelFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @model
    @parallel
    @step
    def train(self):
        self.node = current.parallel.node_index
        self.model_ref = None
        if self.node == 0:  # a single writer
            d = tempfile.mkdtemp()
            with open(os.path.join(d, "model.txt"), "w") as f:
                f.write("trained by the gang")
            self.model_ref = current.model.save(d, label="gang_model")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.gang_model = next(i.model_ref for i in inputs if i.model_ref is not None)
        self.next(self.evaluate)

    @model(load=["gang_model"])
    @step
    def evaluate(self):
        with open(os.path.join(current.model.loaded["gang_model"], "model.txt")) as f:
            self.content = f.read()
        self.next(self.end)

    @step
    def end(self):
        self.has_model = hasattr(current, "model")  # no @model here
        try:
            current.model.save(".")
        except Exception as exc:
            self.no_model = [type(exc).__name__, str(exc)]


if __name__ == "__main__":
    ModelParallelFlow()
