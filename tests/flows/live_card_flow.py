"""The live ``checkpoint`` card: ``train`` saves SAVES times, SLEEP seconds apart, with
``@card(type="checkpoint", refresh_interval=1)``, so a reader sees the card grow while the task
runs.  ``MFCKPT_PAUSE_AT=n`` pauses the task after its n-th save (``current.checkpoint.pause()``);
``MFCKPT_SIGTERM_AT=n`` sends the task SIGTERM after its n-th save; ``MFCKPT_UPLOAD`` is
``train``'s ``@checkpoint(upload=)`` (default ``each``).

``plain`` saves as often with no card: it records whether any card process was started in its
process, and whether ``current`` has a card at all.  ``train`` records the same, for contrast.
"""

import os
import signal
import time

from metaflow import FlowSpec, card, checkpoint, current, step

SAVES = int(os.environ.get("MFCKPT_LIVE_SAVES", "8"))
SLEEP = float(os.environ.get("MFCKPT_LIVE_SLEEP", "1.5"))
UPLOAD = os.environ.get("MFCKPT_UPLOAD", "each")


def _card_processes() -> int:
    from metaflow.plugins.cards.card_creator import CardProcessManager

    return len(CardProcessManager.async_card_processes)


class LiveCardFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.plain, self.train)

    @checkpoint
    @step
    def plain(self):
        path = os.path.join(current.checkpoint.directory, "w.bin")
        for i in range(3):
            with open(path, "wb") as f:
                f.write(bytes([i]) * 512)
            current.checkpoint.save(metadata={"loss": 1.0 / (i + 1), "step": i})
        self.card_processes = _card_processes()
        self.has_card = hasattr(current, "card")
        self.next(self.join)

    @card(type="checkpoint", refresh_interval=1)
    @checkpoint(keep_last=3, upload=UPLOAD)
    @step
    def train(self):
        path = os.path.join(current.checkpoint.directory, "w.bin")
        pause_at = int(os.environ.get("MFCKPT_PAUSE_AT", "0"))
        sigterm_at = int(os.environ.get("MFCKPT_SIGTERM_AT", "0"))
        self.saved = []
        for i in range(SAVES):
            with open(path, "wb") as f:
                f.write(bytes([i]) * (512 * (i + 1)))
            ref = current.checkpoint.save(metadata={"loss": 2.0 / (i + 1), "step": i})
            self.saved.append(ref["key"])
            if pause_at and i + 1 == pause_at:
                current.checkpoint.pause(reason="paused by the test")
            if sigterm_at and i + 1 == sigterm_at:
                os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(SLEEP)
        self.card_processes = _card_processes()
        self.has_card = hasattr(current, "card")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LiveCardFlow()
