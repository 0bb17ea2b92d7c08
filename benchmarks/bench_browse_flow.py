"""The flow ``bench_browse.py`` runs: one ``@checkpoint`` step that saves many tiny checkpoints.

    python bench_browse_flow.py --no-pylint run --checkpoints 1000

``train`` saves ``--checkpoints`` checkpoints of a directory holding one small JSON file whose
content changes every time (one new blob and one manifest per save), each with metadata like a
training loop's: ``{"step": i, "val_loss": ..., "lr": ...}``.  ``val_loss`` is a deterministic
noisy curve whose minimum is not the last step, so ``Checkpoint().best(metric="val_loss")`` has
something to find.  If ``MFCKPT_BENCH_OUT`` is set, the step writes what it did there (JSON):
the root, key and namespace of its checkpoints and the save times.
"""

import json
import math
import os
import statistics
import time

from metaflow import FlowSpec, Parameter, checkpoint, current, step


def val_loss(i: int) -> float:
    """A falling curve with noise; its minimum is well before the end (a later rise)."""
    return round(1.0 / (1.0 + 0.01 * i) + 0.05 * math.sin(1.7 * i) + 0.0002 * max(0, i - 600), 6)


class BrowseBenchFlow(FlowSpec):
    """Saves ``checkpoints`` tiny checkpoints in one task, for the browsing benchmark."""

    checkpoints = Parameter("checkpoints", default=1000, type=int, help="checkpoints to save")

    @step
    def start(self):
        self.next(self.train)

    @checkpoint(load_policy="none")
    @step
    def train(self):
        directory = current.checkpoint.directory
        path = os.path.join(directory, "state.json")
        times = []
        ref = None
        for i in range(self.checkpoints):
            with open(path, "w") as f:
                json.dump({"step": i, "weights": [i, i * 0.5, i * 0.25]}, f)
            metadata = {"step": i, "val_loss": val_loss(i), "lr": 1e-3 * 0.999**i}
            t0 = time.perf_counter()
            ref = current.checkpoint.save(metadata=metadata)
            times.append(time.perf_counter() - t0)
        self.last = dict(ref) if ref is not None else None
        out = os.environ.get("MFCKPT_BENCH_OUT")
        if out:
            with open(out, "w") as f:
                json.dump(
                    {
                        "count": len(times),
                        "root": ref["root"] if ref else None,
                        "key": ref["key"] if ref else None,
                        "namespace": ref["namespace"] if ref else None,
                        "pathspec": current.pathspec,
                        "save_seconds": sum(times),
                        "save_median": statistics.median(times) if times else None,
                    },
                    f,
                )
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    BrowseBenchFlow()
