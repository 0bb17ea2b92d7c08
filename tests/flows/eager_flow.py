"""One step with ``load_policy="eager"`` and one with the default ``fresh``.

Each step records what it found in ``current.checkpoint.directory`` and saves its run id.  The
eager step also saves a later checkpoint with ``latest=False``, which must never be loaded
automatically.
"""

import os

from metaflow import FlowSpec, checkpoint, current, step


def _observe_and_save(flow, label):
    path = os.path.join(current.checkpoint.directory, "value.txt")
    loaded = None
    if current.checkpoint.is_loaded:
        with open(path) as f:
            loaded = f.read()
    setattr(flow, "%s_loaded" % label, loaded)
    setattr(
        flow,
        "%s_loaded_from" % label,
        current.checkpoint.info.pathspec if current.checkpoint.is_loaded else None,
    )
    with open(path, "w") as f:
        f.write(current.run_id)
    current.checkpoint.save()


class EagerFreshFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.eager_step)

    @checkpoint(load_policy="eager")
    @step
    def eager_step(self):
        _observe_and_save(self, "eager")
        # Newer, but not eligible for automatic loading.
        with open(os.path.join(current.checkpoint.directory, "value.txt"), "w") as f:
            f.write("not-latest-%s" % current.run_id)
        current.checkpoint.save(latest=False)
        self.next(self.fresh_step)

    @checkpoint
    @step
    def fresh_step(self):
        _observe_and_save(self, "fresh")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    EagerFreshFlow()
