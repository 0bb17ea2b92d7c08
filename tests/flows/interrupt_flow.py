"""SIGTERM mid-step: a background save is pending, an on_interrupt callback writes the final
state, save_on_interrupt commits it, and the retry starts from it."""

import os
import signal
import time

from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step


def write(name, text):
    with open(os.path.join(current.checkpoint.directory, name), "w") as f:
        f.write(text)


class InterruptFlow(FlowSpec):
    sig = Parameter("sig", default="SIGTERM", help="Signal the task sends itself.")

    @checkpoint(save_on_interrupt=True)
    @retry(times=1)
    @step
    def start(self):
        if current.retry_count == 0:
            write("state.txt", "epoch 1")
            with open(os.path.join(current.checkpoint.directory, "big.bin"), "wb") as f:
                f.write(os.urandom(8 << 20))
            current.checkpoint.save(metadata={"epoch": 1}, blocking=False)
            current.checkpoint.on_interrupt(lambda: write("state.txt", "interrupted in epoch 2"))
            os.kill(os.getpid(), getattr(signal, self.sig))
            time.sleep(60)  # the handler interrupts this
            raise AssertionError("not reached")
        with open(os.path.join(current.checkpoint.directory, "state.txt")) as f:
            self.loaded = f.read()
        self.listed = sorted(
            (
                [r.metadata.get("epoch"), r.metadata.get("reason"), r.metadata.get("signal")]
                for r in current.checkpoint.list(attempt=0)
            ),
            key=str,
        )
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    InterruptFlow()
