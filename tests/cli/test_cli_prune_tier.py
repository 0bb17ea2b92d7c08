"""``checkpoint prune``/``du`` and ``Checkpoint().prune/du`` on the machine that ran tasks of
``@checkpoint(upload="end")``: listings there also show what only the local tier holds, and the
lifecycle commands must act on the flow's store alone.  And a paused task's resume point
survives ``prune`` (keep rules across runs, expiry) so that ``resume`` still loads it.
Real runs of tests/flows/prune_tier_flow.py, the CLI as subprocesses."""

from __future__ import annotations

import os
import time

import pytest
from conftest import flow_environment
from integration.flowrun import FLOWS, PROBE_PRELUDE, local_root, run_flow, run_probe

from .test_cli import _client_namespace, cli  # noqa: F401 - _client_namespace is autouse

pytestmark = pytest.mark.flow

FLOW = "PruneTierFlow"
FLOW_FILE = FLOWS / "prune_tier_flow.py"
RESUME = "newest latest=True of paused task %s/%s/start/1: its resume point"


def _env(tmp, **extra):
    (tmp / "home").mkdir(exist_ok=True)
    return flow_environment(tmp, METAFLOW_CHECKPOINT_LOCAL_TIER=str(tmp / "tierbase"), **extra)


def _run(env, tmp, **extra):
    result = run_flow(FLOW_FILE, {**env, **extra}, tmp, expect=None)
    return result.run.id


PROBE = (
    PROBE_PRELUDE
    + """
namespace(None)
ckpt = Checkpoint()
attempt("prune", lambda: ckpt.prune(sys.argv[1], keep_last=5, dry_run=True))
attempt("du", lambda: ckpt.du(sys.argv[1])["total"]["checkpoints"])
attempt("status", lambda: ckpt.prune(sys.argv[1], keep_last=5, status="local"))
local = next(r for r in ckpt.list(sys.argv[1]) if r.status == "local")
attempt("delete", lambda: ckpt.delete(local))
attempt("pin", lambda: ckpt.pin(local))
print("PROBE" + json.dumps(out))
"""
)


def test_prune_and_du_act_on_the_flows_store_and_leave_the_tier_alone(tmp_path):
    env = _env(tmp_path)
    run = _run(env, tmp_path)  # attempt 0 fails, attempt 1 pauses: both leave tier saves
    listed = cli(env, tmp_path, "list", FLOW, "--json").json()
    stored = [r["key"] for r in listed if r["status"] == "uploaded"]
    local = sorted(r["key"] for r in listed if r["status"] == "local")
    assert len(stored) == 2 and len(local) == 4, listed  # the last save of each attempt

    dry = cli(env, tmp_path, "prune", FLOW, "--keep-last", "5", "--dry-run")
    assert "Dry run: 0 checkpoints would be deleted." in dry.stdout, dry.describe()
    assert all(k in dry.stdout for k in stored) and not any(k in dry.stdout for k in local)
    expiry = cli(env, tmp_path, "prune", FLOW, "--expire-after-days", "30", "--json").json()
    assert [sorted(g["kept"]) for g in expiry] == [sorted(stored)] and not expiry[0]["deleted"]
    du = cli(env, tmp_path, "du", FLOW, "--json").json()
    assert du["total"]["checkpoints"] == 2

    out, _ = run_probe(PROBE, env, tmp_path, FLOW)
    assert [sorted(g["kept"]) for g in out["prune"]] == [sorted(stored)]
    assert out["du"] == 2
    assert out["status"]["error"] == "CheckpointConfigError"
    assert "acts on the checkpoints in the flow's store" in out["status"]["message"]
    for what in ("delete", "pin"):  # a tier-only reference: refused, saying why
        assert out[what]["error"] == "CheckpointNotFound", out
        assert "only in this machine's local tier (status 'local')" in out[what]["message"]
        assert "%s acts on the flow's store only" % what in out[what]["message"]

    done = cli(env, tmp_path, "prune", FLOW, "--keep-last", "1", "--json").json()
    ((group,),) = [done]
    newest = stored[0]  # attempt 1's last save: the group's newest and the paused resume point
    assert group["deleted"] == [stored[1]]
    assert group["kept"][newest][0] == RESUME % (FLOW, run)
    after = cli(env, tmp_path, "list", FLOW, "--json").json()
    assert [r["key"] for r in after if r["status"] == "uploaded"] == [newest]
    # The tier is untouched: its copy of the deleted one (a failed attempt's, never cleaned)
    # now lists "local" (client/tiers.py), and a second prune ignores it again.
    assert sorted(r["key"] for r in after if r["status"] == "local") == sorted(local + [stored[1]])
    again = cli(env, tmp_path, "prune", FLOW, "--keep-last", "1", "--json").json()
    assert [sorted(g["kept"]) for g in again] == [[newest]] and not again[0]["deleted"]


def _backdate(tmp, run: str, days: float) -> None:
    """Date every manifest of ``run`` in the flow's store ``days`` back (what the store lists)."""
    then = time.time() - days * 86400
    for d, _, files in os.walk(local_root(tmp) / "manifests"):
        if "/%s/" % run in d + "/":
            for f in files:
                os.utime(os.path.join(d, f), (then, then))


def test_a_paused_tasks_resume_point_survives_prune_across_runs_and_resume_loads_it(tmp_path):
    env = _env(tmp_path, UPLOAD="each")
    paused = _run(env, tmp_path, END="pause")
    failed = _run(env, tmp_path, END="fail")
    newest = _run(env, tmp_path, END="succeed")
    _backdate(tmp_path, paused, 10)
    _backdate(tmp_path, failed, 10)
    keys = {
        (r["run"], r["attempt"], r["metadata"]["i"]): r["key"]
        for r in cli(env, tmp_path, "list", FLOW, "--step", "start", "--json").json()
    }
    resume_point = keys[(paused, 0, 2)]

    plan = cli(env, tmp_path, "prune", FLOW, "--expire-after-days", "5", "--dry-run")
    assert RESUME % (FLOW, paused) in plan.stdout, plan.describe()
    (group,) = cli(
        env, tmp_path, "prune", FLOW, "--step", "start", "--expire-after-days", "5", "--json"
    ).json()
    assert group["kept"][resume_point] == [RESUME % (FLOW, paused)]
    # The failed task's checkpoints (both attempts) expire like any other; the paused run's
    # older saves too.
    assert set(group["expired"]) == {k for (r, _, i), k in keys.items() if r == failed} | {
        keys[(paused, 0, 0)],
        keys[(paused, 0, 1)],
    }
    # keep_last across runs would keep only the newest run's: the resume point stays.
    (group,) = cli(
        env, tmp_path, "prune", FLOW, "--step", "start", "--keep-last", "1", "--json"
    ).json()
    assert group["kept"][resume_point] == [RESUME % (FLOW, paused)]
    assert set(group["kept"]) == {resume_point, keys[(newest, 0, 2)]}

    resumed = run_flow(FLOW_FILE, {**env, "END": "succeed"}, tmp_path, resume=paused)
    assert resumed.run["start"].task.data.loaded == "%s 0 2" % paused


def test_a_paused_task_whose_end_upload_failed_keeps_its_uploaded_resume_point(tmp_path):
    """Attempt 0 fails (its end upload works), attempt 1 pauses but its end upload is refused;
    a newer run succeeds.  The paused task's only uploaded checkpoint (attempt 0's newest) is
    what resume loads elsewhere: prune's keep rules and expiry keep it, because the task's
    ending comes from its recorded attempts, not from the uploaded-only listing."""
    env = _env(tmp_path, UPLOAD_ERRORS="warn")
    paused = _run(env, tmp_path, REFUSE_RETRY_UPLOAD="1")
    newest = _run(env, tmp_path, END="succeed")
    _backdate(tmp_path, paused, 10)
    rows = cli(env, tmp_path, "list", FLOW, "--step", "start", "--json").json()
    uploaded = {
        (r["run"], r["attempt"], r["metadata"]["i"]): r["key"]
        for r in rows
        if r["status"] == "uploaded"
    }
    assert set(uploaded) == {(paused, 0, 2), (newest, 0, 2)}, rows
    assert {r["task_status"] for r in rows if r["run"] == paused and r["attempt"] == 1} == {
        "paused"
    }
    resume_point = uploaded[(paused, 0, 2)]
    for rule in (("--keep-last", "1"), ("--expire-after-days", "5")):
        (group,) = cli(env, tmp_path, "prune", FLOW, "--step", "start", *rule, "--json").json()
        assert group["kept"][resume_point] == [RESUME % (FLOW, paused)], rule
    # Gone from the tier (another machine): resume loads that uploaded checkpoint.
    os.rename(tmp_path / "tierbase", tmp_path / "tierbase.away")
    # There the paused task lists attempt 0's checkpoint only; its row says the task's last
    # attempt paused, so the table does not pass it off as failed.
    table = cli(env, tmp_path, "list", "%s/%s" % (FLOW, paused)).stdout
    assert "0 failed, last 1 paused" in table, table
    assert table.count("last 1 paused") == 1, table
    resumed = run_flow(FLOW_FILE, {**env, "END": "succeed"}, tmp_path, resume=paused)
    assert resumed.run["start"].task.data.loaded == "%s 0 2" % paused
