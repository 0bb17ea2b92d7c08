"""The frame every ``checkpoint`` command runs in: the click groups, :class:`CliContext`, the
:func:`command` decorator, the shared options and the translation of errors into one line.

Command modules (``browse``, ``transfer``, ``lifecycle``, ``control``) import this module and
:mod:`.output`, never each other nor the package: the package imports them to register their
commands (see :mod:`..cli` for how to add one).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from metaflow._vendor import click

from .output import one_line
from .stores import DATASTORES, store_root

if TYPE_CHECKING:
    from ..client.checkpoint import Checkpoint


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
        from ..common.settings import checkpoint_root

        ds = self._flow_datastore
        return checkpoint_root(ds.TYPE, ds.datastore_root)

    def run_client(self) -> Checkpoint:
        """A client for flows, runs and tasks: each run's store is the one its tasks recorded
        (only ``--root`` overrides it)."""
        return _cli_client(self.root)

    def store_client(self) -> Checkpoint:
        """A client for named checkpoints, uploads and bare keys: the store of ``--root``, else
        the flow's datastore (flow CLI), else the default datastore."""
        return _cli_client(self.root or self.flow_store_root)

    def client_for(self, reference: str) -> Checkpoint:
        """The client that resolves ``reference``: the run client for what names a run's
        checkpoints (a task, ``Flow/...@alias``), else the store client (names, keys, URLs).
        ``word@alias`` follows the resolver's rule: a named checkpoint ``word`` in the store
        client's store wins, else the flow ``word`` (the run client).  Parsed by the one
        reference parser; a malformed reference goes to the store client, whose resolution
        raises the parser's error."""
        from ..common.refspec import parse
        from ..errors import CheckpointConfigError

        try:
            spec = parse(reference)
        except CheckpointConfigError:
            return self.store_client()
        if spec.kind == "task" or (spec.kind == "alias" and spec.target is not None):
            return self.run_client()
        if spec.kind == "alias" and spec.name is not None:
            from ..common.resolver import named_versions

            client = self.store_client()
            # The listing the store client's resolution makes anyway (one prefix).
            return client if named_versions(client._store(), spec.name) else self.run_client()
        return self.store_client()


def _cli_client(root: Optional[str]) -> Checkpoint:
    """A client that records "cli" as the origin of what it publishes."""
    from ..client.checkpoint import Checkpoint

    class CliCheckpoint(Checkpoint):
        _origin = "cli"

    return CliCheckpoint(root=root)


# ---------------------------------------------------------------------------------- groups
class _Commands(click.Group):
    """The group holding ``checkpoint``; it moves the ``metaflow`` command's banner to stderr.

    ``metaflow checkpoint ...`` runs Metaflow's ``start``, which prints ``Metaflow (<version>)``
    on stdout before any subcommand runs, so ``--json`` output would not parse.  ``start``
    looks the subcommand up here first (``get_command``), which is where the banner is sent
    to stderr, for ``checkpoint`` only (ADR 005, cli).
    """

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        if cmd_name == "checkpoint":
            _banner_to_stderr()
        return super().get_command(ctx, cmd_name)


def _banner_to_stderr() -> None:
    """Wrap ``echo_always`` of Metaflow's ``main_cli`` (which ``start`` prints its banner
    with) so that it writes to stderr while the invoked subcommand is ``checkpoint``.  Idempotent;
    a no-op in the flow CLI (which prints its banner on stderr itself)."""
    for module in _main_cli_modules():
        echo = getattr(module, "echo_always", None)
        if echo is None or getattr(echo, "checkpoint_banner", False):
            continue

        def echo_always(line: str, _echo: Callable = echo, **kwargs: Any) -> None:
            ctx = click.get_current_context(silent=True)
            if ctx is not None and ctx.invoked_subcommand == "checkpoint":
                kwargs["err"] = True
            _echo(line, **kwargs)

        echo_always.checkpoint_banner = True  # type: ignore[attr-defined]
        module.echo_always = echo_always


def _main_cli_modules() -> list:
    """``metaflow.cmd.main_cli`` as loaded: by the ``metaflow`` script, or as ``__main__``
    (``python -m metaflow.cmd.main_cli``)."""
    found = []
    for name in ("metaflow.cmd.main_cli", "__main__"):
        module = sys.modules.get(name)
        spec = getattr(module, "__spec__", None)
        if module is not None and getattr(spec, "name", name) == "metaflow.cmd.main_cli":
            found.append(module)
    return found


@click.group(cls=_Commands)
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
                    ctx.root = store_root(kwargs.pop("root"), kwargs.pop("datastore"))
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
    """``--root URL`` (also spelled ``--datastore-root``) and ``--datastore NAME``: the
    checkpoint store to use instead of the one found automatically (see :mod:`.stores`)."""
    fn = click.option(
        "--datastore",
        type=click.Choice(DATASTORES),
        default=None,
        help="Use the checkpoint store of this Metaflow datastore (its configured root, or "
        "--root), for every run and name.",
    )(fn)
    return click.option(
        "--root",
        "--datastore-root",
        "root",
        metavar="URL",
        default=None,
        callback=_check_root,
        help="Checkpoint store root, or a datastore root with mf.checkpointing/ below it (path "
        "or URL). Default: the store a run's tasks recorded; for names and uploads the flow's "
        "datastore (flow CLI) or the default datastore.",
    )(fn)


def _check_root(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[str]:
    """Refuse an empty ``--root`` (``--root ""``, ``--root "$UNSET_VAR"``): it used to be
    ignored silently, so the command read or wrote the default store instead."""
    if value is not None and not value.strip():
        raise click.BadParameter(
            "empty: give a local path or a URL, or leave --root out to use the default store.",
            param_hint="'--root'",  # also for its other spelling, --datastore-root
        )
    return value


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
        raise CliError(one_line(exc.message or str(exc))) from None
    except OSError as exc:
        raise CliError(one_line(str(exc))) from None
