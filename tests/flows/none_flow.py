"""``load_policy="none"``: nothing is loaded automatically; user code lists and loads.

Attempt 0 fails while ``CKPT_TEST_FAIL=1`` so that the retry can show that nothing is loaded
on a retry either.
"""

import os
import tempfile

from metaflow import FlowSpec, Task, checkpoint, current, retry, step


def _summary(refs):
    return [{"run": r.run, "attempt": r.attempt, "name": r.name, "key": r.key} for r in refs]


class NonePolicyFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.pick)

    @checkpoint(load_policy="none")
    @retry(times=1)
    @step
    def pick(self):
        ckpt = current.checkpoint
        self.auto_loaded = ckpt.is_loaded
        self.dir_was_empty = not os.listdir(ckpt.directory)
        self.own = _summary(ckpt.list())
        self.step_wide = _summary(ckpt.list(within_task=False))
        self.full_namespace = _summary(ckpt.list(full_namespace=True))
        self.attempt0 = _summary(ckpt.list(within_task=False, attempt=0))
        self.named_other = _summary(ckpt.list(within_task=False, name="other"))
        earlier = [
            r for r in ckpt.list(within_task=False, name="mfchckpt") if r.run != current.run_id
        ]
        self.explicit_value = None
        self.explicit_from = None
        self.by_task = []
        self.load_by = {}
        if earlier:
            target = ckpt.load(earlier[0])
            self.load_returned_directory = target == ckpt.directory
            with open(os.path.join(target, "value.txt")) as f:
                self.explicit_value = f.read()
            self.explicit_from = earlier[0].pathspec
            self.by_task = _summary(ckpt.list(task=earlier[0].pathspec))
            # Other spellings of a reference: its key, its URL, the writer task (pathspec or
            # client object: that task's latest checkpoint).
            spellings = {
                "key": earlier[0]["key"],
                "url": earlier[0].url,
                "pathspec": earlier[0].pathspec,
                "task": Task(earlier[0].pathspec),
            }
            for label, ref in spellings.items():
                target = ckpt.load(ref, path=tempfile.mkdtemp(dir=os.getcwd()))
                with open(os.path.join(target, "value.txt")) as f:
                    self.load_by[label] = f.read()
        value = "%s:%d" % (current.run_id, current.retry_count)
        with open(os.path.join(ckpt.directory, "value.txt"), "w") as f:
            f.write(value)
        ckpt.save()
        ckpt.save(name="other", latest=False)
        if current.retry_count == 0 and os.environ.get("CKPT_TEST_FAIL") == "1":
            raise RuntimeError("failing on purpose (CKPT_TEST_FAIL=1)")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    NonePolicyFlow()
