"""``checkpoint prune / gc / du / pin / unpin`` and aliases on the command line, against real
runs of cli_flow.py (local datastore), as subprocesses."""

from __future__ import annotations

import os
import re

import pytest
from conftest import flow_environment
from integration.flowrun import run_flow

from .test_cli import (  # noqa: F401 - _client_namespace is an autouse fixture
    FLOW,
    FLOW_FILE,
    _client_namespace,
    assert_user_error,
    cli,
    tree,
    weights,
)

pytestmark = pytest.mark.flow


@pytest.fixture
def two_runs(tmp_path):
    (tmp_path / "home").mkdir()
    env = flow_environment(tmp_path)
    first = run_flow(FLOW_FILE, env, tmp_path)
    second = run_flow(FLOW_FILE, env, tmp_path)
    return env, tmp_path, first.id, second.id


def test_prune_gc_du_and_pins(two_runs):
    env, tmp, first, second = two_runs
    # Pin the oldest checkpoint of the first run, then preview and apply keep-last 1.
    oldest = cli(env, tmp, "list", "%s/%s" % (FLOW, first), "--name", "mfchckpt", "--json").json()
    pinned = oldest[-1]
    out = cli(env, tmp, "pin", pinned["key"]).stdout
    assert out.startswith("Pinned %s@%s" % (pinned["pathspec"], pinned["version"][:8]))
    assert_user_error(cli(env, tmp, "delete", pinned["key"], "--yes", expect=1), "is pinned")

    dry = cli(env, tmp, "prune", "--flow", FLOW, "--step", "train", "--keep-last", "1", "--dry-run")
    assert "WOULD DELETE" in dry.stdout and "Dry run: 5 checkpoints would be deleted." in dry.stdout
    assert len(cli(env, tmp, "list", FLOW, "--json").json()) == 8  # nothing deleted

    before = cli(env, tmp, "du", "--json").json()
    done = cli(env, tmp, "prune", FLOW, "--step", "train", "--keep-last", "1", "--json").json()
    groups = {g["group"]: g for g in done}
    assert sorted(groups) == ["%s/train[_]:final" % FLOW, "%s/train[_]:mfchckpt" % FLOW]
    assert groups["%s/train[_]:mfchckpt" % FLOW]["kept"][pinned["key"]] == ["pinned"]
    left = cli(env, tmp, "list", FLOW, "--json").json()
    assert len(left) == 3  # newest of each series + the pinned one
    assert pinned["key"] in {r["key"] for r in left}

    # GC: the default grace period keeps everything this young; --grace-hours 0 reclaims.
    young = cli(env, tmp, "gc")
    assert young.stdout.startswith("Reclaimed 0 B in 0 blobs")
    report = cli(env, tmp, "gc", "--grace-hours", "0", "--json").json()
    assert report["blobs_deleted"] > 0 and report["bytes_reclaimed"] > 0
    after = cli(env, tmp, "du", "--json").json()
    assert after["stored_bytes"] == before["stored_bytes"] - report["bytes_reclaimed"]
    assert after["stored_bytes"] == after["total"]["physical_bytes"]
    table = cli(env, tmp, "du", FLOW, "--by", "run").table()
    assert table[0] == ["RUN", "CHECKPOINTS", "LOGICAL", "PHYSICAL"]
    assert {row[0] for row in table[1:-1]} == {
        "%s/%s" % (FLOW, first),
        "%s/%s" % (FLOW, second),
        "total",
    }

    # Everything left still loads, byte for byte.
    dest = tmp / "restored"
    cli(env, tmp, "load", pinned["key"], dest)
    assert tree(dest)["weights.bin"] == weights(0)
    cli(env, tmp, "unpin", pinned["key"])
    cli(env, tmp, "delete", pinned["key"], "--yes")


def test_aliases_address_last_and_best(two_runs):
    env, tmp, first, second = two_runs
    best = cli(env, tmp, "show", "%s/%s@best:val_loss" % (FLOW, first), "--json").json()
    assert best["metadata"]["val_loss"] == 0.2 and best["run"] == first
    last = cli(env, tmp, "show", "%s@last" % FLOW, "--json").json()
    assert last["run"] == second and last["name"] == "mfchckpt" and last["metadata"]["epoch"] == 2
    worst = cli(env, tmp, "show", "%s@best:val_loss:max" % FLOW, "--json").json()
    assert worst["metadata"]["val_loss"] == 0.5
    assert_user_error(
        cli(env, tmp, "show", "%s@best:accuracy" % FLOW, expect=1), "numeric metadata field"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["prune", FLOW], "needs at least one keep rule"),
        (["prune", FLOW, "--keep-best", "loss:median"], "mode must be 'min'"),
        (["prune", FLOW, "--keep-best", "a:min", "--keep-best", "a:max"], "contradictory"),
        (["prune", FLOW, "--keep-last", "-1"], "keep_last=-1"),
        (["gc", "--root", "{empty}"], "holds no checkpoint manifest"),
    ],
)
def test_lifecycle_bad_input_deletes_nothing(tmp_path, args, message):
    (tmp_path / "home").mkdir()
    env = flow_environment(tmp_path)
    run_flow(FLOW_FILE, env, tmp_path)
    (tmp_path / "empty").mkdir()
    args = [a.replace("{empty}", str(tmp_path / "empty")) for a in args]
    before = cli(env, tmp_path, "list", FLOW, "--json").json()
    assert_user_error(cli(env, tmp_path, *args, expect=1), message)
    assert cli(env, tmp_path, "list", FLOW, "--json").json() == before


def test_prune_warns_about_an_unknown_metric_and_keeps_the_group(tmp_path):
    (tmp_path / "home").mkdir()
    env = flow_environment(tmp_path)
    run_flow(FLOW_FILE, env, tmp_path)
    out = cli(env, tmp_path, "prune", FLOW, "--keep-best", "f1:max")
    assert "Warning: No checkpoint of %s/train[_]:mfchckpt has a numeric 'f1'" % FLOW in out.stderr
    assert "Deleted 0 checkpoints" in out.stdout
    assert len(cli(env, tmp_path, "list", FLOW, "--json").json()) == 4


def _decisions(stdout: str) -> dict[str, list[tuple[str, str, str]]]:
    """``group -> [(keep|delete, why, key)]`` from a dry run's listing (after the group table,
    before the ``Dry run:`` total)."""
    listing = stdout.split("\n\n", 1)[1].split("Dry run:", 1)[0]
    out: dict[str, list] = {}
    rows: list = []
    for line in listing.splitlines():
        if line.startswith("  "):
            action, why, key = re.split(r"\s{2,}", line.strip())
            rows.append((action, why, key))
        elif line:
            rows = out.setdefault(line.rstrip(":"), [])
    return out


def test_prune_dry_run_says_why_each_checkpoint_is_kept_or_deleted(tmp_path):
    """Every checkpoint of every group is listed once: kept with the reasons the plan gives
    (as --json has them) or deleted because no rule keeps it; nothing is deleted."""
    (tmp_path / "home").mkdir()
    env = flow_environment(tmp_path)
    run_flow(FLOW_FILE, env, tmp_path)
    before = cli(env, tmp_path, "list", FLOW, "--json").json()
    args = ["prune", FLOW, "--keep-last", "1", "--keep-best", "val_loss:min:1", "--dry-run"]
    plans = cli(env, tmp_path, *args, "--json").json()
    out = cli(env, tmp_path, *args)
    decisions = _decisions(out.stdout)
    assert list(decisions) == [p["group"] for p in plans]
    for plan in plans:  # kept ones first, then deleted ones (--json sorts the kept keys)
        listed = decisions[plan["group"]]
        assert sorted(listed[: len(plan["kept"])]) == sorted(
            ("keep", ", ".join(why), key) for key, why in plan["kept"].items()
        )
        assert listed[len(plan["kept"]) :] == [
            ("delete", "no rule keeps it", key) for key in plan["deleted"]
        ]
    # The series: epoch 2 is the newest (keep-last), epoch 1 has the best val_loss (0.2),
    # epoch 0 neither. The "final" series has no val_loss: kept whole, with a warning.
    epochs = {r["key"]: r["metadata"].get("epoch") for r in before}
    series = {
        epochs[key]: (action, why) for action, why, key in decisions[FLOW + "/train[_]:mfchckpt"]
    }
    assert series[2][0] == "keep" and "last 1" in series[2][1]
    assert series[1][0] == "keep" and "val_loss" in series[1][1]
    assert series[0] == ("delete", "no rule keeps it")
    assert [action for action, _, _ in decisions[FLOW + "/train[_]:final"]] == ["keep"]
    assert "has a numeric 'val_loss'" in out.stderr
    assert "Dry run: 1 checkpoints would be deleted." in out.stdout
    assert cli(env, tmp_path, "list", FLOW, "--json").json() == before


def _age(ref: dict, days: float) -> None:
    """Date a checkpoint's manifest file ``days`` back: what a local store then lists."""
    root = ref["root"][len("file://") :] if ref["root"].startswith("file://") else ref["root"]
    path = os.path.join(root, ref["key"])
    then = os.stat(path).st_mtime - days * 86400
    os.utime(path, (then, then))


def test_prune_expire_after_days_overrides_keep_rules_but_not_pins(tmp_path):
    """``--expire-after-days 30``: checkpoints 40 days old by the store are deleted though
    ``--keep-last 5`` would keep them; the dry run says why; a pinned one and the newest
    ``latest=True`` of a series stay (not a series' only ``latest=False`` one); bad values are
    refused before anything is deleted."""
    (tmp_path / "home").mkdir()
    env = flow_environment(tmp_path)
    run_flow(FLOW_FILE, env, tmp_path)
    before = cli(env, tmp_path, "list", FLOW, "--json").json()
    series = {r["metadata"]["epoch"]: r for r in before if r["name"] == "mfchckpt"}
    for ref in before:
        _age(ref, 40)  # every checkpoint, the newest of each series too
    for bad in ("0", "-2", "nan", "inf"):
        assert_user_error(
            cli(env, tmp_path, "prune", FLOW, "--expire-after-days", bad, expect=1),
            "expire_after_days=%s must be a positive number of days" % float(bad),
        )
    assert len(cli(env, tmp_path, "list", FLOW, "--json").json()) == len(before)

    args = ["prune", FLOW, "--keep-last", "5", "--expire-after-days", "30"]
    dry = cli(env, tmp_path, *args, "--dry-run")
    decisions = dict(
        (key, (a, why)) for a, why, key in _decisions(dry.stdout)[FLOW + "/train[_]:mfchckpt"]
    )
    expired = ("delete", "expired: 40 days old (expire_after_days=30)")
    assert decisions[series[0]["key"]] == expired
    assert decisions[series[1]["key"]] == expired
    assert decisions[series[2]["key"]][0] == "keep"
    assert "newest latest=True" in decisions[series[2]["key"]][1]
    # The "final" series' only checkpoint was saved with latest=False: nothing protects it.
    ((final,),) = [[r["key"] for r in before if r["name"] == "final"]]
    assert _decisions(dry.stdout)[FLOW + "/train[_]:final"] == [(*expired, final)]
    assert "Dry run: 3 checkpoints would be deleted." in dry.stdout

    cli(env, tmp_path, "pin", series[0]["key"])
    done = cli(env, tmp_path, *args, "--json").json()
    (group,) = [g for g in done if g["group"] == FLOW + "/train[_]:mfchckpt"]
    assert group["deleted"] == [series[1]["key"]]
    assert group["expired"] == {series[1]["key"]: expired[1]}
    assert group["kept"][series[0]["key"]] == ["pinned", "keep_last 5 (#3)"]
    left = {r["key"] for r in cli(env, tmp_path, "list", FLOW, "--json").json()}
    assert left == {r["key"] for r in before} - {series[1]["key"], final}
