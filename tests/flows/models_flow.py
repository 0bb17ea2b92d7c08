"""A step that needs two named checkpoints: one uploaded beforehand, one uploaded from a local
directory by the launcher when the run starts."""

import json
import os
import subprocess
import sys

from metaflow import FlowSpec, checkpoint, current, step


class ModelsFlow(FlowSpec):
    @checkpoint(models=["tiny", "vocab=./vocab_dir"])
    @step
    def start(self):
        models = current.checkpoint.models
        self.paths = models
        with open(models["tiny"], "rb") as f:
            self.tiny = f.read()
        self.vocab_files = sorted(os.listdir(models["vocab"]))
        # Subprocesses and other tools find the models through the environment.
        code = "import os; print(open(os.environ['METAFLOW_CHECKPOINT_MODEL_TINY'], 'rb').read())"
        self.child_saw = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        self.env_models = json.loads(os.environ["METAFLOW_CHECKPOINT_MODELS"])
        # Any version can also be loaded by name on demand.
        self.loaded_dir = sorted(os.listdir(current.checkpoint.load("tiny", path="by_name")))
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ModelsFlow()
