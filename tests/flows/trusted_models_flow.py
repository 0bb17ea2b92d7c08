"""A step that needs the named checkpoint ``resnet50``: which version depends on the run's
namespace (``METAFLOW_PRODUCTION_TOKEN``), promotions, or a pin given in ``MODEL_SPEC``."""

import os

from metaflow import FlowSpec, checkpoint, current, step

# Read when the flow file is loaded (launcher and tasks alike): "resnet50" or "resnet50@<id>".
MODEL_SPEC = os.environ.get("MODEL_SPEC", "resnet50")


class TrustedModelsFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @checkpoint(models=[MODEL_SPEC])
    @step
    def train(self):
        with open(os.path.join(current.checkpoint.models["resnet50"], "model.pt"), "rb") as f:
            self.weights = f.read()
        self.namespace = current.namespace
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TrustedModelsFlow()
