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

# The reference extension's datastores (S3 under their own names), so configurations naming
# them keep working (task/datastores.py).
DATASTORES_DESC = [
    ("s3-compatible", ".checkpointing.task.datastores.S3CompatibleStorage"),
    ("coreweave", ".checkpointing.task.datastores.CoreweaveStorage"),
]

CLIS_DESC = [("checkpoint", ".checkpointing.cli.cli")]

__mf_promote_submodules__: list = []
