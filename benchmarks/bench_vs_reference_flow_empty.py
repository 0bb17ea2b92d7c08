"""The per-task overhead flow of ``bench_vs_reference.py`` (run in both venvs).

``MFCKPT_VSREF_MODE``: ``plain`` (no decorator), ``deco`` (a bare ``@checkpoint`` on ``start``,
as users write it) or ``save`` (the same plus one save of a 4 KiB file).  The driver compares the
wall time of ``run`` for the three, interleaved, in each venv: the differences are what the
installed ``@checkpoint`` adds to a task.
"""

import os

from metaflow import FlowSpec, checkpoint, current, step

MODE = os.environ.get("MFCKPT_VSREF_MODE", "plain")


def _maybe_checkpoint(fn):
    return fn if MODE == "plain" else checkpoint(fn)


class VsReferenceEmptyFlow(FlowSpec):
    """start -> end; ``start`` decorated (and saving) per ``MFCKPT_VSREF_MODE``."""

    @_maybe_checkpoint
    @step
    def start(self):
        if MODE == "save":
            path = os.path.join(os.environ["TMPDIR"], "overhead-%d" % os.getpid())
            os.makedirs(path)
            with open(os.path.join(path, "state.bin"), "wb") as f:
                f.write(os.urandom(4096))
            current.checkpoint.save(path=path)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    VsReferenceEmptyFlow()
