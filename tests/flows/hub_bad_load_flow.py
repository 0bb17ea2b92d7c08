"""@huggingface_hub(load=[...]) with an entry of no accepted form: the run fails before any task."""

from metaflow import FlowSpec, huggingface_hub, step


class HubBadLoadFlow(FlowSpec):
    @huggingface_hub(load=["acme/tiny-bert", ("acme/tiny-bert", "a", "b")])
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    HubBadLoadFlow()
