"""A flow without decorators, for ``--with checkpoint:show_card=...`` on the command line."""

from metaflow import FlowSpec, step


class ShowCardPlainFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ShowCardPlainFlow()
