"""The flow ``bench_vs_reference.py`` runs twice: once with our package, once with the reference.

Not meant to be run by hand: ``bench_vs_reference.py`` starts it in our venv (``.venv``) and in a
separate venv holding ``metaflow-checkpoint==0.2.14`` instead of our package, passing what to do
in ``MFCKPT_VSREF_SPEC`` (JSON).  Only the public ``@checkpoint`` API both packages share is used
(``current.checkpoint.save(path=...)``, ``current.checkpoint.load(key, path=...)``,
``current.checkpoint.directory``), so the flow code is the same for both.

* ``start`` saves the large directory, the many-files directory and a torch state dict
  (``torch.save`` + ``save``), then saves a 4 KiB file ``tiny_saves`` times (new bytes each);
* ``load`` (a new task) loads each of them by key into a fresh directory (and ``torch.load``s the
  state dict), then reads every byte of what it got: the reference's local load returns symbolic
  links into its store, so for it the read is part of what a load costs;
* ``retry`` saves the retry directory on attempt 0 and fails; ``@retry`` starts attempt 1, whose
  ``@checkpoint`` loads it back before the step runs (timed by wrapping the decorator's
  ``task_pre_step``), and the step reads every byte of ``current.checkpoint.directory``.

On the local datastore every timed operation is paired with its raw baseline, measured in the
same task just before it (just after, where the bytes to copy are what it wrote), after the same
preparation: ``cp -r`` of the same directory (``cp_seconds``); for the torch rows ``cp -r`` of
the saved state dict's directory (added to ``torch.save``'s time) and ``cp -r`` + ``torch.load``
of the loaded one (``raw_seconds``).  A baseline timed apart, minutes earlier, met another state
of this VM's page cache and disk (its write-back, its balloon): ``cp -r`` of the same 1 GiB took
0.25-0.47 s from one minute to the next, so only a baseline beside the operation is a fair one.

Every timed operation is preceded by ``_benchutil.prepare`` (``sync`` and memory recycling, as
for the baselines) and sampled every 10 ms, from a separate process (``_tree_sampler.py``), for
the RSS of the whole process tree (the task and its children: Metaflow's S3 client downloads
in subprocesses) and for the disk used under ``TMPDIR`` and the task's working directory
(where Metaflow's S3 client stages files).  The local raw baselines run beside the same sampler,
so both sides of a pair share the machine with it.
Results go to ``<out>.json`` (one JSON object per line, merged by the driver).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid

from _benchutil import prepare, recycle_size
from _tree_sampler import disk_usage as _disk_usage
from metaflow import FlowSpec, checkpoint, current, retry, step

MiB = 1 << 20


def _spec() -> dict:
    return json.loads(os.environ["MFCKPT_VSREF_SPEC"])


def _emit(record: dict) -> None:
    with open(_spec()["out"] + ".json", "a") as f:
        f.write(json.dumps(record) + "\n")


def _temp_dirs() -> list:
    return [os.environ["TMPDIR"], os.getcwd()]


class TreeSampler:
    """Peak RSS of this process and all its descendants, and peak disk under the temp dirs,
    sampled by ``_tree_sampler.py`` in a separate process (an in-process sampler thread held
    this process's GIL for every walk of the directories).

    Both are reported above their level at ``__enter__``.  ``skip`` is left out of the disk
    count (a load's destination when it lies under a temp dir).
    """

    def __init__(self, interval: float = 0.01, skip: str = ""):
        self._args = [str(os.getpid()), str(interval), skip or "-", *_temp_dirs()]
        self._proc = None
        self.levels: dict = {}

    def __enter__(self) -> "TreeSampler":
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_tree_sampler.py")
        self._proc = subprocess.Popen(
            [sys.executable, script, *self._args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self._proc.stdout.readline().strip() != "ready":
            raise RuntimeError("_tree_sampler.py did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._proc.stdin.close()
        self.levels = json.loads(self._proc.stdout.readline())
        self._proc.wait()

    def to_json(self) -> dict:
        lv = self.levels
        return {
            "rss_extra": lv["rss_peak"] - lv["rss0"],
            "disk_extra": lv["disk_peak"] - lv["disk0"],
        }


def _timed(fn, recycle_bytes: int, skip: str = "") -> dict:
    spec = _spec()
    prepare(recycle_bytes, spec["recycle"] and recycle_bytes > 0, spec["workdir"])
    with TreeSampler(skip=skip) as sampler:
        t0 = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - t0
    return dict(sampler.to_json(), seconds=seconds, value=value)


def _raw(fn, recycle_bytes: int) -> float:
    """Seconds of ``fn()`` (a raw baseline) in the same conditions as a timed operation: the
    same ``prepare``, and the same sampler running beside it (its readings unused).  Timed
    without it, the baseline ran on a quieter machine than the operation beside it: the
    sampler's walks cost ``cp -r`` of 64 MiB in 256 files 5-10% (2 CPUs, 2026-12-07)."""
    spec = _spec()
    prepare(recycle_bytes, spec["recycle"] and recycle_bytes > 0, spec["workdir"])
    with TreeSampler():
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def _paired(src: str, recycle_bytes: int, key: str = "cp_seconds", then=None) -> dict:
    """``{key: seconds}`` of the raw baseline beside a timed operation: ``cp -r -L`` of ``src``
    into a fresh directory (links followed: the reference's load leaves links), then
    ``then(copy)``; ``{}`` off the local datastore (the S3 baseline, TransferManager, is the
    driver's)."""
    if not _spec().get("paired"):
        return {}
    dst = os.path.join(_spec()["workdir"], "raw-%s" % uuid.uuid4().hex)

    def run():
        subprocess.run(["cp", "-r", "-L", src, dst], check=True)
        if then is not None:
            then(dst)

    try:
        return {key: _raw(run, recycle_bytes), "raw_sampled": True}
    finally:
        shutil.rmtree(dst, ignore_errors=True)


def _tree(path: str) -> tuple:
    """(files, bytes, symlinks) under ``path``, following links to count the bytes."""
    files = total = links = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            p = os.path.join(dirpath, name)
            files += 1
            links += os.path.islink(p)
            total += os.path.getsize(p)
    return files, total, links


def _read_all(path: str) -> int:
    """Read every byte under ``path`` (following links); returns the byte count."""
    total = 0
    buf = bytearray(8 * MiB)
    view = memoryview(buf)
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                while True:
                    n = f.readinto(view)
                    if not n:
                        break
                    total += n
    return total


def _read_timed(path: str) -> dict:
    t0 = time.perf_counter()
    _read_all(path)
    files, size, links = _tree(path)
    return {"read_seconds": time.perf_counter() - t0, "files": files, "bytes": size, "links": links}


def _instrument() -> None:
    """Time the decorator's ``task_pre_step`` on attempt 1 of ``retry``: the auto-load."""
    try:
        from metaflow_extensions.checkpointing.plugins.checkpointing.task.decorator import (
            CheckpointDecorator,
        )
    except ImportError:  # the reference's venv
        from metaflow_extensions.obcheckpoint.plugins.machine_learning_utilities.checkpoints.decorator import (  # noqa: E501
            CheckpointDecorator,
        )
    original = CheckpointDecorator.task_pre_step

    def timed(self, step_name, *args, **kwargs):
        retry_count = args[6] if len(args) > 6 else kwargs.get("retry_count")
        if step_name != "retry" or retry_count != 1:
            return original(self, step_name, *args, **kwargs)
        size = _spec()["retry_bytes"]
        paired = _paired(_spec()["retry"], recycle_size(size))
        measured = _timed(lambda: original(self, step_name, *args, **kwargs), recycle_size(size))
        measured.pop("value")
        measured.update(paired)
        _emit({"autoload": measured})
        return None

    CheckpointDecorator.task_pre_step = timed


if "MFCKPT_VSREF_SPEC" in os.environ:
    _instrument()


def _state_dict(mib: int) -> dict:
    import torch

    # 16 tensors of random float32: a model's weights do not compress or deduplicate.
    per = mib * MiB // 16 // 4
    return {"layer%02d.weight" % i: torch.rand(per) for i in range(16)}


class VsReferenceFlow(FlowSpec):
    """Same code for both packages: only the installed ``@checkpoint`` differs."""

    @checkpoint(load_policy="none")
    @step
    def start(self):
        import torch

        spec = _spec()
        cp = current.checkpoint
        self.keys = {}
        for kind in ("dir", "many"):
            size = _tree(spec[kind])[1]
            paired = _paired(spec[kind], recycle_size(size))
            measured = _timed(
                lambda kind=kind: cp.save(path=spec[kind], name=kind), recycle_size(size)
            )
            self.keys[kind] = measured.pop("value")["key"]
            _emit({"save": kind, **measured, **paired, "bytes": size})

        state = _state_dict(spec["torch_mib"])
        tdir = os.path.join(spec["workdir"], "torch-src-%d" % os.getpid())
        os.makedirs(tdir)

        split = {}

        def torch_save():
            t0 = time.perf_counter()
            torch.save(state, os.path.join(tdir, "model.pt"))
            split["torch_save_seconds"] = time.perf_counter() - t0  # the same for both packages
            return cp.save(path=tdir, name="torch")

        measured = _timed(torch_save, recycle_size(spec["torch_mib"] * MiB))
        self.keys["torch"] = measured.pop("value")["key"]
        nbytes = os.path.getsize(os.path.join(tdir, "model.pt"))
        # Raw: torch.save (timed above, the same for both packages) + cp -r of its directory.
        paired = _paired(tdir, recycle_size(nbytes))
        _emit({"save": "torch", **measured, **split, **paired, "bytes": nbytes})
        shutil.rmtree(tdir)
        state = None  # free it before the 4 KiB saves

        tiny = os.path.join(spec["workdir"], "tiny-%d" % os.getpid())
        os.makedirs(tiny)
        times, raw, copies = [], [], []
        for i in range(spec["tiny_saves"]):
            with open(os.path.join(tiny, "state.bin"), "wb") as f:
                f.write(os.urandom(4096))
            if spec.get("paired"):
                # The raw copy of the same 4 KiB beside each save: in this process
                # (shutil.copytree, the baseline: cp's own start would be most of cp -r's
                # time), and cp -r for information.
                for kind, out in (("copytree", copies), ("cp", raw)):
                    dst = os.path.join(spec["workdir"], "raw-tiny-%s-%d" % (kind, i))
                    t0 = time.perf_counter()
                    if kind == "cp":
                        subprocess.run(["cp", "-r", tiny, dst], check=True)
                    else:
                        shutil.copytree(tiny, dst)
                    out.append(time.perf_counter() - t0)
                    shutil.rmtree(dst)
            t0 = time.perf_counter()
            cp.save(path=tiny, name="tiny")
            times.append(time.perf_counter() - t0)
        shutil.rmtree(tiny)
        extra = {}
        if raw:
            extra = {"cp_median": statistics.median(raw), "copy_median": statistics.median(copies)}
        _emit({"tiny": times, "median": statistics.median(times), **extra})
        self.next(self.load)

    @checkpoint(load_policy="none")
    @step
    def load(self):
        import torch

        spec = _spec()
        cp = current.checkpoint
        for kind in ("dir", "many"):
            dest = os.path.join(spec["workdir"], "dest-%s-%d" % (kind, os.getpid()))
            size = _tree(spec[kind])[1]
            paired = _paired(spec[kind], recycle_size(size))
            measured = _timed(
                lambda kind=kind, dest=dest: cp.load(self.keys[kind], path=dest), recycle_size(size)
            )
            measured.pop("value")
            measured.update(paired)
            measured.update(_read_timed(dest))
            if measured["bytes"] != size:
                raise RuntimeError(
                    "load of %s: %d bytes, expected %d" % (kind, measured["bytes"], size)
                )
            _emit({"load": kind, **measured})
            shutil.rmtree(dest)

        dest = os.path.join(spec["workdir"], "dest-torch-%d" % os.getpid())

        def torch_load():
            cp.load(self.keys["torch"], path=dest)
            return torch.load(os.path.join(dest, "model.pt"))

        measured = _timed(torch_load, recycle_size(spec["torch_mib"] * MiB))
        state = measured.pop("value")
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        # Raw: cp -r of what was loaded, then torch.load of the copy.
        measured.update(
            _paired(
                dest,
                recycle_size(spec["torch_mib"] * MiB),
                "raw_seconds",
                lambda copy: torch.load(os.path.join(copy, "model.pt")),
            )
        )
        # torch.load read every byte already: the read is part of the timed call for both.
        _emit({"load": "torch", **measured, "bytes": nbytes, "links": _tree(dest)[2]})
        shutil.rmtree(dest)
        self.next(self.retry)

    @retry(times=1, minutes_between_retries=0)
    @checkpoint
    @step
    def retry(self):
        spec = _spec()
        if current.retry_count == 0:
            current.checkpoint.save(path=spec["retry"], name="retry")
            raise RuntimeError("planned failure: the retry auto-loads the checkpoint")
        directory = current.checkpoint.directory
        measured = _read_timed(directory)
        if measured["bytes"] != spec["retry_bytes"]:
            raise RuntimeError(
                "auto-load: %d bytes, expected %d" % (measured["bytes"], spec["retry_bytes"])
            )
        # The loaded copy lies under TMPDIR: its bytes are the destination, not extra temp disk.
        measured["dest_disk"] = _disk_usage(directory)
        _emit({"autoload_read": measured})
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    VsReferenceFlow()
