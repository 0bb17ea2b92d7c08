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
    not a non-empty string, or a ``temp_dir_root`` that is a file here (checked in
    ``step_init``, before any task; what only the task's machine knows, such as permissions,
    is checked where the directory is made: ``core/user_dirs.py``)."""
    for attr in PATH_ATTRIBUTES:
        value = attributes[attr]
        if value is not None and (not isinstance(value, str) or not value):
            raise CheckpointConfigError(
                "Step '%s': @%s(%s=%r) must be a non-empty path or URL string."
                % (step_name, decorator, attr, value)
            )
    temp_dir_root = attributes["temp_dir_root"]
    if temp_dir_root:
        # Here, not at module level: this module is imported by `import metaflow`, the check
        # runs at step_init only (review rv3 item 2).
        from ..core.user_dirs import check_not_a_file, user_path

        check_not_a_file(
            user_path(temp_dir_root),  # ~ is home: where the task will make it
            "Step '%s': @%s(temp_dir_root=%r)" % (step_name, decorator, temp_dir_root),
        )


def checkpoint_root(decorators: Iterable[Any]) -> Optional[str]:
    """The step's ``@checkpoint(root=...)``, if it has one (its store is the step's store)."""
    return next((d.attributes.get("root") for d in decorators if d.name == "checkpoint"), None)


#: ``@checkpoint(upload=...)``: commit every save to the flow's store, or to the local tier and
#: upload the ones that matter when the task ends (docs/upload.md).
UPLOAD_MODES = ("each", "end")
#: ``@checkpoint(upload_errors=...)``: an upload that still fails after the bounded retries
#: fails the save (and the task), or is one warning while training goes on.
UPLOAD_ERRORS = ("fail", "warn")


def choice_attr(value: Any, name: str, allowed: tuple[str, ...], step_name: str) -> str:
    """``value`` as one of ``allowed`` (case and blanks ignored, as ``--with checkpoint:x=END``
    arrives), else :class:`CheckpointConfigError` naming the attribute, the value and the
    allowed ones."""
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in allowed:
        raise CheckpointConfigError(
            "Step '%s': @checkpoint(%s=%r) is not supported: use one of %s."
            % (step_name, name, value, ", ".join(repr(a) for a in allowed))
        )
    return text


def bool_attr(value: Any, name: str, step_name: str) -> bool:
    """True/False, also from the command line (``--with checkpoint:save_on_failure=true``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise CheckpointConfigError(
        "Step '%s': @checkpoint(%s=%r) must be True or False." % (step_name, name, value)
    )


def number_attr(value: Any) -> Any:
    """Attributes given on the command line (``--with checkpoint:keep_last=3``) arrive as
    strings: turn numeric strings into numbers, leave everything else for validation."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value
