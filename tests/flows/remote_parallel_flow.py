"""A gang with @checkpoint and named models, for ``argo-workflows create --only-json``
(tests/integration/test_deploy_json.py)."""

from metaflow import FlowSpec, checkpoint, current, parallel, step


class RemoteParallelFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @checkpoint(models=["tiny"], root="s3://elsewhere/ckpt")
    @parallel
    @step
    def train(self):
        current.checkpoint.save()
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RemoteParallelFlow()
