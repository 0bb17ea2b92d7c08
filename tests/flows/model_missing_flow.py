"""@model(load=[...]) naming neither an artifact nor a named checkpoint: the task fails before
the step's code runs."""

from metaflow import FlowSpec, model, step


class ModelMissingFlow(FlowSpec):
    @model(load=["my_modle"])
    @step
    def start(self):
        print("STEP CODE RAN")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ModelMissingFlow()
