"""save_on_failure: the state at the moment the step raised is what the retry starts from."""

import os

from metaflow import FlowSpec, checkpoint, current, retry, step


class FailureFlow(FlowSpec):
    @checkpoint(save_on_failure=True)
    @retry(times=1)
    @step
    def start(self):
        path = os.path.join(current.checkpoint.directory, "progress.txt")
        if current.retry_count == 0:
            with open(path, "w") as f:
                f.write("got to 42")  # never saved explicitly
            raise ValueError("boom at 42")
        with open(path) as f:
            self.loaded = f.read()
        self.reason = current.checkpoint.info.metadata
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FailureFlow()
