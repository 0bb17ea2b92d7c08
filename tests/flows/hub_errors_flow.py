"""@huggingface_hub faults: HUB_CASE picks an unknown repo, an unknown revision or a refused
argument; the step's code reports what it caught."""

import os

from metaflow import FlowSpec, current, huggingface_hub, step


class HubErrorsFlow(FlowSpec):
    @huggingface_hub
    @step
    def start(self):
        case = os.environ["HUB_CASE"]
        if case == "repo":
            current.huggingface_hub.snapshot_download(repo_id="acme/nope")
        elif case == "revision":
            current.huggingface_hub.snapshot_download(repo_id="acme/tiny-bert", revision="v9")
        elif case == "local_dir":
            current.huggingface_hub.snapshot_download(repo_id="acme/tiny-bert", local_dir="/tmp/x")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    HubErrorsFlow()
