"""A flow written as for the reference extension's @huggingface_hub: snapshot_download in one
step (stored once), @model(load=[...]) of that reference in the next, load() as a context
manager and as a plain path.  HUB_REVISION / HUB_ALLOW / HUB_FORCE choose the request."""

import json
import os

from metaflow import FlowSpec, checkpoint, current, huggingface_hub, model, step

REPO = "acme/tiny-bert"


def _read_tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


class HubSnapshotFlow(FlowSpec):
    @huggingface_hub
    @step
    def start(self):
        kwargs = {"repo_id": REPO}
        if os.environ.get("HUB_REVISION"):
            kwargs["revision"] = os.environ["HUB_REVISION"]
        if os.environ.get("HUB_ALLOW"):
            kwargs["allow_patterns"] = json.loads(os.environ["HUB_ALLOW"])
        if os.environ.get("HUB_FORCE"):
            kwargs["force_download"] = True
        self.hf_model = current.huggingface_hub.snapshot_download(**kwargs)
        self.fields = {
            k: self.hf_model[k] for k in ("type", "source", "repo_id", "commit", "revision")
        }
        # load(): a context manager whose temporary directory is gone after the block ...
        with current.huggingface_hub.load(**kwargs) as path:
            self.cm_files = _read_tree(path)
            self.cm_path = str(path)
        self.cm_removed = not os.path.exists(self.cm_path)
        # ... and a plain path.
        plain = current.huggingface_hub.load(**kwargs)
        self.plain_files = sorted(_read_tree(plain))
        self.next(self.use)

    @checkpoint
    @model(load=["hf_model"])
    @step
    def use(self):
        self.model_files = _read_tree(current.model.loaded["hf_model"])
        # The same reference through current.model.load and current.checkpoint.load.
        self.model_load_files = _read_tree(current.model.load(self.hf_model))
        self.checkpoint_load_files = _read_tree(
            current.checkpoint.load(self.hf_model, path="by_checkpoint")
        )
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    HubSnapshotFlow()
