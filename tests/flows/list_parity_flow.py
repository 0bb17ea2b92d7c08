"""Listing from a task answers as from a notebook (tests/integration/test_list_parity.py).

``start``: attempt 0 saves ``e`` (loss 1.0) then fails; attempt 1 saves nothing, so its
latest attempt has no checkpoint.  ``probe`` makes the calls of ``list_parity_table`` about
``start`` (of this run: a clone after ``resume``), a task that does not exist and
``PARITY_OTHER`` (a task of another namespace), through current.checkpoint, Checkpoint() and a
process it starts.
"""

import json
import os
import subprocess
import sys

from metaflow import Checkpoint, Flow, FlowSpec, checkpoint, current, retry, step

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import list_parity_table  # noqa: E402


class ListParityFlow(FlowSpec):
    @checkpoint
    @retry(times=1)
    @step
    def start(self):
        if current.retry_count == 0:
            with open(os.path.join(current.checkpoint.directory, "a.txt"), "w") as f:
                f.write("a0")
            current.checkpoint.save(name="e", metadata={"loss": 1.0})
            raise RuntimeError("attempt 0 fails after its save")
        self.next(self.probe)

    @checkpoint
    @step
    def probe(self):
        other = os.environ.get("PARITY_OTHER")
        self.tables = None
        if other:
            start = Flow(current.flow_name)[current.run_id]["start"].task.pathspec
            bogus = "%s/%s/start/999999" % (current.flow_name, current.run_id)
            args = (start, bogus, other)
            proc = subprocess.run(
                [sys.executable, os.path.join(HERE, "list_parity_table.py"), *args],
                capture_output=True,
                text=True,
            )
            line = [x for x in proc.stdout.splitlines() if x.startswith("TABLE")]
            self.tables = {
                "start": start,
                "current": list_parity_table.table(current.checkpoint, *args, client=False),
                "client": list_parity_table.table(Checkpoint(), *args),
                "subprocess": json.loads(line[0][5:]) if line else proc.stderr[-3000:],
            }
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ListParityFlow()
