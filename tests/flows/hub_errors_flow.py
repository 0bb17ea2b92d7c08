"""@huggingface_hub faults: HUB_CASE picks an unknown repo or revision, a refused or unknown
argument, or a snapshot not stored while the Hub is down."""

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
        elif case == "unknown_argument":
            current.huggingface_hub.snapshot_download(repo_id="acme/tiny-bert", bogus=1)
        elif case == "down":  # nothing stored, the Hub unreachable
            current.huggingface_hub.snapshot_download(repo_id="acme/tiny-bert")
        elif case == "local_dir":
            current.huggingface_hub.snapshot_download(repo_id="acme/tiny-bert", local_dir="/tmp/x")
        self.next(self.end)

    @step
    def end(self):
        if os.environ["HUB_CASE"] == "no_decorator":
            current.huggingface_hub.snapshot_download(repo_id="acme/tiny-bert")


if __name__ == "__main__":
    HubErrorsFlow()
