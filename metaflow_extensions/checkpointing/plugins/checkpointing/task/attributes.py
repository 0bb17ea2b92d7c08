"""Decorator attributes the step decorators share (``@checkpoint``, ``@model``,
``@huggingface_hub``): one check and one lookup, so the three say the same thing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

from ..errors import CheckpointConfigError

#: Attributes that name a directory or a store: None, or a non-empty string.
PATH_ATTRIBUTES = ("temp_dir_root", "root")


def check_path_attributes(decorator: str, attributes: dict, step_name: str) -> None:
    """Raise :class:`CheckpointConfigError` for a ``temp_dir_root``/``root`` that is set but is
    not a non-empty string (checked in ``step_init``, before any task)."""
    for attr in PATH_ATTRIBUTES:
        value = attributes[attr]
        if value is not None and (not isinstance(value, str) or not value):
            raise CheckpointConfigError(
                "Step '%s': @%s(%s=%r) must be a non-empty path or URL string."
                % (step_name, decorator, attr, value)
            )


def checkpoint_root(decorators: Iterable[Any]) -> Optional[str]:
    """The step's ``@checkpoint(root=...)``, if it has one (its store is the step's store)."""
    return next((d.attributes.get("root") for d in decorators if d.name == "checkpoint"), None)
