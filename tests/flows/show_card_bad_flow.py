"""``@checkpoint(show_card="maybe")``: not a bool; the run must fail before any task."""

from metaflow import FlowSpec, checkpoint, step


class ShowCardBadFlow(FlowSpec):
    @checkpoint(show_card="maybe")
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ShowCardBadFlow()
