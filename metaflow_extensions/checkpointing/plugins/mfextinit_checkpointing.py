"""Registers metaflow-checkpointing with Metaflow (read on every ``import metaflow``)."""

STEP_DECORATORS_DESC = [
    ("checkpoint", ".checkpointing.decorator.CheckpointDecorator"),
]

__mf_promote_submodules__: list = []
