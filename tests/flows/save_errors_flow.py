"""Invalid ``save()`` calls raise clear, named errors inside the step and commit nothing."""

import os

from metaflow import FlowSpec, checkpoint, current, step
from metaflow.exception import MetaflowException


class SaveErrorsFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.work)

    @checkpoint
    @step
    def work(self):
        ckpt = current.checkpoint
        with open(os.path.join(ckpt.directory, "x.txt"), "w") as f:
            f.write("x")
        attempts = {
            "bad_name": lambda: ckpt.save(name="bad name/with slash"),
            "empty_name": lambda: ckpt.save(name=""),
            "non_json_metadata": lambda: ckpt.save(metadata={"obj": object()}),
            "metadata_not_dict": lambda: ckpt.save(metadata=["a", "b"]),
            "missing_path": lambda: ckpt.save(path="/nonexistent/checkpoint/dir"),
        }
        self.errors = {}
        for label, call in attempts.items():
            try:
                call()
            except Exception as exc:
                self.errors[label] = {
                    "type": type(exc).__name__,
                    "message": str(exc),
                    "metaflow_exception": isinstance(exc, MetaflowException),
                }
            else:
                self.errors[label] = None
        self.committed_after_errors = len(ckpt.list())
        self.good_ref = ckpt.save(name="good", metadata={"ok": True})
        self.committed_at_end = len(ckpt.list())
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SaveErrorsFlow()
