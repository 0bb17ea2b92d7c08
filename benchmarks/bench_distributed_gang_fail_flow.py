"""The flow ``bench_distributed.py`` runs for the gang-failure target (benchmark 4).

Not meant to be run by hand: ``bench_distributed.py`` starts it in an isolated environment (the
venv's ``bin`` first on ``PATH``, ``METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT=600``, the default) and
passes what to do in ``MFCKPT_BENCH_SPEC`` (JSON).  ``train`` is ``@checkpoint @parallel`` with
two nodes and no ``@retry``: every run of this flow fails, which is what is measured.

Node 0 writes ``spec["state_bytes"]`` of fresh random bytes into
``current.checkpoint.directory``, writes its pid (``node0.json``) and enters a sharded save
(``save(sharded=True)``).  A wrapper around ``core.gang._wait`` writes ``waiting.json`` when it
starts waiting (its part is stored; it waits for node 1's).  If the save raises, node 0 writes
when and what (``save_raised.json``) and lets the error fail its task.

* ``spec["mode"] == "fail"``: node 1 waits for ``waiting.json``, writes ``raised.json`` (the
  time) and raises before saving anything: node 0's wait must stop on node 1's gone marker.
* ``spec["mode"] == "sigterm"``: node 1 never saves; the benchmark sends SIGTERM to node 0's pid
  once ``waiting.json`` exists.  Node 1 waits until node 0's process has ended (the local
  runtime reads the gang's output until every node has closed it) and ends its step.
"""

import json
import os
import time

from metaflow import FlowSpec, checkpoint, current, parallel, step

MiB = 1 << 20


def _spec() -> dict:
    return json.loads(os.environ["MFCKPT_BENCH_SPEC"])


def _dump(path: str, value: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _wait_for(path: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError("%s missing after %g s" % (path, timeout))
        time.sleep(0.005)


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (an ended one stays a zombie until it is reaped)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _announce_waits(path: str) -> None:
    """Write ``path`` (the time) when this process first enters a wait of the gang protocol."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.core import gang

    wait = gang._wait

    def announced_wait(*args, **kwargs):
        if not os.path.exists(path):
            _dump(path, {"time": time.time()})
        return wait(*args, **kwargs)

    gang._wait = announced_wait


class GangFailBenchFlow(FlowSpec):
    """Node 0 waits in a sharded save; node 1 fails before saving, or node 0 gets SIGTERM."""

    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @checkpoint(load_policy="none")
    @parallel
    @step
    def train(self):
        spec = _spec()
        out = spec["out"]
        node = current.parallel.node_index
        if node == 1:
            if spec["mode"] == "fail":
                _wait_for(os.path.join(out, "waiting.json"))
                _dump(os.path.join(out, "raised.json"), {"time": time.time()})
                raise RuntimeError("node 1 fails before saving (benchmark)")
            _wait_for(os.path.join(out, "node0.json"))
            with open(os.path.join(out, "node0.json")) as f:
                node0 = json.load(f)["pid"]
            deadline = time.monotonic() + 300
            while _running(node0) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.next(self.join)
            return
        per_file = max(1, spec["state_bytes"] // 16)
        for i in range(16):
            with open(os.path.join(current.checkpoint.directory, "state-%02d.bin" % i), "wb") as f:
                f.write(os.urandom(per_file))
        _announce_waits(os.path.join(out, "waiting.json"))
        _dump(os.path.join(out, "node0.json"), {"pid": os.getpid(), "time": time.time()})
        try:
            current.checkpoint.save(name="gang", sharded=True)
        except BaseException as exc:
            _dump(
                os.path.join(out, "save_raised.json"),
                {"time": time.time(), "error": "%s: %s" % (type(exc).__name__, exc)},
            )
            raise
        _dump(os.path.join(out, "save_returned.json"), {"time": time.time()})
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    GangFailBenchFlow()
