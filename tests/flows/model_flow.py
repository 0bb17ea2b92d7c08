"""A flow in the reference extension's @model style: save models in one step, load them by
artifact, by (artifact, path), by name and name@version, a checkpoint reference through
@model, current.model.load, and a best-effort entry with nothing to load."""

import json
import os
import tempfile

from metaflow import FlowSpec, checkpoint, current, model, step

# Set by the test: a version of the named checkpoint "pretrained" uploaded before the run,
# and the directory the (artifact, path) entry loads into.
PINNED = os.environ.get("PRETRAINED_VERSION", "0000")
TUPLE_PATH = os.environ.get("TUPLE_PATH", "tuple_dir")


def listing(path):
    return sorted(
        os.path.relpath(os.path.join(p, n), path) for p, _, ns in os.walk(path) for n in ns
    )


class ModelFlow(FlowSpec):
    @checkpoint
    @model
    @step
    def start(self):
        d = tempfile.mkdtemp()
        with open(os.path.join(d, "weights.bin"), "wb") as f:
            f.write(b"w" * 5000)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump({"layers": 2}, f)
        self.my_model = current.model.save(d, label="my_model", metadata={"epochs": 3})
        # The same content again: its own version, no byte uploaded again (issue 14 F5).
        self.again = current.model.save(d, label="my_model", metadata={"epochs": 3})
        self.plain = current.model.save(os.path.join(d, "weights.bin"), storage_format="files")
        # A free-text label, as the reference extension takes (issue 14 F1).
        self.free = current.model.save(os.path.join(d, "config.json"), label="bert base: v2")
        self.refused = []
        for path, fmt in ((d, "zip"), (os.path.join(d, "missing"), "tar")):
            try:
                current.model.save(path, label="refused", storage_format=fmt)
            except Exception as exc:
                self.refused.append([type(exc).__name__, str(exc)])
        with open(os.path.join(current.checkpoint.directory, "state.txt"), "w") as f:
            f.write("epoch 7")
        self.ckpt_ref = current.checkpoint.save(metadata={"epoch": 7})
        self.ckpt_key = self.ckpt_ref["key"]
        self.next(self.use)

    @checkpoint
    @model(
        load=[
            "my_model",
            ("ckpt_ref", TUPLE_PATH),
            "ckpt_key",
            "ModelFlow_start",
            "pretrained@" + PINNED,
            "bert base: v2",
        ]
    )
    @step
    def use(self):
        loaded = current.model.loaded
        self.names = list(loaded)
        self.files = {name: listing(loaded[name]) for name in loaded}
        self.paths = {name: loaded[name] for name in loaded}
        self.info = {name: dict(loaded.info[name]) for name in loaded}
        with open(os.path.join(loaded["ckpt_ref"], "state.txt")) as f:
            self.state = f.read()
        self.links = [
            os.path.islink(os.path.join(p, n))
            for name in loaded
            for p, _, ns in os.walk(loaded[name])
            for n in ns
        ]
        by_load = current.model.load(self.my_model)
        self.by_load = [by_load, listing(by_load), self.my_model["key"] in loaded]
        named = current.model.load("pretrained")
        self.named = listing(named)
        self.by_checkpoint = listing(
            current.checkpoint.load(self.my_model, path=tempfile.mkdtemp())
        )
        loaded.cleanup("my_model")
        self.after_cleanup = ["my_model" in loaded, os.path.exists(self.paths["my_model"])]
        self.next(self.end)

    @model(load=["nothing_saved_as_this"], best_effort_load=True)
    @step
    def end(self):
        self.best_effort = [
            list(current.model.loaded),
            current.model.loaded["nothing_saved_as_this"],
        ]


if __name__ == "__main__":
    ModelFlow()
