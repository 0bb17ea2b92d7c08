"""The counter example of the @checkpoint documentation, completed into a runnable flow.

The ``count_values`` step is the documentation's code unchanged: it counts, saving a checkpoint
after every increment, and fails until the counter reaches ``continue_until``.  ``@retry``
re-runs it and each attempt continues from the last checkpoint of the previous one.

    python examples/checkpoint_basic.py run
"""

import os
import time

from metaflow import FlowSpec, checkpoint, current, retry, step

MAX_RETRIES = 5


def _read_file(path):
    with open(path) as f:
        return f.read()


def _write_file(path, content):
    with open(path, "w") as f:
        f.write(content)


class CheckpointSimpleFlow(FlowSpec):
    continue_until = 15

    @step
    def start(self):
        self.next(self.count_values)

    @checkpoint
    @retry(times=4)
    @step
    def count_values(self):
        counter = 0
        _file_path = os.path.join(current.checkpoint.directory, "counter.txt")
        if current.checkpoint.is_loaded and os.path.exists(_file_path):
            # Load the file written by a previous execution of the step
            checkpoint_info = current.checkpoint.info
            file = _read_file(_file_path)
            print(
                "Loaded a checkpoint from pathspec %s, attempt %s"
                % (checkpoint_info.pathspec, checkpoint_info.attempt)
            )
            print(
                "reading the counter value from the file",
                file,
            )
            counter = int(file)

        per_retry_range = 10
        for i in range(counter, counter + per_retry_range):
            counter = i
            _write_file(_file_path, str(i))
            # `current.checkpoint.save` will save everything in the
            # `current.checkpoint.directory`
            # Saving implies the objects are saved in the datastore
            # Saving a checkpoint will return a reference to the checkpoint
            self.final_checkpoint = current.checkpoint.save()
            time.sleep(0.1)

        print("Current value of counter", counter)
        if self.continue_until > counter:
            raise ValueError("retry")

        self.counter = counter
        self.next(self.end)

    @step
    def end(self):
        print("Finished with counter", self.counter)


if __name__ == "__main__":
    CheckpointSimpleFlow()
