"""@parallel gangs with ``save(sharded=True)``: one checkpoint with a shard per node, committed
once all nodes saved; never with a node missing, and a node that fails stops the others' wait
at once (ADR 004)."""

from __future__ import annotations

import pytest

from .flowrun import FLOWS, local_root, local_store, run_flow

pytestmark = pytest.mark.flow


@pytest.mark.parametrize("nodes, upload", [(2, "each"), (3, "each"), (2, "end")])
def test_each_rank_resumes_from_its_own_shard_of_one_checkpoint(flow_env, nodes, upload):
    """Also with ``upload="end"``: a sharded save commits to the flow's store (where the
    participants on other machines meet), never into one machine's local tier."""
    env, tmp = flow_env
    env = dict(env, MFCKPT_TEST_UPLOAD=upload)
    result = run_flow(FLOWS / "parallel_flow.py", env, tmp, run_kwargs={"nodes": nodes})
    join = result.run["join"].task
    keys = {key for _, key in join.data.by_rank.values()}
    assert len(keys) == 1  # every rank loaded the same checkpoint
    for rank in range(nodes):
        loaded, _ = join.data.by_rank[rank]
        assert loaded == "rank %d epoch 1" % rank
        assert join.data.files_by_rank[rank] == ["opt/state.bin", "shard.txt"]
    assert join.data.all_ranks == ["rank-%d" % r for r in range(nodes)]
    # Stored: exactly one manifest per gang save (2 epochs), each listing every rank's files.
    store = local_store(local_root(tmp))
    headers = store.headers("manifests/")
    assert len(headers) == 2
    manifest = store.read(keys.pop())
    assert manifest.source == {"kind": "parallel", "ranks": nodes, "by": "node"}
    assert manifest.sharded and "-Ls-" in manifest.key
    assert sorted(f.path for f in manifest.files) == sorted(
        "rank-%d/%s" % (r, p) for r in range(nodes) for p in ("opt/state.bin", "shard.txt")
    )
    assert not list(store.storage.list("parts/"))  # parts are removed once committed


@pytest.mark.parametrize(
    "mode, timeout, says",
    [
        # Node 1 vanishes without a word: node 0 gives up after the timeout, naming it.
        ("exit", "3", "node(s) 1 did not save their part within 3 s"),
        # Node 1's step fails: it is marked gone, and node 0 stops at once naming it and why
        # (the 60 s timeout would say "did not save their part within 60 s" instead).
        (
            "fail",
            "60",
            "node 1 will not save it (node 1: its step failed: RuntimeError: rank 1 fails",
        ),
    ],
)
def test_a_gang_checkpoint_missing_a_rank_is_never_committed(flow_env, mode, timeout, says):
    env, tmp = flow_env
    env = dict(env, METAFLOW_CHECKPOINT_PARALLEL_TIMEOUT=timeout)
    result = run_flow(FLOWS / "parallel_partial_flow.py", env, tmp, run_kwargs={"mode": mode})
    assert result.run["join"].task.data.loaded == {0: "rank 0 epoch 0", 1: "rank 1 epoch 0"}
    assert says in result.stdout + result.stderr, result.describe()
    store = local_store(local_root(tmp))
    epochs = [store.read(h.key).metadata["epoch"] for h in store.headers("manifests/")]
    assert epochs == [0]  # epoch 1 never became a checkpoint
