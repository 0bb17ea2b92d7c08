"""The client layer: ``from metaflow import Checkpoint`` outside (and beside) tasks."""

from .checkpoint import Checkpoint

__all__ = ["Checkpoint"]
