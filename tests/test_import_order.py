"""The import order docs/faq.md recommends for a process that creates a ``Runner`` for a flow
importing torch after something imported ``typing_extensions`` (pydantic, huggingface_hub,
httpx...): importing torch first keeps Metaflow's vendored ``typing_extensions`` from breaking
torch's import (an upstream interaction, not ours)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

FLOW = textwrap.dedent(
    """
    import torch
    from metaflow import FlowSpec, step


    class TorchImportFlow(FlowSpec):
        @step
        def start(self):
            self.next(self.end)

        @step
        def end(self):
            pass


    if __name__ == "__main__":
        TorchImportFlow()
    """
)

PROBE = textwrap.dedent(
    """
    import sys
    import typing_extensions  # what pydantic, httpx or huggingface_hub import first
    import torch  # the FAQ's advice: before the Runner loads the flow file
    from metaflow import Runner

    Runner(sys.argv[1])  # loads the flow file in this process
    print("LOADED")
    """
)


def test_torch_imported_before_the_runner_survives_an_earlier_typing_extensions(tmp_path):
    flow = tmp_path / "torch_import_flow.py"
    flow.write_text(FLOW)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(flow)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LOADED" in done.stdout
