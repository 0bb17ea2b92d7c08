"""Transfer commands: ``checkpoint load`` (alias ``download``), ``checkpoint upload`` (a new
version of a named checkpoint) and ``checkpoint delete``."""

from __future__ import annotations

import json
import sys
from typing import Optional

from metaflow._vendor import click

from ..fmt import human_size
from ..task.background import source_bytes
from .base import CliContext, CliError, command, namespace_options, root_option
from .output import progress_bar, reference_label, version


@command(
    "load",
    aliases=("download",),
    help="Download a checkpoint into a directory, verifying every byte.\n\n"
    "REFERENCE is as for 'show'. DIRECTORY is created if missing; a non-empty one is refused "
    "unless --force (then same-named files are replaced and other files kept).",
)
@click.argument("reference")
@click.argument("directory", type=click.Path())
@click.option("--force", is_flag=True, help="Load into a non-empty directory (replaces files).")
@namespace_options
@root_option
def load(ctx: CliContext, reference: str, directory: str, force: bool) -> None:
    """Download ``REFERENCE`` into ``DIRECTORY``.

    A non-empty directory is refused unless ``--force`` (then same-named files are replaced,
    others kept).  Nothing is written when the checkpoint cannot be found or verified.
    """
    client = ctx.client_for(reference)
    ref = client.get(reference)
    with progress_bar("Loading %s" % human_size(ref.size), ref.size) as progress:
        path = client.load(ref, directory, force=force, progress=progress)
    click.echo(
        "Loaded %s (%s, %d files) into %s"
        % (reference_label(ref), human_size(ref.size), ref.files_count, path)
    )


@command(
    "upload",
    help="Save a file or directory as a new version of a named checkpoint.\n\n"
    "Content identical to the newest version is not stored again (0 bytes uploaded). Steps "
    "use it with current.checkpoint.load(NAME) or @checkpoint(models=[NAME]).",
)
@click.argument("path", type=click.Path())
@click.option("--name", required=True, help="Checkpoint name, e.g. resnet50.")
@click.option("--metadata", "metadata_json", metavar="JSON", help="e.g. '{\"top1\": 0.76}'.")
@root_option
def upload(ctx: CliContext, path: str, name: str, metadata_json: Optional[str]) -> None:
    """Upload ``PATH`` as ``NAME``; content identical to the newest version uploads nothing.

    Flow steps use it with ``current.checkpoint.load("NAME")`` or
    ``@checkpoint(models=["NAME"])``.
    """
    metadata = _parse_metadata(metadata_json)
    client = ctx.store_client()
    total = source_bytes(path)
    with progress_bar("Uploading %s" % human_size(total), total) as progress:
        # An explicit upload may return the identical newest version, and says so below.
        ref = client.save(
            path, name=name, metadata=metadata, progress=progress, reuse_identical=True
        )
    stats = ref.stats or {}
    if stats.get("reused"):
        click.echo(
            "%r is already stored as version %s (%s): 0 bytes uploaded."
            % (name, version(ref), human_size(ref.size))
        )
    else:
        click.echo(
            "Uploaded %r version %s (%s, %s new)."
            % (
                name,
                version(ref),
                human_size(ref.size),
                human_size(stats.get("bytes_uploaded", 0)),
            )
        )


@command(
    "delete",
    help="Delete one checkpoint.\n\n"
    "REFERENCE is as for 'show'. Asks for confirmation on a terminal; without a terminal it "
    "refuses unless --yes. Only the manifest is deleted: the checkpoint disappears at once, "
    "its data stays until garbage collection.",
)
@click.argument("reference")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@namespace_options
@root_option
def delete(ctx: CliContext, reference: str, yes: bool) -> None:
    """Delete the checkpoint ``REFERENCE`` (its manifest; data is reclaimed by GC).

    Without ``--yes`` it asks on a terminal and refuses when stdin is not one, so a script
    never deletes by accident.
    """
    client = ctx.client_for(reference)
    ref = client._deletable(reference)  # by key also when its manifest does not parse
    label = "%s%s (%s)" % ("damaged " if ref.get("damaged") else "", reference_label(ref), ref.key)
    if not yes:
        if not sys.stdin.isatty():
            raise CliError(
                "Refusing to delete %s without confirmation: stdin is not a terminal; pass "
                "--yes." % label
            )
        click.confirm("Delete checkpoint %s?" % label, abort=True, err=True)
    client.delete(ref)
    click.echo("Deleted %s." % label)


def _parse_metadata(text: Optional[str]) -> Optional[dict]:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError("--metadata is not valid JSON (%s): %s" % (exc, text)) from None
    if not isinstance(value, dict):
        raise CliError("--metadata must be a JSON object such as '{\"top1\": 0.76}': %s" % text)
    return value
