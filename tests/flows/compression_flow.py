"""@checkpoint(compression="zstd") with @retry: attempt 0 saves text logs (compressible) and
random weights (not), plus a checkpoint from a child process, then fails; attempt 1 starts
from attempt 0's checkpoint and checks every byte of it."""

import hashlib
import os
import random
import subprocess
import sys

from metaflow import FlowSpec, checkpoint, current, retry, step

CHILD = """
import os, sys
from metaflow import Checkpoint

with Checkpoint(init_dir=True) as ckpt:
    with open(os.path.join(ckpt.directory, "child.log"), "w") as f:
        f.write("child line\\n" * 5000)
    ckpt.save(name="child")
"""


def content() -> dict:
    r = random.Random(7)
    log = "".join('{"step": %d, "loss": %.5f}\n' % (i, r.random()) for i in range(40000))
    return {"logs/train.jsonl": log.encode(), "weights.bin": r.randbytes(3 << 20)}


def digests(root: str) -> dict:
    out = {}
    for rel in content():
        with open(os.path.join(root, rel), "rb") as f:
            out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


class CompressionFlow(FlowSpec):
    @retry(times=1)
    @checkpoint(compression="zstd")
    @step
    def start(self):
        d = current.checkpoint.directory
        if current.retry_count == 0:
            for rel, data in content().items():
                os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
                with open(os.path.join(d, rel), "wb") as f:
                    f.write(data)
            subprocess.run([sys.executable, "-c", CHILD], check=True)
            current.checkpoint.save()  # the latest: what the retry loads
            raise RuntimeError("crash after the save")
        expected = {rel: hashlib.sha256(v).hexdigest() for rel, v in content().items()}
        assert digests(d) == expected, "the retry loaded other bytes"
        self.loaded = True
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CompressionFlow()
