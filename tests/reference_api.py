"""The API of the reference extension, ``metaflow-checkpoint`` 0.2.14 (outerbounds
``obcheckpoint``), that user code touches: one row per decorator attribute, method, property,
top-level name and reference field, with its parameter names as 0.2.14 spells them (transcribed
from its source: ``checkpoints/decorator.py`` ``CheckpointDecorator.defaults`` and
``CurrentCheckpointer``, ``checkpoints/final_api.py`` ``Checkpoint``, ``datastructures.py``,
``datastore/context.py``, ``datastore/decorator.py``, ``toplevel/toplevel.py``).

``tests/test_reference_api.py`` checks every row against ours: the same names are accepted, or the
row is refused with a message naming our equivalent.  Internal parameters the reference marks
as not public (``Checkpoint.list(as_dict=...)``) are not rows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One thing reference-style code uses.

    ``surface`` is where it lives (``@checkpoint``, ``current.checkpoint``, ``Checkpoint``,
    ``metaflow`` for top-level names, ``reference`` for the dict a save returns); ``kind`` is
    ``attribute`` (of a decorator), ``property``, ``method``, ``function``, ``context manager``,
    ``flow decorator`` or ``field``; ``params`` are the parameter names (self excluded).
    """

    surface: str
    name: str
    kind: str
    params: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return "%s.%s" % (self.surface, self.name)


REFERENCE: list[Row] = [
    # @checkpoint(...): CheckpointDecorator.defaults
    Row("@checkpoint", "load_policy", "attribute"),
    Row("@checkpoint", "show_card", "attribute"),
    Row("@checkpoint", "temp_dir_root", "attribute"),
    # current.checkpoint: CurrentCheckpointer
    Row("current.checkpoint", "directory", "property"),
    Row("current.checkpoint", "is_loaded", "property"),
    Row("current.checkpoint", "info", "property"),
    Row("current.checkpoint", "list", "method", ("name", "task", "attempt", "full_namespace")),
    Row("current.checkpoint", "load", "method", ("reference", "path")),
    # Checkpoint: final_api.Checkpoint (in a task, in its subprocesses, outside any task)
    Row("Checkpoint", "__init__", "method", ("temp_dir_root", "init_dir")),
    Row("Checkpoint", "directory", "property"),
    Row("Checkpoint", "load", "method", ("reference", "path")),
    Row("Checkpoint", "__enter__", "context manager"),
    # from metaflow import ...: toplevel/toplevel.py, plugins/__init__.py
    Row("metaflow", "Checkpoint", "function", ("temp_dir_root", "init_dir")),
    Row("metaflow", "artifact_store_from", "function", ("run", "task", "config")),
    Row("metaflow", "with_artifact_store", "flow decorator", ("type", "config")),
    # The dict save() returns and list() lists: MetaflowDataArtifactReference fields
    Row("reference", "key", "field"),
    Row("reference", "url", "field"),
    Row("reference", "pathspec", "field"),
    Row("reference", "attempt", "field"),
    Row("reference", "created_on", "field"),
    Row("reference", "name", "field"),
    Row("reference", "metadata", "field"),
    Row("reference", "size", "field"),
]
