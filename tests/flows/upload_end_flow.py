"""``@checkpoint(upload="end")`` under ``@retry`` (tests/integration/test_upload_policy.py).

Attempt 0 saves 20 times (metadata ``i`` and ``loss``, lowest at save 7), records each save's
status and what ``list()`` sees, then ends as ``UPLOAD_HOW`` says: ``raise`` (an exception),
``sigterm`` (SIGTERM to itself), ``ready`` (writes ``READY_DIR/train`` and waits for a Ctrl+C of
the run's process group), ``pause`` (``current.checkpoint.pause()``), ``succeed``, or
``nothing`` (no save, then raises), ``child`` (a child process saves once more, then
raises).  Later attempts (and a resume) record what was
loaded.  ``KEEP_BEST``
sets ``keep_best``; ``UPLOAD_ERRORS`` sets ``upload_errors``; ``UPLOAD_MODE`` sets ``upload``
(default ``end``).  ``FAIL_STORE`` makes every write of attempt 0 to the flow's store fail
(a StorageError, as after the storage layer's retries; ``FAIL_STORE=blobs``: only blob writes,
so the attempt's summary still lands); ``TIER_BY_ATTEMPT`` gives each attempt
its own tier base (``temp_dir_root``), as a retry on another machine would have;
``SLOW_STORE`` (seconds) slows each blob write of attempt 0 to the flow's store.
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
# The task's attempt, from its command line (`step start ... --retry-count N`).
ATTEMPT = int(sys.argv[sys.argv.index("--retry-count") + 1]) if "--retry-count" in sys.argv else 0
BY_ATTEMPT = os.environ.get("TIER_BY_ATTEMPT")


def fail_flow_store():
    """Every write to the flow's store fails from now on in this process."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import StorageError

    storage = current.checkpoint._saves.flow_store.storage
    blobs_only = os.environ.get("FAIL_STORE") == "blobs"

    def refusing(method):
        real = getattr(storage, method)

        def refuse(*args, **kwargs):
            key = args[0] if args and isinstance(args[0], str) else ""
            if blobs_only and method != "ingest_range" and not key.startswith("blobs/"):
                return real(*args, **kwargs)
            raise StorageError(reason="injected: the flow's store refuses writes")

        return refuse

    for method in ("put_bytes", "put_file", "ingest_range"):
        setattr(storage, method, refusing(method))


def write(text):
    with open(os.path.join(current.checkpoint.directory, "state.txt"), "w") as f:
        f.write(text)


def note(name, value):
    """What attempt 0 saw, outside the datastore (it may never persist artifacts)."""
    out = os.environ.get("UPLOAD_NOTES")
    if out:
        with open(os.path.join(out, name), "w") as f:
            json.dump(value, f)


def slow_flow_store(seconds):
    """Each blob write to the flow's store takes ``seconds`` more in this process."""
    storage = current.checkpoint._saves.flow_store.storage
    put, ingest = storage.put_bytes, storage.ingest_range

    def slow_put(key, data):
        if key.startswith("blobs/"):
            time.sleep(seconds)
        return put(key, data)

    def slow_ingest(*args, **kwargs):  # blobs read from local files
        time.sleep(seconds)
        return ingest(*args, **kwargs)

    storage.put_bytes, storage.ingest_range = slow_put, slow_ingest


CHILD = r"""
import json, os
from metaflow import Checkpoint

with Checkpoint(init_dir=True) as ckpt:
    with open(os.path.join(ckpt.directory, "state.txt"), "w") as f:
        f.write("child save")
    ref = ckpt.save(metadata={"i": 21})
    print("CHILD " + json.dumps({"key": ref.key, "status": ref.status}))
"""


def child_saves():
    """A process the task started (as a torchrun worker would) saves with ``Checkpoint()``."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("CHILD "))
    return json.loads(line[len("CHILD ") :])


class UploadEndFlow(FlowSpec):
    @checkpoint(
        upload=os.environ.get("UPLOAD_MODE", "end"),
        upload_errors=os.environ.get("UPLOAD_ERRORS", "fail"),
        keep_best=os.environ.get("KEEP_BEST") or None,
        temp_dir_root=os.path.join(BY_ATTEMPT, str(ATTEMPT)) if BY_ATTEMPT else None,
    )
    @retry(times=1)
    @step
    def start(self):
        if current.retry_count == 0 and not current.origin_run_id:
            note("run", current.run_id)
            if os.environ.get("FAIL_STORE"):
                fail_flow_store()
            if os.environ.get("SLOW_STORE"):
                slow_flow_store(float(os.environ["SLOW_STORE"]))
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
                last = current.checkpoint.load("last", os.path.join(loaded, "last"))
                with open(os.path.join(last, "state.txt")) as f:
                    note("reloaded_last", f.read())
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
            elif HOW == "child":
                note("child", child_saves())
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
