"""Cooperative pause and resume, end to end.

    python examples/pause_resume_demo.py run --pause_at 3   # pauses after batch 3
    python examples/pause_resume_demo.py resume              # continues from that checkpoint

In real life the pause comes from an operator while the run trains:

    metaflow checkpoint pause PauseResumeFlow/<run id>       # or Flow/run/step/task

Here ``--pause_at`` plays the operator so the example runs unattended.  The training loop asks
``current.checkpoint.should_pause()`` at every batch (the store is polled at most every
``METAFLOW_CHECKPOINT_PAUSE_POLL_SECONDS``, default 5); when it turns true the step saves and
calls ``current.checkpoint.pause()``: the task ends as paused and is not retried, the run stops,
and ``resume`` re-runs the step, which loads the checkpoint and continues where it paused.
"""

import os
import time

from metaflow import Checkpoint, FlowSpec, Parameter, checkpoint, current, retry, step

BATCHES = 40


class PauseResumeFlow(FlowSpec):
    pause_at = Parameter("pause_at", default=-1, help="Request a pause after this batch.")

    @step
    def start(self):
        self.next(self.train)

    @checkpoint
    @retry(times=2)
    @step
    def train(self):
        state = os.path.join(current.checkpoint.directory, "batch.txt")
        first = 0
        if current.checkpoint.is_loaded:
            with open(state) as f:
                first = int(f.read())
            print("Resuming at batch %d from %s" % (first, current.checkpoint.info.pathspec))
        self.resumed_at = first
        for batch in range(first, BATCHES):
            time.sleep(0.2)  # one batch of training
            with open(state, "w") as f:
                f.write(str(batch + 1))
            if batch == self.pause_at and not current.checkpoint.is_loaded:
                Checkpoint().pause(current.run.pathspec, reason="demo operator")
            if current.checkpoint.should_pause():
                current.checkpoint.save(metadata={"batch": batch + 1})
                print("Pausing after batch %d" % (batch + 1))
                current.checkpoint.pause()
        self.batches = BATCHES
        self.next(self.end)

    @step
    def end(self):
        print("trained %d batches, resumed at batch %d" % (self.batches, self.resumed_at))


if __name__ == "__main__":
    PauseResumeFlow()
