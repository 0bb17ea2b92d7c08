"""@huggingface_hub / current.huggingface_hub against a fake Hub on 127.0.0.1 (tests/fake_hub.py).

Flows are written as for the reference extension and run with metaflow.Runner on a local store
and on S3 (moto).  The fake Hub counts every request and the file bytes it sent, so "stored
once" is asserted as bytes that did (not) move.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .flowrun import FLOWS, PROBE_PRELUDE, local_root, run_flow, run_probe, run_subprocess

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_hub import (  # noqa: E402
    COMMIT_A,
    COMMIT_B,
    COMMIT_P,
    COMMITS,
    PRIVATE_REPO,
    PRIVATE_TOKEN,
    REPO,
    FakeHub,
    hub_env,
)


@pytest.fixture
def fake_hub():
    hub = FakeHub().start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def hub_run(request, flow_env, fake_hub):
    """(env, cwd, blobs) for flows talking to the fake Hub, on a local store or on S3;
    ``blobs(env)`` lists the blob keys of the checkpoint store a run with ``env`` uses."""
    env, tmp = flow_env
    (tmp / ".metaflow").mkdir()
    env = dict(env, **hub_env(fake_hub, str(tmp / "hf_home")))
    if request.param == "local":

        def blobs(env: dict) -> list[str]:
            base = local_root(env["METAFLOW_DATASTORE_SYSROOT_LOCAL"]) / "blobs"
            return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    else:
        s3 = request.getfixturevalue("s3_server")
        bucket = s3["new_bucket"]()
        env = dict(env, **s3["env"], METAFLOW_CHECKPOINT_ROOT="s3://%s/ckpt" % bucket)

        def blobs(env: dict) -> list[str]:
            prefix = env["METAFLOW_CHECKPOINT_ROOT"][len("s3://%s/" % bucket) :] + "/blobs/"
            pages = s3["client"].get_paginator("list_objects_v2")
            return sorted(
                o["Key"]
                for page in pages.paginate(Bucket=bucket, Prefix=prefix)
                for o in page.get("Contents", [])
            )

    return env, tmp, blobs


def _files(commit: str, only_json: bool = False) -> dict:
    files = COMMITS[REPO][commit]
    return {p: d for p, d in files.items() if not only_json or p.endswith(".json")}


def test_a_snapshot_is_stored_once_and_a_second_run_moves_no_file_bytes(hub_run, fake_hub):
    env, tmp, blobs = hub_run
    first = run_flow(FLOWS / "hub_snapshot_flow.py", env, tmp)
    start, use = first.run["start"].task.data, first.run["use"].task.data
    assert start.fields == {
        "type": "checkpoint",
        "source": "huggingface",
        "repo_id": REPO,
        "commit": COMMIT_A,
        "revision": "main",
    }
    # snapshot_download, load() as a context manager and as a path: every file, real bytes.
    assert start.cm_files == _files(COMMIT_A)
    assert start.cm_removed  # the context manager removed its temporary directory
    assert start.plain_files == sorted(_files(COMMIT_A))
    # The reference loads through @model(load=["hf_model"]) in the next step.
    assert use.model_files == _files(COMMIT_A)
    assert use.model_load_files == use.checkpoint_load_files == _files(COMMIT_A)
    # Downloaded from the Hub once (load() reused what snapshot_download stored).
    assert fake_hub.file_bytes == sum(len(d) for d in _files(COMMIT_A).values())
    stored = blobs(env)
    assert stored

    # Outside any flow, the client loads the reference too.
    probe = PROBE_PRELUDE + (
        "from metaflow import Run\n"
        "namespace(None)\n"
        "ref = Run(sys.argv[1])['start'].task.data.hf_model\n"
        "path = Checkpoint().load(ref, 'outside')\n"
        "out['files'] = sorted(os.listdir(path))\n"
        "print('PROBE' + json.dumps(out))\n"
    )
    outside, _ = run_probe(probe, env, tmp, first.run.pathspec)
    assert outside["files"] == sorted(p.split("/")[0] for p in _files(COMMIT_A))

    fake_hub.reset()
    second = run_flow(FLOWS / "hub_snapshot_flow.py", env, tmp)
    data = second.run["start"].task.data
    assert data.hf_model["key"] == start.hf_model["key"]  # the same stored version
    assert fake_hub.file_bytes == 0 and fake_hub.resolves("GET") == fake_hub.resolves("HEAD") == 0
    # Only the revision -> commit look-up, once per call (snapshot_download, load, load).
    assert sum(fake_hub.counts.values()) == 3
    assert blobs(env) == stored  # nothing new in the store
    assert "is in the store: 0 bytes from the Hub" in second.stdout

    # The Hub unreachable: the stored snapshot of the same revision is used, with a warning.
    fake_hub.down = True
    third = run_flow(FLOWS / "hub_snapshot_flow.py", env, tmp)
    assert third.run["use"].task.data.model_files == _files(COMMIT_A)
    assert "using the stored snapshot" in third.stdout and "may be outdated" in third.stdout

    # force_download=True downloads again and publishes a new version (blobs deduplicated).
    fake_hub.down = False
    fake_hub.reset()
    forced = run_flow(FLOWS / "hub_snapshot_flow.py", dict(env, HUB_FORCE="1"), tmp)
    assert forced.run["start"].task.data.hf_model["key"] != start.hf_model["key"]
    assert fake_hub.file_bytes > 0
    assert blobs(env) == stored


def test_another_revision_or_pattern_set_is_another_entry(hub_run, fake_hub):
    env, tmp, _ = hub_run
    main = run_flow(FLOWS / "hub_snapshot_flow.py", env, tmp).run["start"].task.data
    v1 = run_flow(FLOWS / "hub_snapshot_flow.py", dict(env, HUB_REVISION="v1"), tmp)
    data = v1.run["use"].task.data
    assert v1.run["start"].task.data.fields["commit"] == COMMIT_B
    assert v1.run["start"].task.data.hf_model["key"] != main.hf_model["key"]
    assert data.model_files == _files(COMMIT_B)
    assert data.model_files["model.safetensors"] != main.cm_files["model.safetensors"]

    fake_hub.reset()
    subset = run_flow(FLOWS / "hub_snapshot_flow.py", dict(env, HUB_ALLOW='["*.json"]'), tmp)
    assert subset.run["use"].task.data.model_files == _files(COMMIT_A, only_json=True)
    assert subset.run["start"].task.data.hf_model["name"] != main.hf_model["name"]
    assert fake_hub.file_bytes == sum(len(d) for d in _files(COMMIT_A, True).values())


def test_concurrent_misses_in_a_foreach_store_one_copy(hub_run):
    env, tmp, blobs = hub_run
    run = run_flow(FLOWS / "hub_foreach_flow.py", env, tmp, run_kwargs={"max_workers": 3}).run
    join = run["join"].task.data
    assert join.same_files and join.files == _files(COMMIT_A)
    assert len(join.keys) <= 3  # a task that saw another's commit before its own reused it
    # One copy of the bytes whatever the interleaving: as many blobs as one task alone stores
    # in a fresh store.
    alone = tmp / "alone"
    (alone / ".metaflow").mkdir(parents=True)
    env_alone = dict(env, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(alone))
    if "METAFLOW_CHECKPOINT_ROOT" in env:
        env_alone["METAFLOW_CHECKPOINT_ROOT"] = env["METAFLOW_CHECKPOINT_ROOT"] + "-alone"
    run_flow(FLOWS / "hub_snapshot_flow.py", env_alone, alone)
    assert len(blobs(env)) == len(blobs(env_alone)) > 0


def test_every_load_form_is_loaded_before_the_step(hub_run):
    env, tmp, _ = hub_run
    run = run_flow(FLOWS / "hub_load_flow.py", env, tmp).run
    start = run["start"].task.data
    assert start.plain["files"] == sorted(_files(COMMIT_A))
    assert start.plain["weights"] == _files(COMMIT_A)["model.safetensors"]
    assert start.info["repo_id"] == REPO and start.info["commit"] == COMMIT_A
    assert run["at_path"].task.data.at_path_ok
    # Temporary directories under temp_dir_root (loaded entry, load() without a path) are
    # removed when the task ends; a path given is kept.
    assert start.under_root and start.during == 2
    assert run["at_path"].task.data.tmp_left == []
    assert (tmp / "tiny_here" / "config.json").is_file()
    assert run["by_dict"].task.data.v1_weights == _files(COMMIT_B)["model.safetensors"]
    assert run["by_dict"].task.data.v1_commit == COMMIT_B
    assert run["dict_at_path"].task.data.json_only == sorted(_files(COMMIT_A, True))


@pytest.mark.parametrize(
    "case, says",
    [
        ("repo", ["acme/nope", "not found", "HF_ENDPOINT"]),
        ("revision", ["no revision 'v9'", "acme/tiny-bert"]),
        ("local_dir", ["local_dir=...) is not accepted", "path="]),
        ("unknown_argument", ["unknown argument(s) bogus", "max_workers"]),
        ("no_decorator", ["only available in a step decorated with @huggingface_hub", "'end'"]),
        ("down", ["cannot reach the Hugging Face Hub", "holds no snapshot", "revision 'main'"]),
    ],
)
def test_hub_faults_say_what_and_where(flow_env, fake_hub, case, says):
    env, tmp = flow_env
    (tmp / ".metaflow").mkdir()
    env = dict(env, **hub_env(fake_hub, str(tmp / "hf_home")), HUB_CASE=case)
    fake_hub.down = case == "down"
    failed = run_flow(FLOWS / "hub_errors_flow.py", env, tmp, expect="failed")
    for text in says:
        assert text in failed.stdout, failed.describe()
    if case in ("repo", "revision", "down"):
        assert fake_hub.url in failed.stdout
    assert fake_hub.file_bytes == 0


def test_a_malformed_load_entry_fails_the_run_before_any_task(flow_env, fake_hub):
    env, tmp = flow_env
    env = dict(env, **hub_env(fake_hub, str(tmp / "hf_home")))
    proc = run_subprocess([FLOWS / "hub_bad_load_flow.py", "--no-pylint", "run"], env, tmp)
    assert proc.returncode != 0
    assert "a tuple is (repo, path)" in proc.stderr, proc.stderr
    assert "Workflow starting" not in proc.stdout  # no task ran
    assert sum(fake_hub.counts.values()) == 0


def test_a_missing_huggingface_hub_names_the_extra(monkeypatch):
    from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
        CheckpointDependencyError,
    )
    from metaflow_extensions.checkpointing.plugins.checkpointing.frameworks import hub_remote

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CheckpointDependencyError) as caught:
        hub_remote.import_hub()
    assert "metaflow-checkpointing[huggingface]" in str(caught.value)
    assert isinstance(caught.value, ImportError)


@pytest.mark.parametrize(
    "scope, other_step_reuses, other_flow_reuses",
    [("checkpoint", False, False), ("flow", True, False), ("global", True, True)],
)
def test_cache_scope_decides_whose_stored_snapshots_are_reused(
    flow_env, fake_hub, scope, other_step_reuses, other_flow_reuses
):
    env, tmp = flow_env
    (tmp / ".metaflow").mkdir()
    env = dict(env, **hub_env(fake_hub, str(tmp / "hf_home")), HUB_SCOPE=scope)
    one_download = sum(len(d) for d in _files(COMMIT_A).values())
    # Stored by another flow (HubSnapshotFlow) first: reused only with cache_scope="global".
    run_flow(FLOWS / "hub_snapshot_flow.py", env, tmp)
    fake_hub.reset()
    run = run_flow(FLOWS / "hub_scope_flow.py", env, tmp).run
    first, second = run["again"].task.data.first, run["again"].task.data.second
    downloads = fake_hub.file_bytes // one_download
    assert downloads == (0 if other_flow_reuses else 1 if other_step_reuses else 2)
    assert (first["key"] == second["key"]) == other_step_reuses


# ---------------------------------------------------------------- checks on what enters the store
def _checks_env(flow_env, fake_hub, case: str, **extra: str) -> tuple[dict, object]:
    env, tmp = flow_env
    (tmp / ".metaflow").mkdir(exist_ok=True)
    env = {k: v for k, v in env.items() if k != "HF_TOKEN"}
    return dict(env, **hub_env(fake_hub, str(tmp / "hf_home")), HUB_CASE=case, **extra), tmp


@pytest.mark.parametrize("corrupt", ["model.safetensors", "config.json", "onnx/model.onnx"])
def test_bytes_not_matching_the_hubs_hash_are_refused_and_nothing_is_stored(
    flow_env, fake_hub, corrupt
):
    """LFS files (sha256) and small git files (blob sha1): a file served with other bytes than
    the Hub lists fails the task naming the file, repo and commit, and stores nothing: the
    next run downloads again and gets the right bytes."""
    env, tmp = _checks_env(flow_env, fake_hub, "download")
    fake_hub.corrupt = {corrupt}
    failed = run_flow(FLOWS / "hub_checks_flow.py", env, tmp, expect="failed")
    for text in ("Checkpoint integrity error", corrupt, REPO, COMMIT_A, "nothing was stored"):
        assert text in failed.stdout, failed.describe()
    fake_hub.corrupt = set()
    fake_hub.reset()
    good = run_flow(FLOWS / "hub_checks_flow.py", env, tmp).run["start"].task.data
    assert good.files == _files(COMMIT_A)
    assert fake_hub.file_bytes == sum(len(d) for d in _files(COMMIT_A).values())


@pytest.mark.parametrize(
    "auth, revision",
    [("token", None), ("token", COMMIT_P), ("HF_TOKEN", None), ("headers", None), (None, None)],
)
def test_a_private_repo_is_reached_with_the_same_credentials_on_every_request(
    flow_env, fake_hub, auth, revision
):
    """token=, headers= and HF_TOKEN reach every Hub request (revision look-up, file list,
    files), for a branch and a pinned commit; without them the repo is not found."""
    extra = {"HUB_REVISION": revision} if revision else {}
    if auth == "token":
        extra["HUB_TOKEN"] = PRIVATE_TOKEN
    elif auth == "HF_TOKEN":
        extra["HF_TOKEN"] = PRIVATE_TOKEN
    elif auth == "headers":
        extra["HUB_HEADER"] = "Bearer " + PRIVATE_TOKEN
    env, tmp = _checks_env(flow_env, fake_hub, "private", **extra)
    if auth is None:
        failed = run_flow(FLOWS / "hub_checks_flow.py", env, tmp, expect="failed")
        assert "RepositoryNotFoundError" in failed.stdout, failed.describe()
        assert PRIVATE_REPO in failed.stdout and "HF_TOKEN" in failed.stdout
        return
    data = run_flow(FLOWS / "hub_checks_flow.py", env, tmp).run["start"].task.data
    assert data.ref["commit"] == COMMIT_P
    assert data.files == COMMITS[PRIVATE_REPO][COMMIT_P]
    assert fake_hub.unauthorized == 0


@pytest.mark.parametrize("case", ["file_target", "entry_target"])
def test_a_target_that_is_a_file_fails_before_any_hub_request(flow_env, fake_hub, case):
    env, tmp = _checks_env(flow_env, fake_hub, case)
    failed = run_flow(FLOWS / "hub_checks_flow.py", env, tmp, expect="failed")
    assert "it is a file, not a directory" in failed.stdout, failed.describe()
    assert sum(fake_hub.counts.values()) == 0
    assert (tmp / "afile").read_text() == "mine"


def test_patterns_matching_no_file_store_an_empty_snapshot_with_a_warning(flow_env, fake_hub):
    """As in the reference extension (and huggingface_hub), not an error; but said."""
    env, tmp = _checks_env(flow_env, fake_hub, "empty")
    done = run_flow(FLOWS / "hub_checks_flow.py", env, tmp)
    assert done.run["start"].task.data.files == {}
    assert "allow_patterns=['*.nomatch']" in done.stdout
    assert "select none of the %d files of %s" % (len(_files(COMMIT_A)), REPO) in done.stdout


def test_download_directories_of_killed_tasks_are_removed(flow_env, fake_hub):
    """A task killed (-9) mid-download leaves its download directory; the next download under
    the same temp_dir_root removes it, and leaves one whose task is alive."""
    env, tmp = _checks_env(flow_env, fake_hub, "download", HUB_TMP=str(flow_env[1] / "hf_tmp"))
    holder = (
        "import os, signal, sys, time\n"
        "from metaflow_extensions.checkpointing.plugins.checkpointing.core import load_locks\n"
        "os.makedirs(sys.argv[1])\n"
        "load_locks.Lock(sys.argv[1], os.urandom(6).hex())\n"
        "open(os.path.join(sys.argv[1], 'part'), 'w').write('x')\n"
        "print('held', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL) if sys.argv[2] == 'die' else time.sleep(600)\n"
    )
    dead, alive = (
        tmp / "hf_tmp" / "metaflow_hf_download_dead",
        tmp / "hf_tmp" / "metaflow_hf_download_alive",
    )
    proc = subprocess.run([sys.executable, "-c", holder, str(dead), "die"], capture_output=True)
    assert proc.returncode == -signal.SIGKILL and dead.is_dir()
    live = subprocess.Popen(
        [sys.executable, "-c", holder, str(alive), "live"], stdout=subprocess.PIPE
    )
    try:
        assert live.stdout.readline() == b"held\n"
        run_flow(FLOWS / "hub_checks_flow.py", env, tmp)
        assert not dead.exists() and alive.is_dir()
        assert sorted(os.listdir(tmp / "hf_tmp")) == ["metaflow_hf_download_alive"]
    finally:
        live.kill()
        live.wait()


def test_a_pinned_commit_not_stored_fails_fast_while_the_hub_is_down(flow_env, fake_hub):
    """A 40-hex revision needs no look-up; the file list is the first request and fails at once."""
    env, tmp = _checks_env(flow_env, fake_hub, "download", HUB_REVISION=COMMIT_A)
    fake_hub.down = True
    started = time.monotonic()
    failed = run_flow(FLOWS / "hub_checks_flow.py", env, tmp, expect="failed")
    assert "holds no snapshot" in failed.stdout and COMMIT_A in failed.stdout, failed.describe()
    # One request, not retried: huggingface_hub's back-off would take ~23 s.
    assert sum(fake_hub.counts.values()) == 1
    assert time.monotonic() - started < 20
