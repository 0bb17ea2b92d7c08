"""``checkpoint load --force`` as a user runs it: what is in the way is named, nothing changes."""

from __future__ import annotations

import pytest

from cli.test_cli import assert_user_error, cli, tree, version_of

pytestmark = pytest.mark.flow


def test_load_force_names_what_is_in_the_way_and_changes_nothing(flow_env):
    env, tmp = flow_env
    src = tmp / "model"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"new a")
    (src / "sub" / "b.txt").write_bytes(b"new b")
    store = tmp / "store"
    version = version_of(cli(env, tmp, "upload", src, "--name", "trees", "--root", store).stdout)
    dest = tmp / "dest"
    dest.mkdir()
    (dest / "a.txt").write_bytes(b"old a")
    (dest / "sub").write_bytes(b"a file where the checkpoint has a directory")
    before = tree(dest)

    refused = cli(env, tmp, "load", "trees@" + version, dest, "--force", "--root", store, expect=1)
    assert_user_error(
        refused,
        "1 path is in the way",
        "%s is a file where the checkpoint has a directory" % (dest / "sub"),
        "Nothing was changed",
    )
    assert tree(dest) == before  # a.txt not replaced either

    (dest / "sub").unlink()
    cli(env, tmp, "load", "trees@" + version, dest, "--force", "--root", store)
    assert tree(dest) == {"a.txt": b"new a", "sub/b.txt": b"new b"}
