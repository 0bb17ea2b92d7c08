"""Every @huggingface_hub(load=[...]) form of the reference extension, one per step."""

import os

from metaflow import FlowSpec, current, huggingface_hub, step

REPO = "acme/tiny-bert"


def _tree(root):
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def _weights(root):
    with open(os.path.join(root, "model.safetensors"), "rb") as f:
        return f.read()


class HubLoadFlow(FlowSpec):
    @huggingface_hub(load=[REPO], temp_dir_root="hf_tmp")
    @step
    def start(self):
        path = current.huggingface_hub.loaded[REPO]
        self.under_root = os.path.dirname(path) == os.path.abspath("hf_tmp")
        current.huggingface_hub.load(REPO)  # a plain path: lives until the task ends
        self.during = len(os.listdir("hf_tmp"))
        self.plain = {"files": _tree(path), "weights": _weights(path)}
        self.info = dict(current.huggingface_hub.loaded.info[REPO])
        self.next(self.at_path)

    @huggingface_hub(load=[(REPO, "./tiny_here")])
    @step
    def at_path(self):
        self.tmp_left = os.listdir("hf_tmp")  # the previous task removed its temp dirs
        path = current.huggingface_hub.loaded[REPO]
        self.at_path_ok = (
            path == os.path.abspath("./tiny_here") and _tree(path) == self.plain["files"]
        )
        self.next(self.by_dict)

    @huggingface_hub(load=[{"repo_id": REPO, "revision": "v1"}])
    @step
    def by_dict(self):
        self.v1_weights = _weights(current.huggingface_hub.loaded[REPO])
        self.v1_commit = current.huggingface_hub.loaded.info[REPO]["commit"]
        self.next(self.dict_at_path)

    @huggingface_hub(load=[({"repo_id": REPO, "allow_patterns": ["*.json"]}, "./json_only")])
    @step
    def dict_at_path(self):
        self.json_only = _tree(current.huggingface_hub.loaded[REPO])
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    HubLoadFlow()
