"""What docs/faq.md says of Ctrl-C after ``Runner(...)``: Metaflow's ``Runner`` takes over the
process's SIGINT handler for good (an upstream behaviour, not ours), and the FAQ's recipe, the
handler saved before and put back after, gives Ctrl-C its ``KeyboardInterrupt`` back."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

#: Any flow file: the Runner is only created, never run.
FLOW = Path(__file__).resolve().parent / "flows" / "plain_flow.py"

PROBE = textwrap.dedent(
    """
    import os
    import signal
    import sys
    import time

    from metaflow import Runner

    def ctrl_c_raises():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs here at the latest
        except KeyboardInterrupt:
            return True
        return False

    recipe = sys.argv[2] == "recipe"
    old = signal.getsignal(signal.SIGINT)
    with Runner(sys.argv[1]):
        pass
    if recipe:
        signal.signal(signal.SIGINT, old)
    print("raises" if ctrl_c_raises() else "swallowed")
    """
)


def _probe(tmp_path, mode: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(FLOW), mode],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
        env={"USER": "tester", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_after_a_runner_ctrl_c_no_longer_raises_keyboard_interrupt(tmp_path):
    assert _probe(tmp_path, "plain") == "swallowed"


def test_the_faq_recipe_gives_ctrl_c_its_keyboard_interrupt_back(tmp_path):
    assert _probe(tmp_path, "recipe") == "raises"
