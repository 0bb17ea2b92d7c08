"""Registers metaflow-checkpointing with Metaflow (read on every ``import metaflow``)."""

STEP_DECORATORS_DESC = [
    ("checkpoint", ".checkpointing.task.decorator.CheckpointDecorator"),
    ("model", ".checkpointing.task.model_decorator.ModelDecorator"),
    ("huggingface_hub", ".checkpointing.frameworks.hub_decorator.HuggingfaceHubDecorator"),
]

# The reference extension's flow decorator, refused with a message naming our equivalent.
FLOW_DECORATORS_DESC = [
    ("with_artifact_store", ".checkpointing.task.refused.WithArtifactStoreDecorator"),
]

CLIS_DESC = [("checkpoint", ".checkpointing.cli.cli")]

__mf_promote_submodules__: list = []
