"""Two steps download the same snapshot; HUB_SCOPE sets both steps' cache_scope."""

import os

from metaflow import FlowSpec, current, huggingface_hub, step

SCOPE = os.environ.get("HUB_SCOPE", "checkpoint")


class HubScopeFlow(FlowSpec):
    @huggingface_hub(cache_scope=SCOPE)
    @step
    def start(self):
        self.first = current.huggingface_hub.snapshot_download(repo_id="acme/tiny-bert")
        self.next(self.again)

    @huggingface_hub(cache_scope=SCOPE)
    @step
    def again(self):
        self.second = current.huggingface_hub.snapshot_download(repo_id="acme/tiny-bert")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    HubScopeFlow()
