"""Lifecycle commands: ``checkpoint prune`` (retention across runs), ``gc`` (reclaim storage),
``du`` (logical against physical bytes) and ``verify`` (check that checkpoints are intact)."""

from __future__ import annotations

import json
import math
import sys
from typing import Optional

from metaflow._vendor import click

from ..fmt import human_size
from .base import CliContext, command, json_option, namespace_options, root_option
from .output import echo_json, echo_table, phase_progress, table_lines
from .stores import warn_if_no_store


@command(
    "prune",
    help="Delete the checkpoints no retention rule keeps.\n\n"
    "Rules apply per step, foreach split and name, across the runs under TARGET (Flow, "
    "Flow/run_id, Flow/run_id/step; default: the flow of 'python flow.py', or the named "
    "checkpoints). Kept are the checkpoints any rule keeps, pinned ones, each group's "
    "newest latest=True checkpoint (what a retry or resume loads) and each paused task's "
    "resume point (its newest latest=True), whatever newer runs saved. Only manifests in the "
    "flow's store are deleted (never this machine's local tier of upload='end'): run "
    "'checkpoint gc' to reclaim storage. --expire-after-days N deletes every checkpoint older "
    "than N days by the store's clock, whatever the --keep-* rules say, except pinned ones, "
    "each group's newest latest=True and paused tasks' resume points. At least one --keep-* "
    "or --expire-after-days rule is required.",
)
@click.argument("target", required=False)
@click.option("--flow", "flow", default=None, help="Same as TARGET=FLOW.")
@click.option("--step", default=None, help="Only this step.")
@click.option("--run", "run_id", default=None, help="Only this run id.")
@click.option("--name", default=None, help="Only this checkpoint name (series).")
@click.option("--keep-last", type=int, default=None, metavar="N", help="Keep the newest N.")
@click.option(
    "--keep-best",
    multiple=True,
    metavar="METRIC[:min|max[:K]]",
    help="Keep the K best by a numeric metadata field, e.g. val_loss:min:2 (repeatable).",
)
@click.option(
    "--keep-every-steps",
    type=int,
    default=None,
    metavar="N",
    help="Keep the first checkpoint of every N steps (metadata field 'step').",
)
@click.option(
    "--keep-every-minutes",
    type=float,
    default=None,
    metavar="T",
    help="Keep the first checkpoint of every T minutes.",
)
@click.option(
    "--expire-after-days",
    type=float,
    default=None,
    metavar="N",
    help="Delete checkpoints older than N days (store's clock; float ok), except pinned ones, "
    "each group's newest latest=True and paused tasks' resume points, whatever the --keep-* "
    "rules keep.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Delete nothing; show each checkpoint that would be kept (and why) or deleted.",
)
@json_option
@namespace_options
@root_option
def prune(
    ctx: CliContext,
    target: Optional[str],
    flow: Optional[str],
    step: Optional[str],
    run_id: Optional[str],
    name: Optional[str],
    keep_last: Optional[int],
    keep_best: tuple,
    keep_every_steps: Optional[int],
    keep_every_minutes: Optional[float],
    expire_after_days: Optional[float],
    dry_run: bool,
    as_json: bool,
) -> None:
    """Apply retention rules across runs; ``--dry-run`` shows the plan without deleting."""
    if target and flow:
        raise click.UsageError("Give either TARGET or --flow, not both.")
    target = target or flow or ctx.flow_name
    client = ctx.run_client() if target else ctx.store_client()
    plans = client.prune(
        target,
        keep_last=keep_last,
        keep_best=list(keep_best) or None,
        keep_every_steps=keep_every_steps,
        keep_every_minutes=keep_every_minutes,
        expire_after_days=expire_after_days,
        dry_run=dry_run,
        step=step,
        run=run_id,
        name=name,
    )
    for plan in plans:
        for warning in plan["warnings"]:
            click.echo("Warning: %s" % warning, err=True)
    if as_json:
        echo_json(plans)
        return
    if not plans:
        click.echo("No checkpoints of %s." % (target or "named checkpoints"), err=True)
        return
    rows = [["GROUP", "KEPT", "DELETED" if not dry_run else "WOULD DELETE"]]
    rows += [[p["group"], str(len(p["kept"])), str(len(p["deleted"]))] for p in plans]
    echo_table(rows)
    deleted = sum(len(p["deleted"]) for p in plans)
    if dry_run:
        _echo_decisions(plans)
        click.echo("Dry run: %d checkpoints would be deleted." % deleted)
    else:
        click.echo(
            "Deleted %d checkpoints; run 'checkpoint gc' to reclaim their storage." % deleted
        )


#: Why a checkpoint of a dry run would be deleted.
NO_RULE_KEEPS_IT = "no rule keeps it"


def _echo_decisions(plans: list[dict]) -> None:
    """Under each group, one line per checkpoint: ``keep`` with the reasons the plan gives
    (the rules, pins, the newest ``latest=True``), or ``delete`` (expired, or no rule keeps
    it), then its key (what ``show``, ``pin`` or ``delete`` take)."""
    rows = []
    for plan in plans:
        expired = plan.get("expired") or {}
        rows += [["keep", ", ".join(why), key] for key, why in plan["kept"].items()]
        rows += [["delete", expired.get(key, NO_RULE_KEEPS_IT), key] for key in plan["deleted"]]
    lines = iter(table_lines(rows) if rows else [])
    click.echo("")
    for plan in plans:
        click.echo("%s:" % plan["group"])
        for _ in range(len(plan["kept"]) + len(plan["deleted"])):
            click.echo("  " + next(lines))


class _GraceHours(click.ParamType):
    """A finite number of hours >= 0 (``nan`` would disable the age check, ``inf`` keep all)."""

    name = "hours"

    def convert(self, value, param, ctx):
        try:
            hours = float(value)
        except (TypeError, ValueError):
            self.fail("%r is not a number of hours." % (value,), param, ctx)
        if not math.isfinite(hours) or hours < 0:
            self.fail("%r is not a finite number of hours >= 0." % (value,), param, ctx)
        return hours


@command(
    "gc",
    help="Reclaim storage: delete stored data no checkpoint references any more.\n\n"
    "It is safe to run while flows save: saves in flight are protected by their leases, "
    "whatever the grace period; data younger than --grace-hours (default 6) is kept anyway. A "
    "store holding no checkpoint at all is refused unless --force (probably the wrong --root).",
)
@click.option("--dry-run", is_flag=True, help="Only report what would be reclaimed.")
@click.option(
    "--grace-hours",
    type=_GraceHours(),
    default=6.0,
    show_default=True,
    help="Never delete data younger than this.",
)
@click.option("--force", is_flag=True, help="Collect a store that has no checkpoint.")
@json_option
@root_option
def gc(ctx: CliContext, dry_run: bool, grace_hours: float, force: bool, as_json: bool) -> None:
    """Mark and sweep the blobs of the store; report bytes reclaimed."""
    client = ctx.store_client()
    report = client.gc(
        grace_hours=grace_hours,
        dry_run=dry_run,
        force=force,
        log=lambda msg: click.echo(msg, err=True),
    )
    if as_json:
        echo_json(report)
        return
    verb = "Would reclaim" if dry_run else "Reclaimed"
    click.echo(
        "%s %s in %d blobs (of %d blobs, %s; %d referenced by %d checkpoints, %d younger than "
        "%g h kept) in %.1f s."
        % (
            verb,
            human_size(report["bytes_reclaimed"]),
            report["blobs_deleted"],
            report["blobs"],
            human_size(report["bytes_total"]),
            report["blobs_referenced"],
            report["manifests"],
            report["blobs_young"],
            grace_hours,
            report["seconds"],
        )
    )


@command(
    "du",
    help="Storage used by checkpoints: logical bytes against physical bytes after dedup.\n\n"
    "TARGET is Flow, Flow/run_id or Flow/run_id/step (default: every checkpoint of the store). "
    "Only the flow's store is counted, never this machine's local tier of upload='end'. "
    "Physical bytes count the distinct stored blobs a group references; 'stored' is every "
    "blob of the store, including data only 'gc' would reclaim.",
)
@click.argument("target", required=False)
@click.option(
    "--by",
    type=click.Choice(["flow", "step", "run", "name"]),
    default="step",
    show_default=True,
    help="Group rows by.",
)
@json_option
@namespace_options
@root_option
def du(ctx: CliContext, target: Optional[str], by: str, as_json: bool) -> None:
    """Print logical and physical bytes per group."""
    warn_if_no_store(ctx.root)
    client = ctx.run_client() if target else ctx.store_client()
    usage = client.du(target, by=by)
    if as_json:
        click.echo(json.dumps(usage, indent=2, sort_keys=True))
        return
    rows = [[by.upper(), "CHECKPOINTS", "LOGICAL", "PHYSICAL"]]
    for r in usage["rows"] + [usage["total"]]:
        rows.append(
            [
                r["group"],
                str(r["checkpoints"]),
                human_size(r["logical_bytes"]),
                human_size(r["physical_bytes"]),
            ]
        )
    echo_table(rows)
    click.echo(
        "stored: %s in %d blobs" % (human_size(usage["stored_bytes"]), usage["stored_blobs"])
    )
    for key in usage["damaged"]:
        click.echo("Not counted, damaged (run `metaflow checkpoint verify`): %s" % key, err=True)


@command(
    "verify",
    help="Check that checkpoints are intact; exit 0 only when nothing is wrong.\n\n"
    "TARGET is Flow, Flow/run_id, Flow/run_id/step, Flow/run_id/step/task_id or one "
    "checkpoint (key or URL); default: the whole store. Every manifest is read and every blob "
    "it references looked up; --deep also reads every blob back and re-hashes it. Reports "
    "damaged entries (with the reason), checkpoints with missing blobs (and their files), "
    "inconsistent checkpoints (a slice outside an intact blob), corrupt blobs and, for the "
    "whole store, orphaned leases and unreferenced blobs (what gc "
    "reclaims, ignoring its grace period). Nothing is modified. Exit status: 0 clean, 1 "
    "problems found (or the check failed), 2 wrong usage.",
)
@click.argument("target", required=False)
@click.option("--deep", is_flag=True, help="Also re-hash every blob (reads every byte).")
@json_option
@namespace_options
@root_option
def verify(ctx: CliContext, target: Optional[str], deep: bool, as_json: bool) -> None:
    """Print what the check found (a table of problems, then a summary) and exit 1 if any
    (or if ``--root`` holds no checkpoint store)."""
    no_store = warn_if_no_store(ctx.root)
    client = ctx.client_for(target) if target else ctx.store_client()
    with phase_progress(VERIFY_PHASES) as progress:
        report = client.verify(target, deep=deep, progress=progress)
    if as_json:
        echo_json(report.to_json())
    else:
        rows = report.rows()
        if rows:
            echo_table([["PROBLEM", "KEY", "DETAIL"], *[list(r) for r in rows]])
            click.echo("")
        click.echo(report.summary())
    if not report.ok or no_store:
        sys.exit(1)


#: Bar labels of the phases of ``verify`` (see ``core.verify.VerifyProgress``).
VERIFY_PHASES = {
    "manifests": lambda total: "Reading %d manifests" % total,
    "blobs": lambda total: "Checking %d blobs" % total,
    "bytes": lambda total: "Re-hashing %s" % human_size(total),
}
