"""A ``@checkpoint`` step with the ``checkpoint`` card: five saves with a decreasing ``loss``
and a ``step``, then one save of another name without ``loss`` (the card must tolerate it).

The step keeps the references it got from ``save()`` (oldest first) so the test can compare the
card with what was saved.
"""

import os

from metaflow import FlowSpec, card, checkpoint, current, step

LOSSES = [2.5, 1.25, 0.75, 0.5, 0.375]


class CheckpointCardFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @card(type="checkpoint", options={"metric": "loss"})
    @checkpoint
    @step
    def train(self):
        path = os.path.join(current.checkpoint.directory, "weights.bin")
        self.saved = []
        for i, loss in enumerate(LOSSES):
            # A different size per save, so the card's size column can be checked.
            with open(path, "wb") as f:
                f.write(bytes([i]) * (1536 * (i + 1)))
            self.saved.append(current.checkpoint.save(metadata={"loss": loss, "step": i}))
        # No "loss": left out of the plot; a user string that must be shown, not parsed as HTML.
        self.saved.append(
            current.checkpoint.save(
                metadata={"note": "<b>exported</b> & done", "step": len(LOSSES)},
                name="export",
                latest=False,
            )
        )
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CheckpointCardFlow()
