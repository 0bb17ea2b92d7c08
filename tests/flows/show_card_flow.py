"""``@checkpoint(show_card=...)`` on four steps: True attaches the ``checkpoint`` card, False and
the default attach none, True beside the user's own ``@card(type="checkpoint")`` adds nothing."""

import os

from metaflow import FlowSpec, card, checkpoint, current, step


def _save(loss: float) -> None:
    with open(os.path.join(current.checkpoint.directory, "w.txt"), "w") as f:
        f.write("weights")
    current.checkpoint.save(metadata={"loss": loss})


class ShowCardFlow(FlowSpec):
    @checkpoint(show_card=True)
    @step
    def start(self):
        _save(0.5)
        self.next(self.off)

    @checkpoint(show_card=False)
    @step
    def off(self):
        _save(0.4)
        self.next(self.default)

    @checkpoint
    @step
    def default(self):
        _save(0.3)
        self.next(self.explicit)

    @card(type="checkpoint", options={"metric": "loss"})
    @checkpoint(show_card=True)
    @step
    def explicit(self):
        _save(0.2)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ShowCardFlow()
