"""Storage accounting: logical bytes (what loads would write) against physical bytes (the
distinct blobs those checkpoints reference, after deduplication and packing)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from ..storage.base import Storage
from .layout import BLOBS_PREFIX, blob_of
from .manifest import Manifest

#: What ``du`` can group by, and the scope fields that make up each group's label.
GROUPINGS = {
    "flow": ("flow",),
    "step": ("flow", "step"),
    "run": ("flow", "run"),
    "name": ("flow", "step", "name"),
}


@dataclass
class UsageRow:
    """One group: how many checkpoints, their logical size, and their distinct blobs' size."""

    group: str
    checkpoints: int = 0
    logical_bytes: int = 0
    physical_bytes: int = 0
    blobs: set = field(default_factory=set, repr=False)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("blobs")
        return d


@dataclass
class Usage:
    """Per-group rows, the total over them, and every blob stored under the root."""

    rows: list[UsageRow]
    total: UsageRow
    stored_blobs: int
    stored_bytes: int
    #: Keys of damaged checkpoints (manifests that do not parse), not counted in any row.
    damaged: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "rows": [r.to_json() for r in self.rows],
            "total": self.total.to_json(),
            "stored_blobs": self.stored_blobs,
            "stored_bytes": self.stored_bytes,
            "damaged": list(self.damaged),
        }


def _label(m: Manifest, by: str) -> str:
    if m.scope.is_library:
        return "named:%s" % m.name if by == "name" else "(named checkpoints)"
    values = {"flow": m.scope.flow, "step": m.scope.step, "run": m.scope.run, "name": m.name}
    if by == "run":
        return "%s/%s" % (values["flow"], values["run"])
    return "/".join(values[f] for f in GROUPINGS[by])


def usage(
    storage: Storage,
    manifests: Sequence[Manifest],
    by: str = "step",
    damaged: Sequence[str] = (),
) -> Usage:
    """Account ``manifests`` grouped ``by`` flow, step, run or name (``damaged``: keys of
    checkpoints that could not be read, reported, not counted)."""
    sizes = {h: o.size for o in storage.list(BLOBS_PREFIX) if (h := blob_of(o.key)) is not None}
    rows: dict[str, UsageRow] = {}
    total = UsageRow("total")
    for m in manifests:
        row = rows.setdefault(_label(m, by), UsageRow(_label(m, by)))
        blobs = {c.blob for f in m.files for c in f.chunks}
        for r in (row, total):
            r.checkpoints += 1
            r.logical_bytes += m.size
            r.blobs |= blobs
    for r in [*rows.values(), total]:
        r.physical_bytes = sum(sizes.get(b, 0) for b in r.blobs)
    ordered = sorted(rows.values(), key=lambda r: (-r.physical_bytes, r.group))
    return Usage(ordered, total, len(sizes), sum(sizes.values()), list(damaged))
