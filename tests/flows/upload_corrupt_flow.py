"""A damaged local-tier copy under ``@checkpoint(upload="end")`` and ``@retry``
(tests/integration/test_upload_policy.py).

Attempt 0 saves 3 times and raises; a detached helper waits until the end of the attempt has
recorded the last save's upload (``uploaded``, or ``failed`` with ``FAIL_STORE``: every write
to the flow's store refused) and then damages the tier's copy as ``CORRUPT`` says: ``blob``
flips a byte of every tier blob, ``manifest`` truncates the tier's manifests.  It writes
``NOTES/corrupted`` when done; attempt 1 (same machine, same tier) records what it loaded and
whether the damage was done before it started."""

import json
import os
import subprocess
import sys

from metaflow import FlowSpec, checkpoint, current, retry, step

HELPER = r"""
import glob, json, os, sys, time
tier, what, wanted, notes = sys.argv[1:5]
for _ in range(1200):
    recs = glob.glob(tier + "/uploads/**/*.json", recursive=True)
    if any(json.load(open(r)).get("status") == wanted for r in recs):
        break
    time.sleep(0.05)
pattern = "/blobs/**" if what == "blob" else "/manifests/**/*.json"
for path in glob.glob(tier + pattern, recursive=True):
    if os.path.isfile(path):
        if what == "blob":
            with open(path, "r+b") as f:
                first = f.read(1)
                f.seek(0)
                f.write(bytes([first[0] ^ 0xFF]))
        else:
            with open(path, "r+b") as f:
                f.truncate(10)
open(os.path.join(notes, "corrupted"), "w").write("done")
"""


class UploadCorruptFlow(FlowSpec):
    @checkpoint(upload="end")
    @retry(times=1)
    @step
    def start(self):
        notes = os.environ["UPLOAD_NOTES"]
        if current.retry_count == 0:
            if os.environ.get("FAIL_STORE"):
                from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
                    StorageError,
                )

                def refuse(*args, **kwargs):
                    raise StorageError(reason="injected: the flow's store refuses writes")

                storage = current.checkpoint._saves.flow_store.storage
                for method in ("put_bytes", "put_file", "ingest_range"):
                    setattr(storage, method, refuse)
            keys = []
            for i in range(1, 4):
                with open(os.path.join(current.checkpoint.directory, "state.txt"), "w") as f:
                    f.write("save %d" % i)
                keys.append(current.checkpoint.save().key)
            with open(os.path.join(notes, "saved"), "w") as f:
                json.dump(keys, f)
            wanted = "failed" if os.environ.get("FAIL_STORE") else "uploaded"
            args = [current.checkpoint._saves.upload.root, os.environ["CORRUPT"], wanted, notes]
            subprocess.Popen([sys.executable, "-c", HELPER] + args, start_new_session=True)
            raise RuntimeError("attempt 0 fails")
        self.corrupted_first = os.path.exists(os.path.join(notes, "corrupted"))
        with open(os.path.join(current.checkpoint.directory, "state.txt")) as f:
            self.loaded = f.read()
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    UploadCorruptFlow()
