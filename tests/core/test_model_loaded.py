"""``current.model.loaded``: the mapping of what a step loaded and the directories it owns."""

from __future__ import annotations

import os

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.task.model_loaded import LoadedModels


def test_entries_read_as_the_reference_extension_s_mapping(tmp_path):
    loaded = LoadedModels(temp_dir_root=str(tmp_path / "root"))
    first = loaded.directory("my_model")
    assert os.path.isdir(first) and first.startswith(str(tmp_path / "root"))
    assert os.path.basename(first).startswith("metaflow_models_my_model_")
    loaded.add("my_model", first, {"key": "k1", "metadata": {"a": 1}})
    loaded.add("skipped", None, {"key": None})
    assert loaded["my_model"] == first and loaded["skipped"] is None
    assert "my_model" in loaded and "other" not in loaded
    assert list(loaded) == ["my_model", "skipped"] and len(loaded) == 2
    assert loaded.info["my_model"] == {"key": "k1", "metadata": {"a": 1}}
    assert dict(loaded.items()) == {"my_model": first, "skipped": None}
    with pytest.raises(KeyError, match="'other'.*loaded: 'my_model', 'skipped'"):
        loaded["other"]


def test_cleanup_removes_only_what_was_created_and_close_only_temp_dirs(tmp_path):
    loaded = LoadedModels(temp_dir_root=str(tmp_path))
    temp = loaded.directory("a")
    loaded.add("a", temp, {})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("user data")
    assert loaded.directory("b", str(mine)) == str(mine)
    loaded.add("b", str(mine), {})
    created = loaded.directory("c", str(tmp_path / "new" / "dir"))
    loaded.add("c", created, {})
    loaded.cleanup("a")
    loaded.cleanup("b")
    assert not os.path.exists(temp) and "a" not in loaded and "a" not in loaded.info
    assert (mine / "keep.txt").read_text() == "user data"  # a directory of yours is kept
    with pytest.raises(KeyError):
        loaded.cleanup("a")
    again = loaded.directory("d")
    failed = loaded.directory("e")
    loaded.discard("e", failed)
    assert not os.path.exists(failed) and "e" not in loaded
    loaded.close()
    assert not os.path.exists(again) and os.path.isdir(created)  # a requested path stays
