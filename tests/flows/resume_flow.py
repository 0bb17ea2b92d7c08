"""A checkpointed step for ``resume`` tests.

``CKPT_TEST_FAIL=1`` makes it fail after saving, ``CKPT_TEST_FAIL=before_save`` before saving.
``resume`` reuses the origin run's parameters, so failure is controlled by an environment
variable of the launching process instead of a Parameter.
"""

import os

from metaflow import FlowSpec, checkpoint, current, step


class ResumeCkptFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.work)

    @checkpoint
    @step
    def work(self):
        state = os.path.join(current.checkpoint.directory, "state.txt")
        self.was_loaded = current.checkpoint.is_loaded
        self.loaded_value = None
        self.loaded_from_pathspec = None
        self.loaded_attempt = None
        if current.checkpoint.is_loaded:
            with open(state) as f:
                self.loaded_value = f.read()
            self.loaded_from_pathspec = current.checkpoint.info.pathspec
            self.loaded_attempt = current.checkpoint.info.attempt
        self.origin_run_id = current.origin_run_id
        if os.environ.get("CKPT_TEST_FAIL") == "before_save":
            raise RuntimeError("failing on purpose before saving")
        with open(state, "w") as f:
            f.write("saved-by-%s" % current.run_id)
        self.ref = current.checkpoint.save(metadata={"run": current.run_id})
        if os.environ.get("CKPT_TEST_FAIL") == "1":
            raise RuntimeError("failing on purpose (CKPT_TEST_FAIL=1)")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ResumeCkptFlow()
