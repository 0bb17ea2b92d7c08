"""In-task ``current.checkpoint.list()`` in a retry (tests/integration/test_upload_policy.py):
attempt 0 saves once and fails; attempt 1 saves once and records what ``list()`` says of each
checkpoint's ``task_status`` and ``status``.  ``UPLOAD_MODE`` sets ``upload`` (default each),
``KEEP_LAST`` ``keep_last``; ``records``: the keys with an upload record in the tier right after
attempt 1's save (``upload="end"``)."""

import os

from metaflow import FlowSpec, checkpoint, current, retry, step


class ListRetryFlow(FlowSpec):
    @checkpoint(
        upload=os.environ.get("UPLOAD_MODE", "each"),
        keep_last=int(os.environ["KEEP_LAST"]) if os.environ.get("KEEP_LAST") else None,
    )
    @retry(times=1)
    @step
    def start(self):
        with open(os.path.join(current.checkpoint.directory, "a.txt"), "w") as f:
            f.write("attempt %d" % current.retry_count)
        ref = current.checkpoint.save()
        if current.retry_count == 0:
            raise RuntimeError("attempt 0 fails")
        upload = current.checkpoint._saves.upload
        self.records = None
        if upload is not None and upload.at_end:
            prefix = current.checkpoint._saves.scope.task_prefix()
            self.records = sorted(upload.records.of_prefix(prefix))
        self.attempt1 = ref.key
        self.listed = [
            [r.attempt, r.task_status, r.status] for r in current.checkpoint.list(attempt="all")
        ]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ListRetryFlow()
