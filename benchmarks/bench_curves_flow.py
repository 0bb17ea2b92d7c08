"""The foreach flow of ``bench_curves.py``'s concurrency curve: N tasks save into one store.

Not meant to be run by hand: ``bench_curves.py`` runs it with ``--datastore=s3 --max-workers N``
and ``MFCKPT_CURVE_SPEC`` (JSON: ``width`` tasks, ``mib`` each, ``out`` directory).  Each
``save`` task writes ``mib`` MiB of its own random bytes (nothing deduplicates across tasks),
then times one ``current.checkpoint.save`` and writes its start and end (wall clock, so the
tasks' spans can be compared) to ``<out>/<index>.json``.
"""

import json
import os
import shutil
import tempfile
import time

from metaflow import FlowSpec, checkpoint, current, step

MiB = 1 << 20


def _spec() -> dict:
    return json.loads(os.environ["MFCKPT_CURVE_SPEC"])


class CurveConcurrencyFlow(FlowSpec):
    """start -> save (foreach over ``width`` tasks) -> join -> end."""

    @step
    def start(self):
        self.items = list(range(_spec()["width"]))
        self.next(self.save, foreach="items")

    @checkpoint(load_policy="none")
    @step
    def save(self):
        spec = _spec()
        src = tempfile.mkdtemp(prefix="curve-%d-" % self.input)
        try:
            with open(os.path.join(src, "weights.bin"), "wb") as f:
                for _ in range(spec["mib"] // 4 or 1):
                    f.write(os.urandom(4 * MiB))
            nbytes = os.path.getsize(os.path.join(src, "weights.bin"))
            start = time.time()
            t0 = time.perf_counter()
            current.checkpoint.save(path=src, name="curve")
            seconds = time.perf_counter() - t0
            end = time.time()
        finally:
            shutil.rmtree(src, ignore_errors=True)
        record = {"start": start, "end": end, "seconds": seconds, "bytes": nbytes}
        with open(os.path.join(spec["out"], "%03d.json" % self.input), "w") as f:
            json.dump(record, f)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CurveConcurrencyFlow()
