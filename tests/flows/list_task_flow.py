"""``list(task=...)`` as code written for other ``@checkpoint`` extensions uses it, on retried
tasks.

``train``: attempt 0 saves ``mfchckpt`` and ``best`` then fails; attempt 1 saves one ``best``
and lists its own task by pathspec, by ``Task`` object, by attempt.  ``again``: attempt 0
saves one then fails; attempt 1 saves nothing (its latest attempt has no checkpoint).  ``end``
lists both tasks as another task (Metaflow says which attempt is their latest).
"""

import os

from metaflow import Checkpoint, FlowSpec, Task, checkpoint, current, retry, step
from metaflow.exception import MetaflowException


def _summary(refs):
    return [[r["attempt"], r["name"], r["metadata"].get("i")] for r in refs]


def _error(fn):
    try:
        fn()
    except MetaflowException as exc:
        return [type(exc).__name__, exc.message]
    return None


def _save(i, name, **kwargs):
    with open(os.path.join(current.checkpoint.directory, "state.txt"), "w") as f:
        f.write(str(i))
    return current.checkpoint.save(metadata={"i": i}, name=name, **kwargs)


class ListTaskFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @checkpoint
    @retry(times=1)
    @step
    def train(self):
        if current.retry_count == 0:
            _save(0, "mfchckpt")
            _save(1, "best")
            raise ValueError("attempt 0 fails after two saves")
        me, ckpt = current.pathspec, current.checkpoint
        # Other extensions' spellings: storage_format, refresh_directory, task_identifier.
        self.bad_format = _error(lambda: ckpt.save("/no/such/path", storage_format="zip"))
        ckpt.refresh_directory()
        self.refreshed_empty = os.listdir(ckpt.directory) == []
        self.tar_ref = _save(2, "best", storage_format="tar")
        self.task_identifier = ckpt.task_identifier
        self.train_pathspec = me
        self.latest = _summary(ckpt.list(task=me))
        self.latest_best = _summary(ckpt.list(task=Task(me), name="best"))
        self.latest_other_name = _summary(ckpt.list(task=me, name="mfchckpt"))
        self.attempt0 = _summary(ckpt.list(task=me, attempt=0))
        self.attempt0_str = _summary(ckpt.list(task=me, attempt="0"))
        self.all = _summary(ckpt.list(task=me, attempt="all"))
        self.own = _summary(ckpt.list())
        self.task_object_attempt0 = _summary(ckpt.list(task=Task(me, attempt=0)))
        self.client_latest = _summary(Checkpoint().list(task=me))
        self.client_all = _summary(Checkpoint().list(task=me, attempt="all"))
        self.client_full = _summary(Checkpoint().list(task=me, full_namespace=True))
        self.bad_attempt = _error(lambda: ckpt.list(task=me, attempt="latest"))
        self.next(self.again)

    @checkpoint(load_policy="none")
    @retry(times=1)
    @step
    def again(self):
        self.again_pathspec = current.pathspec
        if current.retry_count == 0:
            _save(7, "mfchckpt")
            raise ValueError("attempt 0 fails after one save")
        self.next(self.end)

    @checkpoint
    @step
    def end(self):
        ckpt = current.checkpoint
        self.end_train_latest = _summary(ckpt.list(task=self.train_pathspec))
        self.end_again_latest = _summary(ckpt.list(task=self.again_pathspec))
        self.end_again_all = _summary(ckpt.list(task=self.again_pathspec, attempt="all"))
        # The "tar" save loads back as the same files; a dict with only the fields other
        # extensions' references carry loads too.
        with open(os.path.join(ckpt.load(self.tar_ref), "state.txt")) as f:
            self.tar_loaded = f.read()
        fields = ("key", "url", "type", "version_id", "storage_format", "created_on", "name")
        bare = {k: self.tar_ref[k] for k in fields}
        with open(os.path.join(ckpt.load(bare, path=os.path.abspath("bare")), "state.txt")) as f:
            self.bare_loaded = f.read()
        with open(os.path.join(ckpt.directory, "junk.txt"), "w") as f:
            f.write("x")
        ckpt.cleanup()
        self.cleaned_empty = os.listdir(ckpt.directory) == []
        self.end_task_identifier = ckpt.task_identifier


if __name__ == "__main__":
    ListTaskFlow()
