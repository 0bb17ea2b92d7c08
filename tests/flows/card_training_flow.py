"""A training step as users write one, for the checkpoint card: 30 saves of ``loss`` (falling
over almost three decades), ``accuracy`` (best at save 7, then overfitting) and ``step``, with
``keep_last=3`` and ``keep_best="accuracy:max"``; attempt 0 fails after 12 saves and the retry
resumes from its latest checkpoint.
"""

import os

from metaflow import FlowSpec, card, checkpoint, current, retry, step

SAVES = 30
FAIL_AFTER = 12


def loss_at(i):
    return 10.0 * 0.8**i


def accuracy_at(i):
    return round(0.9 - 0.01 * abs(i - 6), 4)


class CardTrainingFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @card(type="checkpoint")
    @retry(times=1)
    @checkpoint(keep_last=3, keep_best="accuracy:max")
    @step
    def train(self):
        path = os.path.join(current.checkpoint.directory, "state.txt")
        start = 0
        if os.path.exists(path):  # the retry starts from attempt 0's latest checkpoint
            with open(path) as f:
                start = int(f.read()) + 1
        self.started_at = start
        for i in range(start, SAVES):
            with open(path, "w") as f:
                f.write(str(i))
            current.checkpoint.save(
                metadata={"loss": loss_at(i), "accuracy": accuracy_at(i), "step": i}
            )
            if current.retry_count == 0 and i + 1 == FAIL_AFTER:
                raise RuntimeError("simulated crash after %d saves" % FAIL_AFTER)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CardTrainingFlow()
