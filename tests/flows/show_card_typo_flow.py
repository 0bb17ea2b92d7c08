"""A misspelt ``@checkpoint`` attribute (``show_cards``): the run must fail before any task."""

from metaflow import FlowSpec, checkpoint, step


class ShowCardTypoFlow(FlowSpec):
    @checkpoint(show_cards=True)
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ShowCardTypoFlow()
