"""CheckpointReference: the small, picklable handle of one committed checkpoint.

It is a ``dict`` (so ``ref["key"]`` and ``ref["metadata"]`` work, as in code written for other
``@checkpoint`` extensions, and it pickles as an artifact without custom state) whose fields are
also attributes (``ref.key``, ``ref.pathspec``).
"""

from __future__ import annotations

from typing import Any

from .core.manifest import Manifest

#: Fields every reference carries.
FIELDS = (
    "key",
    "url",
    "root",
    "name",
    "pathspec",
    "attempt",
    "created_on",
    "metadata",
    "latest",
    "size",
    "namespace",
    "flow",
    "step",
    "foreach",
    "run",
    "task",
)


class CheckpointReference(dict):
    """A committed checkpoint: a mapping with attribute access.

    Keys/attributes: ``key`` (manifest key relative to ``root``), ``url`` (full URL of the
    manifest), ``root`` (checkpoint store root), ``name``, ``pathspec`` (``Flow/run/step/task``
    of the writer), ``attempt``, ``created_on`` (ISO-8601 UTC), ``metadata`` (user dict),
    ``latest``, ``size`` (bytes of files), ``namespace``, ``flow``, ``step``, ``foreach``,
    ``run``, ``task``.
    """

    __slots__ = ()

    def __getattr__(self, item: str) -> Any:
        try:
            return self[item]
        except KeyError:
            raise AttributeError(item) from None

    def __repr__(self) -> str:
        return "CheckpointReference(%s, name=%r, pathspec=%r, attempt=%r, created_on=%r)" % (
            self.get("key"),
            self.get("name"),
            self.get("pathspec"),
            self.get("attempt"),
            self.get("created_on"),
        )

    @classmethod
    def from_manifest(cls, manifest: Manifest, root: str, url: str) -> CheckpointReference:
        """Build from a full manifest (has metadata and size)."""
        ref = cls._from_parts(manifest.key, manifest.scope, root, url)
        ref.update(
            name=manifest.name,
            created_on=manifest.created_on,
            metadata=dict(manifest.metadata),
            latest=manifest.latest,
            size=manifest.size,
        )
        return ref

    @classmethod
    def _from_parts(cls, key, scope, root, url) -> CheckpointReference:
        return cls(
            key=key,
            url=url,
            root=root,
            pathspec=scope.pathspec,
            attempt=scope.attempt,
            namespace=scope.namespace,
            flow=scope.flow,
            step=scope.step,
            foreach=scope.foreach,
            run=scope.run,
            task=scope.task,
        )
