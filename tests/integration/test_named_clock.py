"""Named checkpoints published from machines whose clocks disagree: real processes, a real flow.

Each publisher is a real process whose wall clock is shifted (``tests/clockskew/sitecustomize.py``
on ``PYTHONPATH``): ``Checkpoint().save`` from a client script, ``metaflow checkpoint upload``,
and a flow run (launcher and tasks) that uploads ``models=["uploaded=./upload_dir"]`` and saves
with ``current.model.save``.  Whatever the offsets (behind or ahead), the versions are listed in
the order they were published and a bare name loads the last one published.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import library_scope

from .flowrun import (
    FLOWS,
    PROBE_PRELUDE,
    local_root,
    local_store,
    run_flow,
    run_probe,
    subprocess_env,
)

CLOCKSKEW = str(Path(__file__).resolve().parents[1] / "clockskew")
HOUR = 3600
NAMES = ("uploaded", "saved")

SAVE = (
    PROBE_PRELUDE
    + """\
text = sys.argv[1]
os.makedirs(text, exist_ok=True)
with open(os.path.join(text, "w"), "w") as f:
    f.write(text)
for name in %r:
    Checkpoint().save(text, name=name, metadata={"by": text})
print("PROBE {}")
"""
    % (NAMES,)
)

LOAD = (
    PROBE_PRELUDE
    + """\
import shutil
out["loaded"] = {}
for name in %r:
    shutil.rmtree("out", ignore_errors=True)
    Checkpoint().load(name, "out")
    out["loaded"][name] = open(os.path.join("out", "w")).read()
print("PROBE" + json.dumps(out))
"""
    % (NAMES,)
)


def skewed(env: dict, seconds: int) -> dict:
    return {**env, "PYTHONPATH": CLOCKSKEW, "MFCKPT_TEST_CLOCK_SKEW_S": str(seconds)}


def publish_from_client(env, cwd, text: str, skew: int) -> None:
    run_probe(SAVE, skewed(env, skew), cwd, text)


def publish_from_cli(env, cwd, text: str, skew: int) -> None:
    src = Path(cwd) / text
    src.mkdir()
    (src / "w").write_text(text)
    for name in NAMES:
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "metaflow"), "checkpoint", "upload", str(src)]
            + ["--name", name, "--metadata", '{"by": "%s"}' % text],
            env=subprocess_env(skewed(env, skew)),
            cwd=str(cwd),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def publish_from_flow(env, cwd, skew: int):
    """The flow's launcher uploads ``uploaded``, its step saves ``saved`` (content "flow")."""
    upload = Path(cwd) / "upload_dir"
    upload.mkdir()
    (upload / "w").write_text("flow")
    return run_flow(FLOWS / "named_clock_flow.py", skewed(env, skew), cwd)


def listed_contents(cwd, name: str) -> list[str]:
    """The content of each version of ``name`` as the store lists them, newest first."""
    store = local_store(local_root(cwd))
    out = []
    for h in store.headers(library_scope(name).step_prefix(), name=name):
        with store.open(store.read(h.key), "w") as f:
            out.append(f.read().decode())
    return out


@pytest.mark.parametrize(
    "skews, last",
    [
        ((0, -HOUR, -2 * HOUR), "client"),  # every later publisher is further behind
        ((HOUR, 0, -HOUR), "cli"),  # the first publisher's clock is ahead
        ((0, HOUR, 0), "cli"),  # the flow's clock is ahead of the publisher after it
    ],
    ids=["later-ones-behind", "first-ahead", "flow-ahead"],
)
def test_named_versions_follow_publication_order_across_machines_whose_clocks_disagree(
    flow_env, skews, last
):
    env, cwd = flow_env
    publish_from_client(env, cwd, "first", skews[0])
    result = publish_from_flow(env, cwd, skews[1])
    # The run's launcher uploaded after "first": its step got that upload by name.
    assert result.run["start"].task.data.uploaded_seen == "flow"
    (publish_from_client if last == "client" else publish_from_cli)(env, cwd, "last", skews[2])
    for name in NAMES:
        assert listed_contents(cwd, name) == ["last", "flow", "first"], name
    loaded, _ = run_probe(LOAD, env, cwd)
    assert loaded["loaded"] == {name: "last" for name in NAMES}
