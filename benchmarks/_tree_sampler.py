"""Peak RSS of a process tree and peak disk use under some directories, sampled from outside.

    python _tree_sampler.py PID INTERVAL SKIP DIR [DIR ...]

``bench_vs_reference_flow.TreeSampler`` starts it around each timed operation: it prints
``ready`` once it has the starting levels, samples every INTERVAL seconds until its standard
input closes, then prints one JSON line (``rss0``, ``rss_peak``, ``disk0``, ``disk_peak``).  It
runs in its own process at a lower priority, so the walk of the directories does not hold the
measured process's GIL (an in-process sampler thread did, every 10 ms, which cost a save of
many files in a task ~10-15% of its time, more the more threads it used).  SKIP (or ``-``) is
left out of the disk count.
"""

from __future__ import annotations

import json
import os
import select
import sys


def disk_usage(path: str, skip: str = "") -> int:
    """Bytes allocated under ``path`` (``lstat``: a symbolic link counts as itself)."""
    total = 0
    try:
        entries = list(os.scandir(path))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.path == skip:
                continue
            if entry.is_dir(follow_symlinks=False):
                total += disk_usage(entry.path, skip)
            else:
                total += entry.stat(follow_symlinks=False).st_blocks * 512
        except OSError:  # removed while we looked: a temp file
            continue
    return total


def main() -> None:
    import psutil

    pid, interval, skip, dirs = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:]
    skip = "" if skip == "-" else skip
    os.nice(10)
    root, me = psutil.Process(pid), os.getpid()

    def rss() -> int:
        total = 0
        for proc in [root] + root.children(recursive=True):
            if proc.pid == me:
                continue
            try:
                total += proc.memory_info().rss
            except psutil.Error:  # exited between listing and reading
                pass
        return total

    def disk() -> int:
        return sum(disk_usage(d, skip) for d in dirs)

    rss0, disk0 = rss(), disk()
    rss_peak, disk_peak = rss0, disk0
    print("ready", flush=True)
    while True:
        done = select.select([sys.stdin], [], [], interval)[0]
        rss_peak, disk_peak = max(rss_peak, rss()), max(disk_peak, disk())
        if done:
            break
    out = {"rss0": rss0, "rss_peak": rss_peak, "disk0": disk0, "disk_peak": disk_peak}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
