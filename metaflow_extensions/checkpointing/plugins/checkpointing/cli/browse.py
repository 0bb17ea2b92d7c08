"""Browsing commands: ``checkpoint list`` (a table of checkpoints) and ``checkpoint show``
(one checkpoint's fields, save statistics, promotions and files)."""

from __future__ import annotations

import json
from typing import Optional

from metaflow._vendor import click

from ..common.reference import STATUSES
from ..core import summary
from ..core.layout import task_prefix_of
from ..core.promotions import describe_publisher
from ..core.summary import FAILED
from ..fmt import human_size
from .base import CliContext, command, json_option, namespace_options, root_option
from .output import (
    attempt_label,
    created,
    echo_json,
    echo_table,
    metadata_summary,
    one_line,
    publisher_label,
    reference_label,
    short_id,
    task_status_label,
    version,
    with_spelling,
)
from .stores import warn_if_no_store

#: The METADATA cell of a damaged checkpoint in ``list`` (the reason follows the table).
DAMAGED_LABEL = "DAMAGED (unreadable manifest, see below)"
#: What ``metaflow checkpoint list`` without a target says on stderr (the store's root).
NO_TARGET = (
    "Listing the named checkpoints (uploads) of the store %s; to list a flow's checkpoints: "
    "metaflow checkpoint list MyFlow"
)
#: Files shown by ``show`` without ``--all-files``.
SHOWN_FILES = 20


@command(
    "list",
    help="List checkpoints of a flow, run, step or task, newest first.\n\n"
    "TARGET is Flow, Flow/run_id, Flow/run_id/step or Flow/run_id/step/task_id. Without it, "
    "'python flow.py checkpoint list' lists the flow and 'metaflow checkpoint list' the named "
    "checkpoints (uploads). Only runs of the current namespace are listed unless "
    "--namespace or --all-namespaces.",
)
@click.argument("target", required=False)
@click.option("--name", default=None, help="Only this checkpoint name (series).")
@click.option("--step", default=None, help="Only checkpoints of this step.")
@click.option("--run", "run_id", default=None, help="Only checkpoints of this run id.")
@click.option("--task", "task_id", default=None, help="Only checkpoints of this task id.")
@click.option("--attempt", type=int, default=None, help="Only checkpoints of this attempt.")
@click.option("--latest-only", is_flag=True, help="Only checkpoints saved with latest=True.")
@click.option(
    "--status",
    "statuses",
    type=click.Choice(STATUSES),
    multiple=True,
    help="Only checkpoints with this status (repeat for several): uploaded (in the flow's "
    "store), local (only in this machine's local tier, upload='end'), uploading, failed.",
)
@click.option(
    "--order-by",
    metavar="FIELD",
    default=None,
    help="Order by this metadata field, ascending; -FIELD for descending.",
)
@click.option("--limit", type=click.IntRange(min=0), default=None, help="At most N rows.")
@click.option(
    "--named", is_flag=True, help="List the named checkpoints (uploads) instead of a flow's."
)
@click.option(
    "--keys", is_flag=True, help="Show each checkpoint's key (usable as a reference) instead."
)
@json_option
@namespace_options
@root_option
def list_checkpoints(
    ctx: CliContext,
    target: Optional[str],
    name: Optional[str],
    step: Optional[str],
    run_id: Optional[str],
    task_id: Optional[str],
    attempt: Optional[int],
    latest_only: bool,
    statuses: tuple[str, ...],
    order_by: Optional[str],
    limit: Optional[int],
    named: bool,
    keys: bool,
    as_json: bool,
) -> None:
    """List checkpoints as a table (or a JSON array of references).

    ``TARGET`` is ``Flow``, ``Flow/run``, ``Flow/run/step`` or ``Flow/run/step/task``; without
    it the flow CLI lists its flow and ``metaflow checkpoint list`` the named checkpoints.
    """
    if named and target:
        raise click.UsageError("Give either a TARGET or --named, not both.")
    warn_if_no_store(ctx.root)
    explain = target is None and not named and ctx.flow_name is None
    if target is None and not named:
        target = ctx.flow_name
    client = ctx.run_client() if target else ctx.store_client()
    if explain:
        # `metaflow checkpoint list` alone: say what is listed, and how to list a flow.
        click.echo(NO_TARGET % client._store().url, err=True)
    refs = client.list(
        target,
        name=name,
        step=step,
        run=run_id,
        task=task_id,
        attempt=attempt,
        latest_only=latest_only,
        order_by=order_by or None,
        limit=limit,
        status=list(statuses) or None,
    )
    if as_json:
        echo_json([with_spelling(r) for r in refs])
        return
    if not refs:
        click.echo(
            "No checkpoints of %s." % target if target else "No named checkpoints.", err=True
        )
        return
    later = {} if target is None else _later_attempts(client, refs)
    rows = [
        [
            r.key if keys else (r.pathspec or "%s@%s" % (r.name, version(r))),
            short_id(r),
            r.name,
            publisher_label(r) if target is None else attempt_label(r) + later.get(i, ""),
            r.status,
            created(r),
            "-" if r.get("damaged") else human_size(r.size or 0),
            DAMAGED_LABEL
            if r.get("damaged")
            else metadata_summary(r.metadata or {}, first=(order_by or "").lstrip("-")),
        ]
        for i, r in enumerate(refs)
    ]
    # Named checkpoints have no attempt; who published each version matters instead.
    third = "PUBLISHER" if target is None else "ATTEMPT"
    first = "KEY" if keys else "CHECKPOINT"
    header = [first, "ID", "NAME", third, "STATUS", "CREATED (UTC)", "SIZE", "METADATA"]
    echo_table([header, *rows])
    for r in refs:
        if r.get("damaged"):
            click.echo("Warning: damaged checkpoint %s: %s" % (r.key, one_line(r.error)), err=True)


def _later_attempts(client, refs: list) -> dict[int, str]:
    """``", last 1 paused"`` for the first listed row (by index in ``refs``) of each task whose
    last RECORDED attempt has no listed checkpoint (its upload failed, a ``--status`` filter,
    the tier is on another machine), so the table never hides that a task paused or
    succeeded after the attempt it shows.  Only tasks whose newest listed attempt failed or
    did not record its end are asked (one listing of summaries each): an attempt that
    succeeded or paused is its task's last."""
    newest: dict[tuple[str, str], tuple[int, Optional[str], int]] = {}
    for i, r in enumerate(refs):
        if not r.pathspec or r.get("damaged"):
            continue
        task = (r.root, task_prefix_of(r.key))
        if task not in newest or r.attempt > newest[task][0]:
            first = newest[task][2] if task in newest else i
            newest[task] = (r.attempt, r.get("task_status"), first)
    ask: dict[str, list[str]] = {}
    for (root, prefix), (_, ended, _) in newest.items():
        if ended in (None, FAILED):
            ask.setdefault(root, []).append(prefix)
    out: dict[int, str] = {}
    for root, prefixes in ask.items():
        for prefix, last in summary.last_recorded(client._store(root).storage, prefixes).items():
            attempt, _, first = newest[(root, prefix)]
            if last is not None and last[0] > attempt:
                out[first] = ", last %d %s" % (last[0], last[1] or "(end not recorded)")
    return out


@command(
    "show",
    help="Show one checkpoint: where it is, what it holds, how it was saved.\n\n"
    "REFERENCE is a name (resnet50, resnet50@<version>), a manifest key or URL, or a task "
    "pathspec Flow/run_id/step/task_id (the task's latest checkpoint).",
)
@click.argument("reference")
@click.option("--all-files", is_flag=True, help="List every file (default: the first 20).")
@json_option
@namespace_options
@root_option
def show(ctx: CliContext, reference: str, all_files: bool, as_json: bool) -> None:
    """Print a checkpoint's fields, save statistics and files.

    ``REFERENCE`` is a name (``resnet50``, ``resnet50@<version>``), a manifest key or URL, or a
    task pathspec ``Flow/run/step/task`` (its latest checkpoint).
    """
    warn_if_no_store(ctx.root)
    client = ctx.client_for(reference)
    ref = client.get(reference)
    files = ref.files
    story = client._promotion_story(ref)  # named checkpoints: where promoted, and the log
    if as_json:
        echo_json(dict(with_spelling(ref), files=files, **story))
        return
    stats = ref.stats or {}
    fields = [
        ("reference", reference_label(ref)),
        ("id", short_id(ref)),
        ("key", ref.key),
        ("url", ref.url),
        ("name", ref.name),
        ("status", ref.status),
    ]
    if ref.pathspec is None:
        fields.append(("version", version(ref)))
        fields.append(("publisher", describe_publisher(ref.publisher)))
        fields.append(("trusted", _trusted_in(ref.publisher, story["promoted_to"])))
    else:
        fields += [("pathspec", ref.pathspec), ("attempt", str(ref.attempt))]
        fields.append(("task_status", task_status_label(ref)))
        fields += [("namespace", ref.namespace), ("foreach", ref.foreach)]
    fields += [
        ("created", created(ref) + " UTC"),
        ("latest", "yes" if ref.latest else "no"),
        ("size", "%s (%d bytes)" % (human_size(ref.size), ref.size)),
        ("files", str(ref.files_count)),
        ("metadata", json.dumps(ref.metadata, sort_keys=True) if ref.metadata else "-"),
        ("saved", _describe_stats(stats)),
        ("took", _describe_seconds(stats)),
    ]
    width = max(len(k) for k, _ in fields) + 1
    for label, value in fields:
        click.echo("%-*s %s" % (width, label + ":", value))
    if story["promotions"]:
        click.echo("")
        rows = [["PROMOTED (UTC)", "ACTION", "NAMESPACE", "BY"]]
        for e in story["promotions"]:
            by = e.get("by") if isinstance(e.get("by"), dict) else {}
            who = by.get("namespace") or by.get("user") or "unknown"
            when = str(e.get("at", ""))[:19].replace("T", " ")
            rows.append([when, str(e.get("action")), str(e.get("namespace")), str(who)])
        echo_table(rows)
    shown = files if all_files else files[:SHOWN_FILES]
    click.echo("")
    echo_table([["SIZE", "FILE"], *[[human_size(f["size"]), f["path"]] for f in shown]])
    if len(shown) < len(files):
        click.echo("... and %d more files (--all-files)" % (len(files) - len(shown)))


def _trusted_in(publisher: Optional[dict], promoted_to: list) -> str:
    """The namespaces where a bare name may resolve to this version."""
    where = []
    if publisher and publisher.get("namespace"):
        where.append("%s (publisher)" % publisher["namespace"])
    where += ["%s (promoted)" % ns for ns in promoted_to]
    return ", ".join(where) or "no namespace by name (pin it: name@version, or promote it)"


def _describe_stats(stats: dict) -> str:
    if not stats:
        return "-"
    return "read %s, uploaded %s, deduplicated %s" % (
        human_size(stats.get("bytes_read", 0)),
        human_size(stats.get("bytes_uploaded", 0)),
        human_size(stats.get("bytes_deduplicated", 0)),
    )


def _describe_seconds(stats: dict) -> str:
    seconds = stats.get("seconds") or {}
    if not seconds:
        return "-"
    return ", ".join("%s %.3f s" % (phase, float(s)) for phase, s in seconds.items())
