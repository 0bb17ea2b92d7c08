"""What the end of an ``upload="end"`` task uploads besides the retry's pick
(tests/integration/test_upload_policy.py): ``start`` saves a ``latest=False`` checkpoint of the
default series, then three epochs, each a ``latest=True`` save and, at epochs 1 and 2, a
``save(name="best", latest=False)``; it keeps the newest "best" reference as an artifact, which
``evaluate`` loads with ``Checkpoint()`` (the documented way to hand a model to a later step).

With ``OUTAGE`` (``upload="each"``, ``upload_errors="warn"``, ``keep_last=2``) it instead saves
12 times, every write to the flow's store failing for saves 3 to 7 (``tier_during``: the tier's
checkpoints of the task right after save 7)."""

import os

from metaflow import Checkpoint, FlowSpec, checkpoint, current, step

OUTAGE = bool(os.environ.get("OUTAGE"))


def write(text):
    with open(os.path.join(current.checkpoint.directory, "w.txt"), "w") as f:
        f.write(text)


def outage(on):
    """Every write to the flow's store fails while ``on`` (as after the storage layer's retries)."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import StorageError

    storage = current.checkpoint._saves.flow_store.storage
    for method in ("put_bytes", "put_file", "ingest_range"):
        if on:

            def refuse(*args, **kwargs):
                raise StorageError(reason="injected outage")

            setattr(storage, method, refuse)
        else:
            storage.__dict__.pop(method, None)


class UploadSeriesFlow(FlowSpec):
    @checkpoint(
        upload="each" if OUTAGE else "end",
        upload_errors="warn" if OUTAGE else "fail",
        keep_last=2 if OUTAGE else None,
    )
    @step
    def start(self):
        self.statuses = []
        if OUTAGE:
            for i in range(1, 13):
                outage(3 <= i <= 7)
                write("save %d" % i)
                self.statuses.append(current.checkpoint.save(metadata={"i": i}).status)
                if i == 7:  # what the tier holds at the end of the outage
                    saves = current.checkpoint._saves
                    self.tier_during = len(saves.upload.tier.headers(saves.scope.task_prefix()))
            self.next(self.evaluate)
            return
        write("draft")
        self.draft = current.checkpoint.save(latest=False).key
        self.best = None
        for epoch in range(3):
            write("epoch %d" % epoch)
            if epoch:
                self.best = current.checkpoint.save(name="best", latest=False)
            self.last = current.checkpoint.save(metadata={"epoch": epoch}).key
        self.next(self.evaluate)

    @step
    def evaluate(self):
        import tempfile

        self.evaluated = None
        if not OUTAGE:
            with Checkpoint() as c:
                out = c.load(self.best, tempfile.mkdtemp())
            with open(os.path.join(out, "w.txt")) as f:
                self.evaluated = f.read()
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    UploadSeriesFlow()
