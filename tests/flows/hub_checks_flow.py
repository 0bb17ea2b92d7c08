"""@huggingface_hub checks: HUB_CASE picks the call; the test sets the fake Hub's faults.

``download``: snapshot_download + load (corrupt files, download directories of dead tasks);
``private``: a private repo with ``token=`` (HUB_TOKEN), ``headers=`` (HUB_HEADER) or HF_TOKEN,
at HUB_REVISION; ``file_target``: load(path=<a file>); ``entry_target``: load=[(repo, <a file>)];
``empty``: patterns matching no file.
"""

import os

from metaflow import FlowSpec, current, huggingface_hub, step

REPO = "acme/tiny-bert"
PRIVATE_REPO = "acme/private-bert"
CASE = os.environ.get("HUB_CASE", "")


def _tree(root):
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.relpath(os.path.join(d, f), root)] = fh.read()
    return out


class HubChecksFlow(FlowSpec):
    @huggingface_hub(temp_dir_root=os.environ.get("HUB_TMP"))
    @step
    def start(self):
        with open("afile", "w") as f:
            f.write("mine")
        hub = current.huggingface_hub
        if CASE == "download":
            self.ref = hub.snapshot_download(repo_id=REPO, revision=os.environ.get("HUB_REVISION"))
            self.files = _tree(hub.load(REPO, revision=os.environ.get("HUB_REVISION")))
        elif CASE == "private":
            kwargs = {}
            if os.environ.get("HUB_TOKEN"):
                kwargs["token"] = os.environ["HUB_TOKEN"]
            if os.environ.get("HUB_HEADER"):
                kwargs["headers"] = {"authorization": os.environ["HUB_HEADER"]}
            revision = os.environ.get("HUB_REVISION")
            self.ref = hub.snapshot_download(repo_id=PRIVATE_REPO, revision=revision, **kwargs)
            self.files = _tree(hub.load(PRIVATE_REPO, revision=revision, **kwargs))
        elif CASE == "file_target":
            hub.load(repo_id=REPO, path="afile")
        elif CASE == "empty":
            self.ref = hub.snapshot_download(repo_id=REPO, allow_patterns=["*.nomatch"])
            self.files = _tree(hub.load(REPO, allow_patterns=["*.nomatch"]))
        self.next(self.entry)

    @huggingface_hub(load=[(REPO, "afile")] if CASE == "entry_target" else [])
    @step
    def entry(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    HubChecksFlow()
