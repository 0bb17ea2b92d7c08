"""A step run as ``@kubernetes``/``@batch`` run it, under a ``bash -c`` wrapper (see
tests/integration/test_wrapper.py), in two phases.

1. It writes ``READY_FILE`` (its pid) and waits for ``GO_FILE``: meanwhile the test sends
   SIGTERM to the wrapper.  Had that reached this process, the handler would have saved
   "interrupted in phase 1" and ended the task here.
2. It creates ``PREEMPTION_NOTICE_FILE``, which makes the fake metadata service on 127.0.0.1
   announce an AWS spot interruption: the watcher (``preemption="aws"``) interrupts the task,
   the ``on_interrupt`` callback writes "interrupted in phase 2" and ``save_on_interrupt``
   commits it.
"""

import os
import time

from metaflow import FlowSpec, checkpoint, current, step


def write(name, text):
    with open(os.path.join(current.checkpoint.directory, name), "w") as f:
        f.write(text)


class SigintWrapperFlow(FlowSpec):
    @checkpoint(preemption="aws", save_on_interrupt=True)
    @step
    def start(self):
        phase = [1]
        write("state.txt", "phase 1")
        current.checkpoint.on_interrupt(
            lambda: write("state.txt", "interrupted in phase %d" % phase[0])
        )
        with open(os.environ["READY_FILE"], "w") as f:
            f.write(str(os.getpid()))
        for _ in range(1200):  # the test sends SIGTERM to the wrapper, then creates GO_FILE
            if os.path.exists(os.environ["GO_FILE"]):
                break
            time.sleep(0.05)
        phase[0] = 2
        open(os.environ["PREEMPTION_NOTICE_FILE"], "w").close()  # the cloud announces
        time.sleep(120)  # the notice interrupts this
        raise AssertionError("not reached")
        self.next(self.end)  # noqa: F841 - the graph needs it; the notice ends the step first

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SigintWrapperFlow()
