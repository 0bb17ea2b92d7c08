"""`make demo`: run examples/train_demo.py on a local datastore (default .demo/), then browse.

The flow trains a tiny model, crashes once, and @retry resumes it from its last checkpoint.
Afterwards the checkpoints are listed with the client API (``from metaflow import Checkpoint``).
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(work: str) -> int:
    work = os.path.abspath(work)
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ)
    env.setdefault(
        "METAFLOW_USER", env.get("USER") if env.get("USER") not in (None, "root") else "demo"
    )
    env.update(
        METAFLOW_DATASTORE_SYSROOT_LOCAL=work,
        METAFLOW_DEFAULT_DATASTORE="local",
        METAFLOW_DEFAULT_METADATA="local",
        METAFLOW_HOME=os.path.join(work, "home"),
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
    )
    flow = os.path.join(HERE, "train_demo.py")
    print("$ python examples/train_demo.py run   (datastore: %s)" % work, flush=True)
    rc = subprocess.call([sys.executable, flow, "--no-pylint", "run"], env=env, cwd=work)
    if rc != 0:
        return rc
    # Browse in a fresh interpreter that sees the same datastore settings.
    return subprocess.call(
        [sys.executable, os.path.join(HERE, "browse_demo.py")], env=env, cwd=work
    )


if __name__ == "__main__":
    # Optional argument: where to put the demo's datastore (default: .demo/ in the repo).
    sys.exit(
        main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(HERE), ".demo"))
    )
