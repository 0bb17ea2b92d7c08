"""A step that declares a model nobody uploaded: the run must fail before any task starts."""

from metaflow import FlowSpec, checkpoint, step


class ModelsMissingFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @checkpoint(models=["absent-model"])
    @step
    def train(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ModelsMissingFlow()
