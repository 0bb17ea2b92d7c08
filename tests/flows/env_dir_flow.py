"""Attempt 0 saves and crashes; the retry reads the loaded files from a subprocess through
``METAFLOW_CHECKPOINT_DIR``."""

import os
import subprocess
import sys

from metaflow import FlowSpec, checkpoint, current, retry, step

READER = (
    "import os; "
    "print(open(os.path.join(os.environ['METAFLOW_CHECKPOINT_DIR'], 'state.txt')).read())"
)


class EnvDirFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.work)

    # CKPT_TEST_ROOT, when a test sets it, exercises the decorator's `root` attribute.
    @checkpoint(root=os.environ.get("CKPT_TEST_ROOT"))
    @retry(times=1)
    @step
    def work(self):
        ckpt = current.checkpoint
        self.env_dir = os.environ.get("METAFLOW_CHECKPOINT_DIR")
        self.checkpoint_settings_seen = sorted(
            k
            for k in os.environ
            # The task's own exports for its child processes are not settings.
            if k.startswith("METAFLOW_CHECKPOINT_")
            and k not in ("METAFLOW_CHECKPOINT_DIR", "METAFLOW_CHECKPOINT_TASK")
        )
        self.directory = ckpt.directory
        if current.retry_count == 0:
            with open(os.path.join(ckpt.directory, "state.txt"), "w") as f:
                f.write("written by attempt 0 of %s" % current.pathspec)
            ckpt.save()
            raise RuntimeError("crash after saving (attempt 0)")
        self.was_loaded = ckpt.is_loaded
        self.loaded_attempt = ckpt.info.attempt if ckpt.is_loaded else None
        self.loaded_root = ckpt.info.root if ckpt.is_loaded else None
        self.subprocess_read = subprocess.run(
            [sys.executable, "-c", READER], capture_output=True, text=True, check=True
        ).stdout.strip()
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    EnvDirFlow()
