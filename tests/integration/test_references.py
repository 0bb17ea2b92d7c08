"""A reference saved as an artifact is loaded in a later step (design.md sections 2 and 8)."""

from __future__ import annotations

import pytest

from .flowrun import FLOWS, run_flow, single_task

pytestmark = pytest.mark.flow


def test_reference_artifact_loads_in_later_steps_as_plain_files(flow_env):
    env, tmp = flow_env
    result = run_flow(FLOWS / "reference_flow.py", env, tmp)
    produce = single_task(result.run, "produce")
    consume = single_task(result.run, "consume")
    end = single_task(result.run, "end")

    saved = produce.data.saved_tree
    assert set(saved) == {"weights.bin", "nested/config.json", "nested/deeper/run.sh"}
    assert saved["nested/deeper/run.sh"][2] == 0o755
    ref = produce.data.ref
    assert ref.metadata == {"produced_by": produce.pathspec}
    assert ref.size == 1024 * 1024 + len('{"lr": 0.1}') + len("#!/bin/sh\necho hi\n")

    # The later step started empty (fresh, first attempt) and loaded the reference on request.
    assert consume.data.loaded_at_start is False
    assert consume.data.default_target_is_directory is True
    # Identical content, plain files (no links into the store), modes preserved.
    assert consume.data.default_tree == saved
    assert all(islink is False for _, islink, _ in saved.values())
    # Editing the loaded files changed them locally only; a re-load restores the checkpoint
    # exactly (the extra file is gone because load() empties the managed directory).
    edited = consume.data.edited_tree
    assert edited["weights.bin"][0] != saved["weights.bin"][0]
    assert "nested/config.json" not in edited and "extra.txt" in edited
    assert consume.data.reloaded_tree == saved
    # load(ref, path=...) writes to the user's directory, created if missing.
    assert consume.data.custom_target == consume.data.own_dir
    assert consume.data.custom_tree == saved
    assert consume.data.created_target_tree == saved
    # The client API loads the same reference from a step without @checkpoint.
    assert end.data.client_tree == saved
