"""A reference saved in one step is loaded in later steps, into the managed directory and into
a directory of the user's choice; loaded files are plain files independent of the store."""

import hashlib
import os
import stat
import tempfile

from metaflow import FlowSpec, checkpoint, current, step


def tree(root):
    """{relative path: (sha256, is symlink, mode bits)} of every file under ``root``."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            out[rel] = [digest, os.path.islink(full), stat.S_IMODE(os.lstat(full).st_mode)]
    return out


class ReferenceCkptFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.produce)

    @checkpoint
    @step
    def produce(self):
        d = current.checkpoint.directory
        os.makedirs(os.path.join(d, "nested", "deeper"))
        with open(os.path.join(d, "weights.bin"), "wb") as f:
            f.write(bytes(range(256)) * 4096)  # 1 MiB
        with open(os.path.join(d, "nested", "config.json"), "w") as f:
            f.write('{"lr": 0.1}')
        with open(os.path.join(d, "nested", "deeper", "run.sh"), "w") as f:
            f.write("#!/bin/sh\necho hi\n")
        os.chmod(os.path.join(d, "nested", "deeper", "run.sh"), 0o755)
        self.saved_tree = tree(d)
        self.ref = current.checkpoint.save(metadata={"produced_by": current.pathspec})
        self.next(self.consume)

    @checkpoint
    @step
    def consume(self):
        ckpt = current.checkpoint
        self.loaded_at_start = ckpt.is_loaded
        target = ckpt.load(self.ref)
        self.default_target_is_directory = target == ckpt.directory
        self.default_tree = tree(target)
        # Edit the loaded files: the stored checkpoint must not change.
        with open(os.path.join(target, "weights.bin"), "r+b") as f:
            f.write(b"garbage")
        os.remove(os.path.join(target, "nested", "config.json"))
        with open(os.path.join(target, "extra.txt"), "w") as f:
            f.write("not part of the checkpoint")
        self.edited_tree = tree(target)
        ckpt.load(self.ref)
        self.reloaded_tree = tree(ckpt.directory)

        own = tempfile.mkdtemp(dir=os.getcwd())
        self.custom_target = ckpt.load(self.ref, path=own)
        self.custom_tree = tree(own)
        fresh = os.path.join(tempfile.mkdtemp(dir=os.getcwd()), "does", "not", "exist")
        self.created_target_tree = tree(ckpt.load(self.ref, path=fresh))
        self.own_dir = own
        self.next(self.end)

    @step
    def end(self):
        from metaflow import Checkpoint

        dest = tempfile.mkdtemp(dir=os.getcwd())
        Checkpoint().load(self.ref, dest)
        self.client_tree = tree(dest)


if __name__ == "__main__":
    ReferenceCkptFlow()
