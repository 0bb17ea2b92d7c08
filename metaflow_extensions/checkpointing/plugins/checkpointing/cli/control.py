"""Control commands: ``checkpoint pin``/``unpin`` (exempt from retention and delete), ``pause``
(ask running tasks to save and stop) and ``promote``/``unpromote`` (trust a named version in a
namespace)."""

from __future__ import annotations

from typing import Optional

from metaflow._vendor import click

from ..core.promotions import describe_publisher
from ..errors import CheckpointNotFound, CheckpointScopeError
from .base import CliContext, command, namespace_options, root_option
from .output import reference_label


def _pin_command(name: str, pinned: bool, help: str) -> None:
    @command(name, help=help)
    @click.argument("reference")
    @namespace_options
    @root_option
    def run(ctx: CliContext, reference: str) -> None:
        client = ctx.client_for(reference)
        ref = client.pin(reference) if pinned else client.unpin(reference)
        click.echo(
            "%s %s (%s)." % ("Pinned" if pinned else "Unpinned", reference_label(ref), ref.key)
        )


_pin_command(
    "pin",
    True,
    "Pin a checkpoint: retention never prunes it and delete refuses it.\n\n"
    "REFERENCE is as for 'show'.",
)
_pin_command("unpin", False, "Remove a pin.\n\nREFERENCE is as for 'show'.")


@command(
    "pause",
    help="Ask the tasks of a run, or one task, to pause at their next check.\n\n"
    "TARGET is Flow/run_id or Flow/run_id/step/task_id. Tasks that call "
    "current.checkpoint.should_pause() see the request within a few seconds, save, and end "
    "as paused (not retried); 'python flow.py resume' continues from their checkpoints. "
    "--clear withdraws the request.",
)
@click.argument("target")
@click.option("--reason", default=None, help="Shown in the task's log.")
@click.option("--clear", is_flag=True, help="Withdraw the pause request.")
@namespace_options
@root_option
def pause(ctx: CliContext, target: str, reason: Optional[str], clear: bool) -> None:
    """Record (or clear) a pause request for a run or task."""
    ctx.run_client().pause(target, reason, clear=clear)
    if clear:
        click.echo("Pause request for %s withdrawn." % target)
    else:
        click.echo(
            "Pause requested for %s; tasks polling should_pause() will save and stop." % target
        )


# ---------------------------------------------------------------------------------- trust
_PROMOTE_HELP = (
    "Let a namespace use one version of a named checkpoint by its name.\n\n"
    "REFERENCE is NAME@VERSION (a version id or a unique prefix; 'list --named --name NAME' "
    "shows the versions and who published them). A bare name (models=['NAME'], "
    "load('NAME')) resolves, in a run or client of namespace NS, to the newest version "
    "published from NS or promoted to NS: promoting is how a version someone uploaded reaches "
    "a production namespace. --to takes the whole namespace, e.g. production:TrainFlow-0-abcd. "
    "The promotion is logged ('show' prints who, when, from which namespace) and pins the "
    "version, so retention and delete keep it."
)


def _promote_command(name: str, promote: bool, help: str) -> None:
    @command(name, help=help)
    @click.argument("reference")
    @click.option(
        "--to",
        "to",
        required=True,
        metavar="NAMESPACE",
        help="The namespace, e.g. production:TrainFlow-0-abcd or user:bob.",
    )
    @root_option
    def run(ctx: CliContext, reference: str, to: str) -> None:
        client = ctx.client_for(reference)
        if promote:
            ref = client.promote(reference, to)
            label = reference_label(ref)
            click.echo(
                "Promoted %s (published by %s) to %s; pinned."
                % (label, describe_publisher(ref.publisher), to)
            )
        else:
            ref = client.unpromote(reference, to)
            label = reference_label(ref)
            click.echo(
                "Withdrew the promotion of %s to %s; it stays pinned ('checkpoint unpin %s' "
                "lets retention prune it)." % (label, to, label)
            )
        # What the name means in that namespace now (a newer trusted version still wins).
        try:
            now = client._store(ref.root).named(ref.name, to)
        except (CheckpointNotFound, CheckpointScopeError):
            click.echo("'%s' now resolves to no version in %s." % (ref.name, to))
            return
        if now.id == ref.version:
            click.echo("'%s' now resolves to %s in %s." % (ref.name, label, to))
        else:
            click.echo(
                "'%s' resolves to %s@%s in %s%s."
                % (
                    ref.name,
                    ref.name,
                    now.id,
                    to,
                    ", which is newer and also trusted there" if promote else "",
                )
            )


_promote_command("promote", True, _PROMOTE_HELP)
_promote_command(
    "unpromote",
    False,
    "Withdraw a promotion made with 'promote' (logged too).\n\n"
    "REFERENCE is NAME@VERSION; --to is the namespace it was promoted to. That namespace then "
    "resolves NAME to its next trusted version. The pin 'promote' set stays.",
)
