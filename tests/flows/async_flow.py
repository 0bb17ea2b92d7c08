"""Background saves: each one is a snapshot of the files when save() returned, they commit in
order, a later blocking save stays the newest, and the task waits for all of them."""

import os

from metaflow import FlowSpec, Parameter, checkpoint, current, step


class AsyncFlow(FlowSpec):
    fail = Parameter("fail", default=False, type=bool)

    @checkpoint
    @step
    def start(self):
        path = os.path.join(current.checkpoint.directory, "state.txt")
        handles = []
        for i in range(3):
            with open(path, "w") as f:
                f.write("version %d" % i)
            handles.append(current.checkpoint.save(metadata={"i": i}, blocking=False))
        # Changing the files right after save() returned does not change what is saved.
        with open(path, "w") as f:
            f.write("changed after the snapshot")
        blocking = current.checkpoint.save(metadata={"i": 3})
        self.handle_artifact = handles[0]  # becomes its reference once the task ends
        refs = [h.wait(timeout=120) for h in handles]
        self.background_keys = [r.key for r in refs]
        self.blocking_key = blocking.key
        self.contents = []
        for ref in refs + [blocking]:
            target = current.checkpoint.load(ref, path=os.path.join(os.getcwd(), "v", ref.version))
            with open(os.path.join(target, "state.txt")) as f:
                self.contents.append(f.read())
        self.newest_first = [r.metadata["i"] for r in current.checkpoint.list()]
        if self.fail:
            # Inject a storage failure into the next background save.
            storage = current.checkpoint._store.storage

            def broken(key, data):
                raise PermissionError("injected: the store refuses writes")

            storage._put_bytes = broken
            with open(path, "w") as f:
                f.write("never stored " + "x" * 5000)
            self.doomed = current.checkpoint.save(metadata={"i": 4}, blocking=False)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    AsyncFlow()
