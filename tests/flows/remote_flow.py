"""A flow deployed as remote tasks would run it (tests/integration/test_deploy_json.py,
test_code_package.py): ``train`` saves on attempt 0 and crashes, its retry loads that save.

The checkpoint root comes from a Config (``--config-value ckpt '{"root": ...}'``): Metaflow
stores config values in the code package, so the root travels to remote tasks; an environment
variable read at import would not.
"""

import os

from metaflow import (
    Config,
    FlowSpec,
    checkpoint,
    config_expr,
    current,
    environment,
    retry,
    step,
)


class RemoteFlow(FlowSpec):
    ckpt = Config("ckpt", default_value={"root": None, "models": None})

    @environment(vars={"METAFLOW_CHECKPOINT_TIMEOUT_SECONDS": "30"})
    @checkpoint(root=config_expr("ckpt.root"), models=config_expr("ckpt.models"))
    @retry(times=1)
    @step
    def start(self):
        ckpt = current.checkpoint
        state = os.path.join(ckpt.directory, "state.txt")
        if current.retry_count == 0:
            with open(state, "w") as f:
                f.write("saved by attempt 0 of %s" % current.pathspec)
            ckpt.save(metadata={"step": 1})
            raise RuntimeError("crash after saving (attempt 0)")
        with open(state) as f:
            self.loaded = f.read()
        print("REMOTE-LOADED", ckpt.info.attempt, ckpt.info.root, self.loaded, flush=True)
        for name, path in sorted(ckpt.models.items()):
            with open(path, "rb") as f:
                print("REMOTE-MODEL", current.namespace, name, f.read().decode(), flush=True)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RemoteFlow()
