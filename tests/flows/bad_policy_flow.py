"""An invalid ``load_policy``: the run must fail before any task starts."""

from metaflow import FlowSpec, checkpoint, step


class BadPolicyFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @checkpoint(load_policy="bogus")
    @step
    def train(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    BadPolicyFlow()
