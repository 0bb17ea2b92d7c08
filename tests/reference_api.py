"""The API of the reference extension, ``metaflow-checkpoint`` 0.2.14 (outerbounds
``obcheckpoint``), that user code touches: one row per decorator attribute, method, property,
top-level name and reference field, with its parameter names as 0.2.14 spells them.

Transcribed from its source: ``checkpoints/decorator.py`` (``CheckpointDecorator.defaults``,
``CurrentCheckpointer``), ``checkpoints/final_api.py`` (``Checkpoint``),
``modeling_utils/decorator.py`` (``ModelDecorator.defaults``), ``modeling_utils/core.py``
(``ModelSerializer`` = ``current.model``, ``LoadedModels``), ``hf_hub/decorator.py``
(``HuggingfaceHubDecorator.defaults``, ``HuggingfaceRegistry`` = ``current.huggingface_hub``),
``datastructures.py``, ``datastore/context.py``, ``datastore/decorator.py`` and
``toplevel/toplevel.py``.

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
    ``flow decorator`` or ``field``; ``params`` are the parameter names (self excluded), in the
    reference's positional order unless ``by_keyword`` (the reference takes them through
    ``**kwargs``, so only by keyword).
    """

    surface: str
    name: str
    kind: str
    params: tuple[str, ...] = ()
    by_keyword: bool = False

    @property
    def id(self) -> str:
        return "%s.%s" % (self.surface, self.name)


REFERENCE: list[Row] = [
    # @checkpoint(...): CheckpointDecorator.defaults
    Row("@checkpoint", "load_policy", "attribute"),
    Row("@checkpoint", "show_card", "attribute"),
    Row("@checkpoint", "temp_dir_root", "attribute"),
    # @model(...): ModelDecorator.defaults
    Row("@model", "load", "attribute"),
    Row("@model", "best_effort_load", "attribute"),
    Row("@model", "temp_dir_root", "attribute"),
    # @huggingface_hub(...): HuggingfaceHubDecorator.defaults
    Row("@huggingface_hub", "load", "attribute"),
    Row("@huggingface_hub", "temp_dir_root", "attribute"),
    Row("@huggingface_hub", "cache_scope", "attribute"),
    # current.checkpoint: CurrentCheckpointer
    Row("current.checkpoint", "directory", "property"),
    Row("current.checkpoint", "is_loaded", "property"),
    Row("current.checkpoint", "info", "property"),
    Row("current.checkpoint", "task_identifier", "property"),
    Row(
        "current.checkpoint",
        "save",
        "method",
        ("path", "name", "metadata", "latest", "storage_format"),
    ),
    Row("current.checkpoint", "list", "method", ("name", "task", "attempt", "full_namespace")),
    Row("current.checkpoint", "load", "method", ("reference", "path")),
    Row("current.checkpoint", "cleanup", "method"),
    Row("current.checkpoint", "refresh_directory", "method"),
    # Checkpoint: final_api.Checkpoint (in a task, in its subprocesses, outside any task)
    Row("Checkpoint", "__init__", "method", ("temp_dir_root", "init_dir")),
    Row("Checkpoint", "directory", "property"),
    Row("Checkpoint", "save", "method", ("path", "metadata", "latest", "name", "storage_format")),
    Row("Checkpoint", "list", "method", ("name", "task", "attempt", "full_namespace")),
    Row("Checkpoint", "load", "method", ("reference", "path")),
    Row("Checkpoint", "generate_key", "method", ("name", "version_id")),
    Row("Checkpoint", "__enter__", "context manager"),
    # current.model: ModelSerializer; current.model.loaded: LoadedModels
    Row("current.model", "save", "method", ("path", "label", "metadata", "storage_format")),
    Row("current.model", "load", "method", ("reference", "path")),
    Row("current.model", "loaded", "property"),
    Row("current.model.loaded", "__getitem__", "method"),  # loaded[name]
    Row("current.model.loaded", "info", "property"),
    # current.huggingface_hub: HuggingfaceRegistry (snapshot_download takes **kwargs there:
    # these are the names its docs and examples pass)
    Row(
        "current.huggingface_hub",
        "snapshot_download",
        "method",
        ("repo_id", "revision", "allow_patterns"),
        by_keyword=True,
    ),
    Row("current.huggingface_hub", "load", "method", ("repo_id", "path", "repo_type")),
    Row("current.huggingface_hub", "loaded", "property"),
    Row("current.huggingface_hub.loaded", "__getitem__", "method"),
    Row("current.huggingface_hub.loaded", "info", "property"),
    # from metaflow import ...: toplevel/toplevel.py, plugins/__init__.py
    Row("metaflow", "Checkpoint", "function", ("temp_dir_root", "init_dir")),
    Row("metaflow", "load_model", "function", ("reference", "path")),
    Row("metaflow", "delete_model", "function", ("reference",)),
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
    Row("reference", "type", "field"),
    Row("reference", "version_id", "field"),
    Row("reference", "storage_format", "field"),
]
