"""The ``checkpoint`` commands: ``python flow.py checkpoint ...`` and ``metaflow checkpoint ...``.

One click group serves both entry points.  The flow CLI (registered with ``CLIS_DESC`` as
``.checkpointing.cli.cli``) gives it Metaflow's flow context: ``list`` defaults to the flow, and
named checkpoints and uploads use the checkpoint store of the flow's datastore.  The standalone
``metaflow`` command (``CMDS_DESC`` in ``cmd/``, ``..plugins.checkpointing.cli.cli``) has no
flow: ``list`` without a target lists the named checkpoints of the default store.  Everything
else goes through the public client (:class:`~..client.checkpoint.Checkpoint`).

Modules, imports pointing down only (no module imports this package or a sibling command
module, so there is no import loop):

- :mod:`.base`: the groups, :class:`~.base.CliContext`, :func:`~.base.command`, the shared
  options (``--root``/``--datastore``, ``--namespace``/``--all-namespaces``, ``--json``), errors
  as one line;
- :mod:`.stores`: the store ``--datastore``/``--root`` designate;
- :mod:`.output`: tables, labels, short ids, rounded floats, JSON, progress bars;
- one module per command group: :mod:`.browse` (list, show), :mod:`.transfer` (load, upload,
  delete), :mod:`.lifecycle` (prune, gc, du, verify), :mod:`.control` (pin, unpin, pause,
  promote, unpromote).

Adding a command is writing one function in the module of its group (or a new module, added to
the imports below)::

    from .base import CliContext, command, root_option
    from .output import echo_table

    @command("du", help="...")
    @root_option
    @click.argument("target")
    def disk_usage(ctx: CliContext, target: str) -> None:
        refs = ctx.run_client().list(target)
        ...

It receives the :class:`~.base.CliContext` first; ``--root``/``--datastore``/``--namespace``/
``--all-namespaces`` (when declared with :func:`~.base.root_option`/
:func:`~.base.namespace_options`) are applied before it runs.  Any ``MetaflowException``
(every ``CheckpointException``) or ``OSError`` it raises becomes one line ``Error: <message>``
on stderr and exit status 1; click's usage errors exit with 2.  ``tests/test_registration.py``
checks that both entry points list every command.
"""

from . import browse, control, lifecycle, transfer  # noqa: F401 - each registers its commands
from .base import cli

__all__ = ["cli"]
