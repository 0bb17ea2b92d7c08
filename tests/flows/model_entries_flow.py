"""@model(load=[...]) entries whose name is also an artifact of the flow that holds no single
reference (None, an int, a join's inputs' artifacts), a method's name and an absent name, plus a
model saved without a label in a flow whose ``<Flow>_<step>`` is no valid name (unicode).

Every name below is also the label of a named model holding the text of its label: a wrong
fallback to the name would load it.  ``ENTRIES`` (comma-separated) picks the join's entries,
``STRICT=1`` makes them fail the task instead of warning (tests/integration/test_model_entries.py).
"""

import os
import tempfile

from metaflow import FlowSpec, current, model, step

ENTRIES = os.environ.get("ENTRIES", "branch_model,none_art,int_art,helper,absent_one").split(",")
NAMED = ("branch_model", "none_art", "int_art", "helper", "absent_one")


def _dir(text):
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "w.txt"), "w") as f:
        f.write(text)
    return d


def _read(path):
    if path is None:
        return None
    with open(os.path.join(path, "w.txt")) as f:
        return f.read()


class EntréesFlow(FlowSpec):
    def helper(self):
        """A method: never an artifact."""

    @model
    @step
    def start(self):
        for label in NAMED:
            current.model.save(_dir("named " + label), label=label)
        self.none_art = None
        self.int_art = 3
        self.default_ref = current.model.save(_dir("default"))
        self.again = current.model.save(_dir("default 2"))
        self.next(self.a, self.b)

    @model
    @step
    def a(self):
        self.branch_model = current.model.save(_dir("branch a"), label="branch_a")
        self.next(self.join)

    @model
    @step
    def b(self):
        self.branch_model = current.model.save(_dir("branch b"), label="branch_b")
        self.next(self.join)

    @model(load=ENTRIES, best_effort_load=os.environ.get("STRICT") != "1")
    @step
    def join(self, inputs):
        self.got = {name: _read(current.model.loaded[name]) for name in ENTRIES}
        self.merge_artifacts(inputs, exclude=["branch_model"])
        self.next(self.check)

    @model(load=["default_ref"])
    @step
    def check(self):
        self.default_loaded = _read(current.model.loaded["default_ref"])
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    EntréesFlow()
