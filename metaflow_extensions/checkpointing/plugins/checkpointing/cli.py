"""The ``checkpoint`` commands: ``python flow.py checkpoint ...`` and ``metaflow checkpoint ...``.

One click group serves both entry points.  The flow CLI (registered with ``CLIS_DESC``) gives it
Metaflow's flow context: ``list`` defaults to the flow, and named checkpoints and uploads use
the checkpoint store of the flow's datastore.  The standalone ``metaflow`` command (``CMDS_DESC``
in ``cmd/``) has no flow: ``list`` without a target lists the named checkpoints of the default
store.  Everything else goes through the public client (:class:`~.client.Checkpoint`).

Adding a command is writing one function::

    @command("du", help="...")
    @root_option
    @click.argument("target")
    def disk_usage(ctx: CliContext, target: str) -> None:
        refs = ctx.run_client().list(target)
        ...

It receives the :class:`CliContext` first; ``--root``/``--namespace``/``--all-namespaces`` (when
declared with :func:`root_option`/:func:`namespace_options`) are applied before it runs.  Any
``MetaflowException`` (every ``CheckpointException``) or ``OSError`` it raises becomes one line
``Error: <message>`` on stderr and exit status 1; click's usage errors exit with 2.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from metaflow._vendor import click

from .common.reference import CheckpointReference
from .core.promotions import describe_publisher
from .fmt import human_size
from .task.background import source_bytes

if TYPE_CHECKING:
    from .client.checkpoint import Checkpoint

#: Metadata fields shown per row of ``list`` (the rest is summarised as "+N").
TABLE_METADATA_FIELDS = 3
#: The METADATA cell of a damaged checkpoint in ``list`` (the reason follows the table).
DAMAGED_LABEL = "DAMAGED (unreadable manifest, see below)"
#: Files shown by ``show`` without ``--all-files``.
SHOWN_FILES = 20
#: Seconds between two redraws of a progress bar (callbacks arrive per block, from threads).
PROGRESS_REDRAW_SECONDS = 0.1


class CliError(click.ClickException):
    """A user-facing failure: click prints ``Error: <message>`` on stderr and exits with 1."""

    exit_code = 1


# ---------------------------------------------------------------------------------- context
@dataclass
class CliContext:
    """What a command knows about where it runs.

    Attributes
    ----------
    flow_name : str, optional
        The flow of ``python flow.py checkpoint ...``; None for ``metaflow checkpoint ...``.
    root : str, optional
        ``--root`` of the command, if given.
    """

    flow_name: Optional[str] = None
    root: Optional[str] = None
    _flow_datastore: Any = None

    @classmethod
    def from_obj(cls, obj: Any) -> CliContext:
        """Build from click's ``obj``: Metaflow's ``CliState`` in a flow CLI, else None."""
        flow = getattr(obj, "flow", None)
        if flow is None:
            return cls()
        # Browse the metadata the flow CLI was pointed at (top-level --metadata).
        from metaflow import metadata

        metadata(obj.metadata.TYPE)
        return cls(flow_name=flow.name, _flow_datastore=obj.flow_datastore)

    @property
    def flow_store_root(self) -> Optional[str]:
        """Checkpoint root of the flow's datastore (flow CLI), else None (the client's default)."""
        if self._flow_datastore is None:
            return None
        from .common.settings import checkpoint_root

        ds = self._flow_datastore
        return checkpoint_root(ds.TYPE, ds.datastore_root)

    def run_client(self) -> Checkpoint:
        """A client for flows, runs and tasks: each run's store is the one its tasks recorded
        (only ``--root`` overrides it)."""
        from .client.checkpoint import Checkpoint

        return Checkpoint(root=self.root)

    def store_client(self) -> Checkpoint:
        """A client for named checkpoints, uploads and bare keys: the store of ``--root``, else
        the flow's datastore (flow CLI), else the default datastore."""
        from .client.checkpoint import Checkpoint

        return Checkpoint(root=self.root or self.flow_store_root)

    def client_for(self, reference: str) -> Checkpoint:
        """The client that resolves ``reference`` (a task pathspec, name, key or URL)."""
        return self.run_client() if _is_run_reference(reference) else self.store_client()


def _is_run_reference(text: str) -> bool:
    """True for ``Flow[/run[/step[/task]]]``: not a name, a manifest key or a store URL."""
    text = text.strip()
    return "/" in text and not text.startswith("manifests/") and "/manifests/" not in text


# ---------------------------------------------------------------------------------- groups
@click.group()
def cli() -> None:
    """Holds the ``checkpoint`` group for Metaflow's flow CLI and the ``metaflow`` command."""


@cli.group(help="Browse, load, upload, prune and garbage-collect checkpoints.")
@click.pass_context
def checkpoint(ctx: click.Context) -> None:
    ctx.obj = CliContext.from_obj(ctx.obj)


def command(
    name: str, *, help: str, aliases: tuple[str, ...] = ()
) -> Callable[[Callable[..., None]], click.Command]:
    """Register ``fn(ctx: CliContext, **options)`` as ``checkpoint <name>`` (and its aliases).

    Parameters
    ----------
    name : str
        Command name.
    help : str
        Help text; its first paragraph is the summary in ``checkpoint --help``.
    aliases : tuple of str
        Other names of the same command.
    """

    def register(fn: Callable[..., None]) -> click.Command:
        @functools.wraps(fn)
        @click.pass_obj
        def run(ctx: CliContext, **kwargs: Any) -> None:
            with _user_errors():
                if "root" in kwargs:
                    ctx.root = kwargs.pop("root")
                if "all_namespaces" in kwargs:
                    _select_namespace(kwargs.pop("all_namespaces"), kwargs.pop("namespace_"))
                fn(ctx, **kwargs)

        short = help.split("\n\n", 1)[0]
        cmd = checkpoint.command(name, help=help, short_help=short)(run)
        for alias in aliases:
            checkpoint.add_command(
                click.Command(
                    alias,
                    callback=cmd.callback,
                    params=cmd.params,
                    help="Alias of '%s'.\n\n%s" % (name, help),
                    short_help="Alias of '%s'." % name,
                )
            )
        return cmd

    return register


def root_option(fn: Callable) -> Callable:
    """``--root URL``: the checkpoint store to use instead of the one found automatically."""
    return click.option(
        "--root",
        metavar="URL",
        default=None,
        help="Checkpoint store root (path or URL). Default: the store a run's tasks recorded; "
        "for names and uploads the flow's datastore (flow CLI) or the default datastore.",
    )(fn)


def namespace_options(fn: Callable) -> Callable:
    """``--namespace NS`` and ``--all-namespaces``: which runs are visible (default: yours)."""
    fn = click.option(
        "--namespace",
        "namespace_",
        metavar="NS",
        default=None,
        help="Metaflow namespace to look in, e.g. user:alice (default: the current one).",
    )(fn)
    return click.option(
        "--all-namespaces",
        is_flag=True,
        default=False,
        help="Look in every namespace (namespace(None)).",
    )(fn)


def json_option(fn: Callable) -> Callable:
    """``--json``: machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)


def _select_namespace(all_namespaces: bool, name: Optional[str]) -> None:
    if all_namespaces and name:
        raise click.UsageError("Use either --namespace or --all-namespaces, not both.")
    if all_namespaces or name:
        from metaflow import namespace

        namespace(None if all_namespaces else name)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one ``Error:`` line (no traceback)."""
    from metaflow.exception import MetaflowException

    try:
        yield
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(141)
    except MetaflowException as exc:
        raise CliError(_one_line(exc.message or str(exc))) from None
    except OSError as exc:
        raise CliError(_one_line(str(exc))) from None


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


# ---------------------------------------------------------------------------------- commands
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
    if target is None and not named:
        target = ctx.flow_name
    client = ctx.run_client() if target else ctx.store_client()
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
    )
    if as_json:
        _echo_json(refs)
        return
    if not refs:
        click.echo(
            "No checkpoints of %s." % target if target else "No named checkpoints.", err=True
        )
        return
    rows = [
        [
            r.key if keys else _reference_label(r),
            r.name,
            _publisher_label(r) if target is None else str(r.attempt),
            _created(r),
            "-" if r.get("damaged") else human_size(r.size or 0),
            DAMAGED_LABEL
            if r.get("damaged")
            else _metadata_summary(r.metadata or {}, first=(order_by or "").lstrip("-")),
        ]
        for r in refs
    ]
    # Named checkpoints have no attempt; who published each version matters instead.
    third = "PUBLISHER" if target is None else "ATTEMPT"
    header = ["KEY" if keys else "CHECKPOINT", "NAME", third, "CREATED (UTC)", "SIZE"]
    _echo_table([[*header, "METADATA"], *rows])
    for r in refs:
        if r.get("damaged"):
            click.echo("Warning: damaged checkpoint %s: %s" % (r.key, _one_line(r.error)), err=True)


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
    client = ctx.client_for(reference)
    ref = client.get(reference)
    files = ref.files
    story = client._promotion_story(ref)  # named checkpoints: where promoted, and the log
    if as_json:
        _echo_json(dict(ref, files=files, **story))
        return
    stats = ref.stats or {}
    fields = [
        ("reference", _reference_label(ref)),
        ("key", ref.key),
        ("url", ref.url),
        ("name", ref.name),
    ]
    if ref.pathspec is None:
        fields.append(("version", _version(ref)))
        fields.append(("publisher", describe_publisher(ref.publisher)))
        fields.append(("trusted", _trusted_in(ref.publisher, story["promoted_to"])))
    else:
        fields += [("pathspec", ref.pathspec), ("attempt", str(ref.attempt))]
        fields += [("namespace", ref.namespace), ("foreach", ref.foreach)]
    fields += [
        ("created", _created(ref) + " UTC"),
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
        _echo_table(rows)
    shown = files if all_files else files[:SHOWN_FILES]
    click.echo("")
    _echo_table([["SIZE", "FILE"], *[[human_size(f["size"]), f["path"]] for f in shown]])
    if len(shown) < len(files):
        click.echo("... and %d more files (--all-files)" % (len(files) - len(shown)))


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
    with _progress("Loading %s" % human_size(ref.size), ref.size) as progress:
        path = client.load(ref, directory, force=force, progress=progress)
    click.echo(
        "Loaded %s (%s, %d files) into %s"
        % (_reference_label(ref), human_size(ref.size), ref.files_count, path)
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
    client._origin = "cli"  # recorded in the version's publisher
    total = source_bytes(path)
    with _progress("Uploading %s" % human_size(total), total) as progress:
        ref = client.save(path, name=name, metadata=metadata, progress=progress)
    stats = ref.stats or {}
    if stats.get("reused"):
        click.echo(
            "%r is already stored as version %s (%s): 0 bytes uploaded."
            % (name, _version(ref), human_size(ref.size))
        )
    else:
        click.echo(
            "Uploaded %r version %s (%s, %s new)."
            % (
                name,
                _version(ref),
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
    label = "%s%s (%s)" % ("damaged " if ref.get("damaged") else "", _reference_label(ref), ref.key)
    if not yes:
        if not sys.stdin.isatty():
            raise CliError(
                "Refusing to delete %s without confirmation: stdin is not a terminal; pass "
                "--yes." % label
            )
        click.confirm("Delete checkpoint %s?" % label, abort=True, err=True)
    client.delete(ref)
    click.echo("Deleted %s." % label)


# ---------------------------------------------------------------------------------- output
def _version(ref: CheckpointReference) -> str:
    """The version id of a checkpoint: the ``<id>`` field of its manifest file name.

    Key file names are ``<created>-<attempt>-<seq>-<L|N>-<id>-<name>.json`` (names may contain
    '-', ids never do).
    """
    if ref.get("version"):
        return ref["version"]
    stem = ref.key.rsplit("/", 1)[-1][: -len(".json")]
    return stem.split("-", 5)[4]


def _reference_label(ref: CheckpointReference) -> str:
    """How a user refers to it: ``name@version`` for a named checkpoint, else the pathspec."""
    if ref.pathspec is None:
        return "%s@%s" % (ref.name, _version(ref))
    return ref.pathspec


def _publisher_label(ref: CheckpointReference) -> str:
    """The namespace that published a named checkpoint's version (``unknown`` if not recorded)."""
    return (ref.get("publisher") or {}).get("namespace") or "unknown"


def _trusted_in(publisher: Optional[dict], promoted_to: list) -> str:
    """The namespaces where a bare name may resolve to this version."""
    where = []
    if publisher and publisher.get("namespace"):
        where.append("%s (publisher)" % publisher["namespace"])
    where += ["%s (promoted)" % ns for ns in promoted_to]
    return ", ".join(where) or "no namespace by name (pin it: name@version, or promote it)"


def _created(ref: CheckpointReference) -> str:
    # "2025-01-02T03:04:05.678+00:00" -> "2025-01-02 03:04:05"
    return (ref.created_on or "")[:19].replace("T", " ")


def _metadata_summary(metadata: dict, first: str = "") -> str:
    """Up to ``TABLE_METADATA_FIELDS`` ``key=value`` pairs: the ordering field, then numbers
    (metrics, epochs), then the rest, each group by key."""

    def rank(item: tuple) -> tuple:
        key, value = item
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (key != first, not number, key)

    items = sorted(metadata.items(), key=rank)
    shown = ["%s=%s" % (k, _short(v)) for k, v in items[:TABLE_METADATA_FIELDS]]
    if len(items) > TABLE_METADATA_FIELDS:
        shown.append("+%d" % (len(items) - TABLE_METADATA_FIELDS))
    return " ".join(shown)


def _short(value: Any, width: int = 24) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


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


def _echo_table(rows: list[list[str]]) -> None:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = ["%-*s" % (w, c) for w, c in zip(widths, row)] + [row[-1]]
        click.echo("  ".join(cells).rstrip())


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


# ---------------------------------------------------------------------------------- input
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


@contextmanager
def _progress(label: str, total: int) -> Iterator[Optional[Callable[[int], None]]]:
    """A progress callback drawing a bar on stderr when it is a terminal, else None.

    The client calls it from its worker threads with byte counts: updates are taken under a
    lock and the bar is redrawn at most every ``PROGRESS_REDRAW_SECONDS``.
    """
    stream = click.get_text_stream("stderr")
    if total <= 0 or not stream.isatty():
        yield None
        return
    lock = threading.Lock()
    pending = [0, time.monotonic()]  # bytes not drawn yet, time of the last redraw

    with click.progressbar(length=total, label=label, file=stream) as bar:

        def update(n: int) -> None:
            with lock:
                pending[0] += n
                now = time.monotonic()
                if now - pending[1] >= PROGRESS_REDRAW_SECONDS:
                    bar.update(pending[0])
                    pending[0], pending[1] = 0, now

        yield update
        with lock:
            bar.update(pending[0])


# Lifecycle commands (prune, gc, du, verify, pin, unpin) register themselves on the same group.
from . import cli_lifecycle  # noqa: E402, F401
