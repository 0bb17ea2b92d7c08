"""``eager`` across runs of different users, and loading another namespace's reference.

When ``FOREIGN_REF`` holds a JSON checkpoint reference (from another user's run), the step tries
to load it normally (expected to be refused) and with ``namespace_check=False``.
"""

import json
import os
import tempfile

from metaflow import FlowSpec, checkpoint, current, step


class NamespaceCkptFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.work)

    @checkpoint(load_policy="eager")
    @step
    def work(self):
        ckpt = current.checkpoint
        path = os.path.join(ckpt.directory, "owner.txt")
        self.task_namespace = current.namespace
        self.loaded = None
        self.loaded_from = None
        if ckpt.is_loaded:
            with open(path) as f:
                self.loaded = f.read()
            self.loaded_from = ckpt.info.pathspec
        self.visible_runs = sorted({r.run for r in ckpt.list(within_task=False)})

        self.foreign_error = None
        self.foreign_value = None
        foreign = os.environ.get("FOREIGN_REF")
        if foreign:
            ref = json.loads(foreign)
            try:
                ckpt.load(ref)
            except Exception as exc:
                self.foreign_error = [type(exc).__name__, str(exc)]
            target = ckpt.load(ref, path=tempfile.mkdtemp(dir=os.getcwd()), namespace_check=False)
            with open(os.path.join(target, "owner.txt")) as f:
                self.foreign_value = f.read()

        with open(path, "w") as f:
            f.write("%s:%s" % (current.namespace, current.run_id))
        self.ref = ckpt.save()
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    NamespaceCkptFlow()
