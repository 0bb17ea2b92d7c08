"""A flow called like a named checkpoint of the reference-spelling table
(tests/integration/test_resolver.py): ``resnet50@last`` must still mean the named checkpoint
``resnet50`` everywhere, and ``resnet50/@last`` this flow (which saves no checkpoint)."""

from metaflow import FlowSpec, step


class resnet50(FlowSpec):  # noqa: N801 (the flow is named like the checkpoint on purpose)
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    resnet50()
