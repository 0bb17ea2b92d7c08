"""An empty flow for the decorator-overhead row of ``bench.py``.

With ``MFCKPT_BENCH_DECORATE=1`` the ``start`` step carries a bare ``@checkpoint`` (default load
policy, as users write it); without it the flow is identical and undecorated.  ``bench.py``
compares the wall time of ``run`` for both.

When ``MFCKPT_BENCH_HOOKS`` names a file, every hook the decorator implements is wrapped with a
timer (in the processes of this flow only; the package is not changed) and the durations are
appended to that file as JSON lines: the launcher's and the task's share, measured precisely,
where the wall-time difference of whole runs drowns in process-start noise.
"""

import json
import os
import time

from metaflow import FlowSpec, checkpoint, step

DECORATE = os.environ.get("MFCKPT_BENCH_DECORATE") == "1"
HOOKS_FILE = os.environ.get("MFCKPT_BENCH_HOOKS")


def _instrument(path: str) -> None:
    from metaflow.decorators import StepDecorator

    from metaflow_extensions.checkpointing.plugins.checkpointing.task.decorator import (
        CheckpointDecorator,
    )

    def wrap(name):
        original = getattr(CheckpointDecorator, name)

        def timed(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                with open(path, "a") as f:
                    f.write(json.dumps({"hook": name, "seconds": time.perf_counter() - t0}))
                    f.write("\n")

        setattr(CheckpointDecorator, name, timed)

    # Every StepDecorator hook the decorator implements (launcher and task side alike).
    for name, value in list(vars(CheckpointDecorator).items()):
        if callable(value) and not name.startswith("_") and hasattr(StepDecorator, name):
            wrap(name)


if DECORATE and HOOKS_FILE:
    _instrument(HOOKS_FILE)


def _maybe_checkpoint(fn):
    return checkpoint(fn) if DECORATE else fn


class EmptyBenchFlow(FlowSpec):
    """start -> end, both empty."""

    @_maybe_checkpoint
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    EmptyBenchFlow()
