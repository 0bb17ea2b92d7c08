"""``@checkpoint(upload="end")`` under ``@retry`` (tests/integration/test_upload_policy.py).

Attempt 0 saves 20 times (metadata ``i`` and ``loss``, lowest at save 7), records each save's
status and what ``list()`` sees, then ends as ``UPLOAD_HOW`` says: ``raise`` (an exception),
``sigterm`` (SIGTERM to itself), ``ready`` (writes ``READY_DIR/train`` and waits for a Ctrl+C of
the run's process group), ``pause`` (``current.checkpoint.pause()``), ``succeed``, or
``nothing`` (no save, then raises).  Later attempts record what was loaded.  ``KEEP_BEST``
sets ``keep_best``; ``UPLOAD_ERRORS`` sets ``upload_errors``; ``UPLOAD_MODE`` sets ``upload``
(default ``end``).
"""

import json
import os
import signal
import sys
import time

from metaflow import FlowSpec, checkpoint, current, retry, step

if os.environ.get("SIGINT_OWN_GROUP") and "step" not in sys.argv:
    os.setpgrp()

HOW = os.environ.get("UPLOAD_HOW", "raise")


def write(text):
    with open(os.path.join(current.checkpoint.directory, "state.txt"), "w") as f:
        f.write(text)


def note(name, value):
    """What attempt 0 saw, outside the datastore (it may never persist artifacts)."""
    out = os.environ.get("UPLOAD_NOTES")
    if out:
        with open(os.path.join(out, name), "w") as f:
            json.dump(value, f)


class UploadEndFlow(FlowSpec):
    @checkpoint(
        upload=os.environ.get("UPLOAD_MODE", "end"),
        upload_errors=os.environ.get("UPLOAD_ERRORS", "fail"),
        keep_best=os.environ.get("KEEP_BEST") or None,
    )
    @retry(times=1)
    @step
    def start(self):
        if current.retry_count == 0 and HOW != "succeed_loaded":
            saved = []
            for i in range(1, 21 if HOW != "nothing" else 1):
                write("save %d" % i)
                loss = abs(i - 7) + 1.0
                ref = current.checkpoint.save(metadata={"i": i, "loss": loss})
                saved.append({"key": ref.key, "status": ref.status, "root": ref.root})
            listed = current.checkpoint.list()
            note("saved", saved)
            note("listed", [[r.key, r.status] for r in listed])
            if saved:
                loaded = current.checkpoint.load(saved[-1]["key"])
                with open(os.path.join(loaded, "state.txt")) as f:
                    note("reloaded", f.read())
            if HOW == "succeed":
                self.saved = saved
                self.next(self.end)
                return
            if HOW == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(60)
            elif HOW == "ready":
                with open(os.path.join(os.environ["READY_DIR"], "train"), "w") as f:
                    f.write(json.dumps(saved))
                time.sleep(120)
            elif HOW == "pause":
                current.checkpoint.pause("test")
            raise RuntimeError("attempt 0 fails after %d saves" % len(saved))
        self.loaded = None
        if current.checkpoint.is_loaded:
            with open(os.path.join(current.checkpoint.directory, "state.txt")) as f:
                self.loaded = f.read()
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    UploadEndFlow()
