"""A foreach of 3 splits (two with equal values) whose checkpointed step uses ``eager`` + retry.

Every split saves ``{"run", "index", "input", "attempt", "prev"}`` (``prev``: what that attempt
had loaded, so a chain of loads can be checked from the last attempt) and records what it
loaded.  Attempt 0 fails while ``CKPT_TEST_FAIL=1``; every attempt of split N fails while
``CKPT_TEST_FAIL_SPLIT=N`` (to make the run fail for ``resume``).
"""

import json
import os

from metaflow import FlowSpec, checkpoint, current, retry, step


class ForeachCkptFlow(FlowSpec):
    @step
    def start(self):
        self.items = ["a", "a", "b"]
        self.next(self.work, foreach="items")

    @checkpoint(load_policy="eager")
    @retry(times=1)
    @step
    def work(self):
        path = os.path.join(current.checkpoint.directory, "split.json")
        self.split_index = self.index
        self.pathspec_seen = current.pathspec
        self.loaded = None
        self.loaded_from = None
        if current.checkpoint.is_loaded:
            with open(path) as f:
                self.loaded = json.load(f)
            self.loaded_from = current.checkpoint.info.pathspec
        with open(path, "w") as f:
            json.dump(
                {
                    "run": current.run_id,
                    "index": self.index,
                    "input": self.input,
                    "attempt": current.retry_count,
                    "prev": self.loaded,
                },
                f,
            )
        current.checkpoint.save()
        if current.retry_count == 0 and os.environ.get("CKPT_TEST_FAIL") == "1":
            raise RuntimeError("failing on purpose (CKPT_TEST_FAIL=1)")
        if os.environ.get("CKPT_TEST_FAIL_SPLIT") == str(self.index):
            raise RuntimeError("split %d fails on purpose" % self.index)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.results = sorted(
            (
                {
                    "index": inp.split_index,
                    "pathspec": inp.pathspec_seen,
                    "loaded": inp.loaded,
                    "loaded_from": inp.loaded_from,
                }
                for inp in inputs
            ),
            key=lambda r: r["index"],
        )
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ForeachCkptFlow()
