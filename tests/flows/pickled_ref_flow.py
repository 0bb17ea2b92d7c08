"""References returned by ``save()`` under ``@checkpoint(upload="end")``, kept as an artifact
and loaded in the next step on the same machine (tests/integration/test_status.py).

``start`` saves 3 times (metadata ``i``; the state file holds ``i``) and keeps the references
(status ``"local"`` then); the task's success uploads the newest and drops the others from the
tier.  ``end`` loads each reference and records ``self.outcomes``: ``[i, status, "ok" and the
state, or the error's class and message]``.
"""

import os
import tempfile

from metaflow import Checkpoint, FlowSpec, checkpoint, current, step


class PickledRefFlow(FlowSpec):
    @checkpoint(upload="end")
    @step
    def start(self):
        self.refs = []
        for i in range(3):
            with open(os.path.join(current.checkpoint.directory, "s.txt"), "w") as f:
                f.write("%d" % i)
            self.refs.append(current.checkpoint.save(metadata={"i": i}))
        self.next(self.end)

    @step
    def end(self):
        self.outcomes = []
        for ref in self.refs:
            dest = tempfile.mkdtemp()
            try:
                path = Checkpoint().load(ref, dest)
                with open(os.path.join(path, "s.txt")) as f:
                    outcome = ["ok", f.read()]
            except Exception as exc:  # noqa: BLE001 - the test reads which error and why
                outcome = [type(exc).__name__, str(exc)]
            self.outcomes.append([ref.metadata["i"], ref.status] + outcome)


if __name__ == "__main__":
    PickledRefFlow()
