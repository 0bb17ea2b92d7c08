"""A flow written for the reference extension (``metaflow-checkpoint``), run unchanged here.

Nothing in it is specific to metaflow-checkpointing: the imports, decorator attributes and
calls are those of ``metaflow-checkpoint`` 0.2.14 (see docs/compatibility.md).

- ``train``: ``@checkpoint(show_card=False)`` + ``@retry``: attempt 0 saves two checkpoints
  named ``epoch`` and crashes; attempt 1 starts from the newest of them, saves one more (and
  one named ``best``), then lists ``current.checkpoint.list(task=current.pathspec,
  name="epoch")``: that task's latest attempt only, as the reference returns it.
- ``train_parallel``: a ``@parallel`` gang of two nodes with ``@model``; node 0 alone
  publishes the model with ``current.model.save(path, label=..., metadata=...)`` and keeps the
  returned reference as an artifact.
- ``evaluate``: ``@model(load=["trained"])`` loads that reference before the step's code;
  ``current.model.loaded["trained"]`` is the directory, ``.loaded.info["trained"]`` its
  reference.

    python examples/reference_style_flow.py run

Test: tests/integration/test_reference_style.py (local and S3 datastores).
"""

import os

from metaflow import FlowSpec, checkpoint, current, model, parallel, retry, step

#: The model node 0 publishes: relative path -> bytes.
MODEL_FILES = {
    "config.json": b'{"hidden": 4, "layers": 2}',
    "weights.bin": bytes(range(256)) * 16,
    "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\nworld\n",
}
MODEL_LABEL = "reference_style_model"


def _write(directory, files):
    for rel, data in files.items():
        path = os.path.join(directory, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def _read(directory):
    out = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory).replace(os.sep, "/")] = f.read()
    return out


class ReferenceStyleFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @checkpoint(show_card=False)
    @retry(times=1)
    @step
    def train(self):
        state = os.path.join(current.checkpoint.directory, "state.txt")
        if current.retry_count == 0:
            for epoch in range(2):
                with open(state, "w") as f:
                    f.write("epoch %d" % epoch)
                current.checkpoint.save(name="epoch", metadata={"epoch": epoch})
            raise RuntimeError("attempt 0 crashes after two checkpoints")
        # The retry starts from the newest checkpoint of attempt 0.
        self.was_loaded = current.checkpoint.is_loaded
        with open(state) as f:
            self.resumed_from = f.read()
        with open(state, "w") as f:
            f.write("epoch 2")
        current.checkpoint.save(name="epoch", metadata={"epoch": 2})
        current.checkpoint.save(name="best", metadata={"epoch": 2})
        # The reference's listing of a task: its latest attempt (this one), filtered by name.
        listed = current.checkpoint.list(task=current.pathspec, name="epoch")
        self.listed = [(c["attempt"], c["metadata"]["epoch"], c["name"]) for c in listed]
        self.listed_keys = [c["key"] for c in listed]
        # Without `task`: every attempt of the running task.
        everything = current.checkpoint.list()
        self.listed_everything = sorted((c["attempt"], c["name"]) for c in everything)
        self.next(self.train_parallel, num_parallel=2)

    @model
    @parallel
    @step
    def train_parallel(self):
        self.node = current.parallel.node_index
        if current.parallel.node_index == 0:
            out = os.path.join(os.getcwd(), "trained_model")
            _write(out, MODEL_FILES)
            self.trained = current.model.save(
                out, label=MODEL_LABEL, metadata={"hidden": 4, "node": 0}
            )
        self.next(self.join)

    @step
    def join(self, inputs):
        self.saved_by = [i.node for i in inputs if getattr(i, "trained", None) is not None]
        self.trained = next(i.trained for i in inputs if getattr(i, "trained", None) is not None)
        self.next(self.evaluate)

    @model(load=["trained"])
    @step
    def evaluate(self):
        path = current.model.loaded["trained"]
        self.loaded_files = _read(path)
        self.loaded_info_key = current.model.loaded.info["trained"]["key"]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ReferenceStyleFlow()
