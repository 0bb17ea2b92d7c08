"""Registers the standalone ``metaflow checkpoint ...`` command (read by the ``metaflow`` command).

The path is relative to this ``cmd`` package: ``..plugins`` is the sibling ``plugins`` package,
so both entry points share the one click group of ``plugins/checkpointing/cli/`` (its
``__init__`` exposes ``cli``).
"""

CMDS_DESC = [("checkpoint", "..plugins.checkpointing.cli.cli")]
