"""Three tasks of a foreach miss the same snapshot at once (cache_scope="flow": any task of this
flow may reuse what another stored)."""

import os

from metaflow import FlowSpec, current, huggingface_hub, step


class HubForeachFlow(FlowSpec):
    @step
    def start(self):
        self.items = [0, 1, 2]
        self.next(self.fetch, foreach="items")

    @huggingface_hub(cache_scope="flow")
    @step
    def fetch(self):
        ref = current.huggingface_hub.snapshot_download(repo_id="acme/tiny-bert")
        self.key = ref["key"]
        path = current.huggingface_hub.load(repo_id="acme/tiny-bert")
        self.files = {
            os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(path)
            for f in fs
        }
        self.next(self.join)

    @step
    def join(self, inputs):
        self.keys = sorted({i.key for i in inputs})
        self.same_files = all(i.files == inputs[0].files for i in inputs)
        self.files = inputs[0].files
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    HubForeachFlow()
