"""A model, a checkpoint and a Hugging Face Hub snapshot saved in the second attempt of a step
(the first fails), then loaded by @model(load=[...]): every reader of each version must rebuild
the same reference fields (tests/integration/test_model_fields.py)."""

import os
import tempfile

from metaflow import FlowSpec, checkpoint, current, huggingface_hub, model, retry, step

KINDS = ("model_ref", "ckpt_ref", "hub_ref")


class ModelFieldsFlow(FlowSpec):
    @retry(times=1, minutes_between_retries=0)
    @huggingface_hub
    @checkpoint
    @model
    @step
    def start(self):
        if current.retry_count == 0:
            raise RuntimeError("the first attempt fails: versions are saved by attempt 1")
        d = tempfile.mkdtemp()
        with open(os.path.join(d, "weights.bin"), "wb") as f:
            f.write(b"w" * 3000)
        self.model_ref = current.model.save(d, label="fields_model", metadata={"epochs": 2})
        with open(os.path.join(current.checkpoint.directory, "state.txt"), "w") as f:
            f.write("epoch 2")
        self.ckpt_ref = current.checkpoint.save(metadata={"epoch": 2})
        self.hub_ref = current.huggingface_hub.snapshot_download(repo_id="acme/tiny-bert")
        # What save() returned, as plain dicts (the artifacts above are the pickled references).
        self.returned = {k: dict(getattr(self, k)) for k in KINDS}
        self.next(self.use)

    @model(load=list(KINDS))
    @step
    def use(self):
        self.info = {k: dict(current.model.loaded.info[k]) for k in KINDS}
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ModelFieldsFlow()
