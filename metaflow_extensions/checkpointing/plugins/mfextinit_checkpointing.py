"""Registers metaflow-checkpointing with Metaflow (read on every ``import metaflow``)."""

STEP_DECORATORS_DESC = [
    ("checkpoint", ".checkpointing.task.decorator.CheckpointDecorator"),
]

CLIS_DESC = [("checkpoint", ".checkpointing.cli.cli")]

__mf_promote_submodules__: list = []
