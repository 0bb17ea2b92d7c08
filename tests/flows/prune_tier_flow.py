"""Checkpoints a lifecycle command meets after ``@checkpoint(upload=...)`` tasks that did not
succeed (tests/cli/test_cli_prune_tier.py).

``start`` saves 3 times (metadata ``i``, ``attempt``; the state file says run, attempt and
save), then ends as ``END`` says: ``fail-then-pause`` (attempt 0 raises, the retry pauses:
``upload="end"`` leaves the tier holding both attempts' other saves), ``fail`` (every
attempt raises), ``pause``, or ``succeed``.  ``UPLOAD`` sets ``upload`` (default ``end``).
``REFUSE_RETRY_UPLOAD``: attempt 1 refuses blob writes to the flow's store before it pauses
(with ``UPLOAD_ERRORS=warn``: its end upload fails, only attempt 0's is uploaded).
``self.loaded`` is the state a retry or ``resume`` started from (None: nothing loaded).
"""

import os

from metaflow import FlowSpec, checkpoint, current, retry, step


def _refuse_blob_writes():
    """The fault: the flow's store refuses blob writes, so this attempt's end upload fails."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import StorageError

    storage = current.checkpoint._saves.flow_store.storage
    put = storage.put_bytes

    def refuse(*a, **k):
        raise StorageError(reason="injected: blob write refused")

    def put_bytes(key, data, *a, **k):
        if key.startswith("blobs/"):
            refuse()
        return put(key, data, *a, **k)

    storage.ingest_range = refuse
    storage.put_file = refuse
    storage.put_bytes = put_bytes


class PruneTierFlow(FlowSpec):
    @checkpoint(
        upload=os.environ.get("UPLOAD", "end"),
        upload_errors=os.environ.get("UPLOAD_ERRORS", "fail"),
    )
    @retry(times=1, minutes_between_retries=0)
    @step
    def start(self):
        state = os.path.join(current.checkpoint.directory, "state.txt")
        self.loaded = None
        if current.checkpoint.is_loaded:
            with open(state) as f:
                self.loaded = f.read()
        attempt = current.retry_count
        for i in range(3):
            with open(state, "w") as f:
                f.write("%s %d %d" % (current.run_id, attempt, i))
            current.checkpoint.save(metadata={"i": i, "attempt": attempt})
        end = os.environ.get("END", "fail-then-pause")
        if end == "fail" or (end == "fail-then-pause" and attempt == 0):
            raise RuntimeError("attempt %d fails" % attempt)
        if end in ("fail-then-pause", "pause"):
            if os.environ.get("REFUSE_RETRY_UPLOAD") and attempt == 1:
                _refuse_blob_writes()
            current.checkpoint.pause("test")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    PruneTierFlow()
