"""Placeholder replaced below in this commit series."""

from metaflow.decorators import StepDecorator


class CheckpointDecorator(StepDecorator):
    name = "checkpoint"
    defaults = {"load_policy": "fresh", "temp_dir_root": None}
