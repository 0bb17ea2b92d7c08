"""The live ``checkpoint`` card: ``train`` saves SAVES times, SLEEP seconds apart, with
``@card(type="checkpoint", refresh_interval=1)``, so a reader sees the card grow while the task
runs.  ``MFCKPT_PAUSE_AT=n`` pauses the task after its n-th save (``current.checkpoint.pause()``);
``MFCKPT_SIGTERM_AT=n`` sends the task SIGTERM after its n-th save; ``MFCKPT_UPLOAD`` is
``train``'s ``@checkpoint(upload=)`` (default ``each``); ``MFCKPT_UPLOAD_ERRORS`` its
``upload_errors`` (default ``fail``); ``MFCKPT_FAIL_STORE=1`` makes the flow's store refuse
every blob write of ``train`` (a StorageError, as after the storage layer's retries).

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
UPLOAD_ERRORS = os.environ.get("MFCKPT_UPLOAD_ERRORS", "fail")


def _refuse_blob_writes() -> None:
    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import StorageError

    storage = current.checkpoint._saves.flow_store.storage

    def refusing(method):
        real = getattr(storage, method)

        def refuse(*args, **kwargs):
            key = args[0] if args and isinstance(args[0], str) else ""
            if method != "ingest_range" and not key.startswith("blobs/"):
                return real(*args, **kwargs)
            raise StorageError(reason="injected: the flow's store refuses blob writes")

        return refuse

    for method in ("put_bytes", "put_file", "ingest_range"):
        setattr(storage, method, refusing(method))


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
    @checkpoint(keep_last=3, upload=UPLOAD, upload_errors=UPLOAD_ERRORS)
    @step
    def train(self):
        if os.environ.get("MFCKPT_FAIL_STORE"):
            _refuse_blob_writes()
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
