"""verify_snapshot (frameworks/hub_remote.py): downloaded Hub files against the Hub's hashes.

Whatever the files, exactly the listed bytes pass; one changed byte, a missing file or a file
the Hub does not list fails naming that file, the repo and the commit.  Hashes are computed as
the Hub computes them (LFS sha256, git blob sha1; tests/fake_hub.py serves the same ones).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointIntegrityError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.frameworks.hub_remote import (
    HubFile,
    SnapshotRequest,
    verify_snapshot,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_hub import git_oid  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REQUEST = SnapshotRequest.of("acme/tiny-bert")
names = st.text(st.sampled_from("abcxyz019_-."), min_size=1, max_size=8).filter(
    lambda n: n not in (".", "..")
)
paths = st.lists(names, min_size=1, max_size=3).map("/".join)
snapshots = st.dictionaries(paths, st.binary(max_size=300), min_size=1, max_size=5).filter(
    lambda d: not any(a != b and b.startswith(a + "/") for a in d for b in d)  # file vs dir
)


def _listed(files: dict[str, bytes], lfs: set[str]) -> list[HubFile]:
    return [
        HubFile(p, len(d), "sha256", hashlib.sha256(d).hexdigest())
        if p in lfs
        else HubFile(p, len(d), "git-sha1", git_oid(d))
        for p, d in files.items()
    ]


def _write(root: str, files: dict[str, bytes]) -> None:
    for p, d in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, p)), exist_ok=True)
        with open(os.path.join(root, p), "wb") as f:
            f.write(d)


@settings(max_examples=60, deadline=None)
@given(snapshots, st.data())
def test_exact_bytes_pass_and_any_change_is_named(files, data):
    lfs = set(data.draw(st.sets(st.sampled_from(sorted(files)))))
    listed = _listed(files, lfs)
    with tempfile.TemporaryDirectory() as root:
        _write(root, files)
        verify_snapshot(root, listed, REQUEST, COMMIT)  # exact bytes pass

        victim = data.draw(st.sampled_from(sorted(files)))
        changed = dict(files)
        original = files[victim]
        changed[victim] = bytes([original[0] ^ 0xFF]) + original[1:] if original else b"x"
        _write(root, changed)
        with pytest.raises(CheckpointIntegrityError) as caught:
            verify_snapshot(root, listed, REQUEST, COMMIT)
        for text in (victim, "acme/tiny-bert", COMMIT, "nothing was stored"):
            assert text in caught.value.message

        _write(root, files)
        os.remove(os.path.join(root, victim))  # missing
        with pytest.raises(CheckpointIntegrityError) as caught:
            verify_snapshot(root, listed, REQUEST, COMMIT)
        assert victim in caught.value.message and "not downloaded" in caught.value.message

        _write(root, {victim: original, "unlisted.bin": b"?"})  # a file the Hub does not list
        with pytest.raises(CheckpointIntegrityError) as caught:
            verify_snapshot(root, listed, REQUEST, COMMIT)
        assert "unlisted.bin" in caught.value.message
