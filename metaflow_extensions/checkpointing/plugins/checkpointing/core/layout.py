"""The store's key layout: every key of a checkpoint root is built and parsed here, and only here.

A checkpoint root (``<datastore root>/mf.checkpointing`` or ``METAFLOW_CHECKPOINT_ROOT``)::

    <root>/
    ├── manifests/<ns>/<flow>/<step>/<foreach>/<run>/<task>/<manifest file>
    │       <manifest file> = <created ms>-<attempt>-<seq>-<flag>-<id>-<name>.json
    │       <flag> = L|N (latest or not), then the writer: nothing for rank 0 (every key
    │       written before writers were recorded), w<node>.<local> for another writer
    │       (Lw1.0; w0.0 is never written), s for a sharded checkpoint (Ls)
    │       one per committed checkpoint, written last (a checkpoint exists exactly when its
    │       manifest does); named checkpoints saved outside a task live under
    │       manifests/_library/_library/<name>/_/_/_/
    ├── blobs/<2 hex>/<64 hex>          content-addressed data: BLAKE3 of the bytes it holds
    │   blobs/<2 hex>/<64 hex>.zst      the same bytes stored zstd-compressed (.codec); the
    │       name keeps the hash of the plain bytes, so each key holds one form only
    ├── parts/<ns>/<flow>/<step>/<foreach>/<run>/<task>/<gang id>/rank-<i>.json
    │       one participant's shard of a sharded save, until participant 0 commits the
    │       checkpoint's manifest
    ├── pins/<ns>/<flow>/<step>/<foreach>/<run>/<task>/<manifest file>
    │       empty marker: retention never prunes the manifest of the same path
    ├── metrics/<ns>/<flow>/<step>/<foreach>/<run>/<task>/<manifest file>
    │       one small JSON per save of a task (its numeric metadata): the task's metrics log,
    │       which retention and deletes never prune, so the card plots every save
    │       (.metrics_log); GC removes it once the task has no checkpoint left
    ├── indexes/<ns>/<flow>/<step>/summaries.json
    │   indexes/<ns>/<flow>/<step>/<foreach>/<run>/<task>/attempt-<n>[-w<node>.<local>].json
    │       listing hints (summaries of immutable manifests); never the truth; one per
    │       attempt and writing step process (rank 0's without the suffix)
    ├── promotions/<name>/to/<namespace>/<version>      a version trusted in a namespace
    │   promotions/<name>/log/<ms>-<8 hex>.json         who promoted or unpromoted, when
    ├── leases/<session>/start | alive | names-<n>      a writer's GC lease (see .leases)
    ├── gc/runs/<run>/start | sweep | done              a GC run's record (see .gc)
    └── control/pause/<flow>/<run>/_run.json            pause requests (see .pause)
        control/pause/<flow>/<run>/<step>/<task>.json
        control/gone/<ns>/<flow>/<step>/<foreach>/<run>/<task>/<attempt>/node-<n>.json
        control/gone/<ns>/<flow>/<step>/<foreach>/<run>/<task>/<attempt>/rank-<r>.json
                a node or worker that will not take part in any more sharded save of that
                attempt (who, why, when; see .gang)
        control/gone/<ns>/<flow>/<step>/<foreach>/<run>/<task>/<attempt>/save-<id>/rank-<r>.json
                (or node-<n>.json) a participant whose part of one sharded save failed
        control/clock/<32 hex>
                an empty probe written and deleted at once: its mtime in a listing is the
                store's "now" (expire_after_days ages checkpoints by it; see .store_clock)

A local tier (``@checkpoint(upload="end")``, :mod:`.tier`) is a root of the same layout on the
task's machine; it also holds::

    uploads/<ns>/<flow>/<step>/<foreach>/<run>/<task>/<manifest file>
            the upload status of the tier's checkpoint of the same path (.upload_status)

Every scope component (``<ns>`` ... ``<task>``, promotion namespaces and versions, pause
components) is percent-encoded by :func:`encode`, so namespaces such as ``user:alice`` are safe
on every backend; checkpoint names are restricted (:func:`.scope.validate_name`) and appear as is.
``docs/design/adr-001-storage-layout.md`` explains why keys look like this; this docstring is
the reference for what they are.

Manifest keys are laid out most-general first, so that every load policy is one prefix listing:
the latest of a task (``@retry``) is ``task_prefix``, the counterpart in the origin run
(``resume``) ``run_prefix``, any earlier run of the step and split (``eager``)
``lineage_prefix``, every checkpoint of a step ``step_prefix``.

The functions here only build and split strings: they read no store and know no protocol.
Parsers return ``None`` for a key of another shape (the caller decides whether that is an
error); values inside a well-shaped key are validated by their owners (:func:`.manifest.parse_key`
checks names and ranges).

Long module: every key of the store is spelled here and nowhere else (a test enforces it), so
the one place that knows the whole layout stays one module past 400 lines.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple, Optional
from urllib.parse import quote, unquote

from ..errors import ManifestError
from .position import RANK0, Position

# ---------------------------------------------------------------------------- top-level prefixes
MANIFESTS = "manifests"
BLOBS = "blobs"
PARTS = "parts"
PINS = "pins"
METRICS = "metrics"
INDEXES = "indexes"
PROMOTIONS = "promotions"
LEASES = "leases"
GC_RUNS = "gc/runs"
CONTROL = "control"
#: Upload status records (a local tier only).
UPLOADS = "uploads"
#: Every top-level prefix, in the order of the tree above.
TOP_LEVEL = (
    MANIFESTS,
    BLOBS,
    PARTS,
    PINS,
    METRICS,
    INDEXES,
    PROMOTIONS,
    LEASES,
    GC_RUNS,
    CONTROL,
    UPLOADS,
)

MANIFESTS_PREFIX = MANIFESTS + "/"
BLOBS_PREFIX = BLOBS + "/"
PARTS_PREFIX = PARTS + "/"
PINS_PREFIX = PINS + "/"
METRICS_PREFIX = METRICS + "/"
LEASES_PREFIX = LEASES + "/"
GC_RUNS_PREFIX = GC_RUNS + "/"

#: Namespace and flow of named checkpoints saved outside any task: a store-wide library in which
#: the step component is the checkpoint name, so every version of one name is one listing.
LIBRARY = "_library"


# ---------------------------------------------------------------------------- key components
@functools.lru_cache(maxsize=8192, typed=True)  # a save spells its task's prefix ~5 times
def encode(component: object) -> str:
    """Percent-encode one key component (no '/', never empty, never '.' or '..')."""
    encoded = quote(str(component), safe="") or "%00"
    # '.' and '..' are left alone by quote() but are not valid key components anywhere.
    return "%2E" * len(encoded) if encoded in (".", "..") else encoded


def decode(component: str) -> str:
    """The value :func:`encode` encoded."""
    return unquote(component)


# ---------------------------------------------------------------------------- manifests
def namespace_prefix(namespace: str) -> str:
    return "%s%s/" % (MANIFESTS_PREFIX, encode(namespace))


def flow_prefix(namespace: str, flow: str) -> str:
    return namespace_prefix(namespace) + encode(flow) + "/"


def step_prefix(namespace: str, flow: str, step: str) -> str:
    return flow_prefix(namespace, flow) + encode(step) + "/"


def lineage_prefix(namespace: str, flow: str, step: str, foreach: str) -> str:
    """All runs of one step and foreach split."""
    return step_prefix(namespace, flow, step) + encode(foreach) + "/"


def run_prefix(namespace: str, flow: str, step: str, foreach: str, run: str) -> str:
    """One step and split within one run."""
    return lineage_prefix(namespace, flow, step, foreach) + encode(run) + "/"


def task_prefix(namespace: str, flow: str, step: str, foreach: str, run: str, task: str) -> str:
    """One task, all its attempts."""
    return run_prefix(namespace, flow, step, foreach, run) + encode(task) + "/"


def library_prefix() -> str:
    """Every named checkpoint saved outside any task."""
    return flow_prefix(LIBRARY, LIBRARY)


def writer_token(position: Position = RANK0, sharded: bool = False) -> str:
    """What a key spells after ``L``/``N``: ``""`` for rank 0, ``"w<node>.<local>"`` for
    another writer, ``"s"`` for a sharded checkpoint (one spelling per writer: never ``w0.0``).

    Raises
    ------
    ValueError
        A sharded checkpoint with a writer other than rank 0 (participant 0 commits it; its
        key names no writer).
    """
    if sharded:
        if not position.is_rank0:
            raise ValueError("a sharded checkpoint has no writer position (got %s)" % position)
        return "s"
    return "" if position.is_rank0 else "w%d.%d" % (position.node, position.local)


def manifest_key(
    task_prefix: str,
    created_ms: int,
    attempt: int,
    seq: int,
    latest: bool,
    id: str,
    name: str,
    position: Position = RANK0,
    sharded: bool = False,
) -> str:
    """``<task prefix><created ms>-<attempt>-<seq>-<flag>-<id>-<name>.json``, ``<flag>``
    being ``L``/``N`` then :func:`writer_token`."""
    return "%s%013d-%d-%06d-%s%s-%s-%s.json" % (
        task_prefix,
        created_ms,
        attempt,
        seq,
        "L" if latest else "N",
        writer_token(position, sharded),
        id,
        name,
    )


#: An index in a writer token: ASCII digits without leading zeros (one spelling per key).
_INDEX = r"(?:0|[1-9][0-9]{0,8})"
#: ``<created ms>-<attempt>-<seq>-<flag>-<id>-<name>.json``: ASCII digits only (``int()`` would
#: also take signs, spaces, underscores and other scripts' digits).
_MANIFEST_FILE_RE = re.compile(
    r"(?P<created>[0-9]{1,19})-(?P<attempt>[0-9]{1,19})-(?P<seq>[0-9]{1,19})-(?P<flag>[LN])"
    r"(?:w(?P<node>%s)\.(?P<local>%s)|(?P<sharded>s))?-"
    % (_INDEX, _INDEX)
    + r"(?P<id>[0-9A-Za-z]{1,64})-(?P<name>.+)\.json"
)


class ManifestKey(NamedTuple):
    """What a manifest key spells (components decoded), before its values are validated."""

    namespace: str
    flow: str
    step: str
    foreach: str
    run: str
    task: str
    created_ms: int
    attempt: int
    seq: int
    latest: bool
    id: str
    name: str
    position: Position = RANK0
    sharded: bool = False


def manifest_components(key: object) -> Optional[tuple[str, ...]]:
    """``(namespace, flow, step, foreach, run, task)`` of any object one level below a task
    prefix under ``manifests/`` (from its path alone: also for a file name that does not
    parse), or None."""
    if not isinstance(key, str):
        return None
    return _task_components(key.rpartition("/")[0])


@functools.lru_cache(maxsize=4096)
def _task_components(prefix: str) -> Optional[tuple[str, ...]]:
    """:func:`manifest_components` of the keys under the task prefix ``prefix`` (no trailing
    ``/``).  Cached: a listing parses many keys of few tasks (100,000 keys of one task
    decoded 600,000 components, a tenth of the listing's time)."""
    parts = prefix.split("/")
    if len(parts) != 7 or parts[0] != MANIFESTS or not all(parts[1:7]):
        return None
    return tuple(decode(p) for p in parts[1:7])


def split_manifest_key(key: object) -> Optional[ManifestKey]:
    """The fields of a manifest key, or None if ``key`` does not have that shape (whatever it
    is).  The name and the ranges of the numbers are not checked here."""
    components = manifest_components(key)
    if components is None:
        return None
    match = _MANIFEST_FILE_RE.fullmatch(key.rsplit("/", 1)[1])  # type: ignore[union-attr]
    if match is None:
        return None
    position = RANK0
    if match["node"] is not None:
        position = Position(int(match["node"]), int(match["local"]))
        if position.is_rank0:
            return None  # rank 0 is spelled without a token: "w0.0" is another key's twin
    return ManifestKey(
        *components,
        int(match["created"]),
        int(match["attempt"]),
        int(match["seq"]),
        match["flag"] == "L",
        match["id"],
        match["name"],
        position,
        match["sharded"] is not None,
    )


def step_prefix_of(key: str) -> str:
    """``manifests/<ns>/<flow>/<step>/`` of a manifest key (or a key below a step prefix)."""
    return "/".join(key.split("/")[:4]) + "/"


def task_prefix_of(key: str) -> str:
    """``manifests/<ns>/<flow>/<step>/<foreach>/<run>/<task>/`` of a manifest key."""
    return key.rsplit("/", 1)[0] + "/"


def split_manifest_url(text: str) -> Optional[tuple[str, str]]:
    """``(root, key)`` of ``<root>/manifests/<manifest key>`` (the URL or path of a manifest),
    else None.  Every ``/manifests/`` is tried, so a root whose path holds a ``manifests``
    directory works; the key has the shape of a manifest key (its values are not checked)."""
    marker = "/" + MANIFESTS_PREFIX
    start = text.find(marker)
    while start > 0:
        key = text[start + 1 :]
        if split_manifest_key(key) is not None:
            return text[:start], key
        start = text.find(marker, start + 1)
    return None


def mentions_manifests(text: str) -> bool:
    """Whether ``text`` is or contains a key under ``manifests/`` (a key or a store URL rather
    than a pathspec)."""
    return text.startswith(MANIFESTS_PREFIX) or ("/" + MANIFESTS_PREFIX) in text


# ---------------------------------------------------------------------------- blobs
#: A blob name: a BLAKE3 digest as 64 lowercase hex digits.
BLOB_NAME_RE = re.compile(r"[0-9a-f]{64}")
_is_hex64 = BLOB_NAME_RE.fullmatch
#: A stored blob's name: its digest, then ``.<suffix>`` when it is stored encoded
#: (:mod:`.codec`; only suffixes this release can decode pass).
STORED_NAME_RE = re.compile(r"[0-9a-f]{64}(?:\.zst)?")
_is_stored_name = STORED_NAME_RE.fullmatch


def is_blob_name(name: object) -> bool:
    """Whether ``name`` is a blob name: a BLAKE3 digest as 64 lowercase hex digits."""
    return type(name) is str and _is_hex64(name) is not None


def is_stored_name(name: object) -> bool:
    """Whether ``name`` names a stored blob: a digest, plain or with a known codec suffix."""
    return type(name) is str and _is_stored_name(name) is not None


def blob_key(digest: str) -> str:
    """Key of a content-addressed blob: ``blobs/<first 2 hex>/<name>``.

    ``digest`` is a stored blob's name (:data:`STORED_NAME_RE`): the BLAKE3 digest of the
    plain bytes, with ``.zst`` when they are stored compressed.

    Raises
    ------
    ManifestError
        If ``digest`` is not such a name: a name from a manifest becomes a storage key, and on
        local stores a path that is opened, so nothing else may get this far.
    """
    if type(digest) is not str or _is_stored_name(digest) is None:
        raise ManifestError(
            "%r is not a blob name (a 64-hex BLAKE3 digest); refusing to read or write it."
            % (digest if len(str(digest)) <= 80 else str(digest)[:77] + "...",)
        )
    return "%s%s/%s" % (BLOBS_PREFIX, digest[:2], digest)


def blob_of(key: str) -> Optional[str]:
    """The blob name of a key listed under ``blobs/`` (``blobs/<xx>/<name>``), else None."""
    parts = key.split("/")
    return parts[2] if len(parts) == 3 and parts[0] == BLOBS and parts[2] else None


# ---------------------------------------------------------------------------- @parallel parts
def parts_prefix(task_prefix: str, gang_id: str) -> str:
    """Where the ranks of one gang save of the task at ``task_prefix`` put their parts."""
    return PARTS_PREFIX + task_prefix[len(MANIFESTS_PREFIX) :] + gang_id + "/"


def part_key(task_prefix: str, gang_id: str, rank: int) -> str:
    return parts_prefix(task_prefix, gang_id) + "rank-%d.json" % rank


def is_part_key(key: str) -> bool:
    """Whether a key listed under ``parts/`` is a part (not a leftover of another kind)."""
    return key.startswith(PARTS_PREFIX) and key.endswith(".json")


# ---------------------------------------------------------------------------- pins
def pin_key(manifest_key: str) -> str:
    """The pin marker of a manifest key (or, given a manifest prefix, the prefix of its pins)."""
    return PINS + manifest_key[len(MANIFESTS) :]


def pinned_manifest(pin: str) -> str:
    """The manifest key a pin marker stands for."""
    return MANIFESTS + pin[len(PINS) :]


# ---------------------------------------------------------------------------- metrics log
def metrics_key(manifest_key: str) -> str:
    """The metrics log entry of the save committed at ``manifest_key`` (given a task prefix:
    the prefix of that task's log)."""
    return METRICS + manifest_key[len(MANIFESTS) :]


def metrics_manifest(key: str) -> str:
    """The manifest key a metrics log entry stands for (that manifest may be pruned)."""
    return MANIFESTS + key[len(METRICS) :]


# ---------------------------------------------------------------------------- upload records
def upload_record_key(manifest_key: str) -> str:
    """The upload status record (in a local tier) of the checkpoint at ``manifest_key`` (given
    a task prefix: the prefix of that task's records)."""
    return UPLOADS + manifest_key[len(MANIFESTS) :]


def upload_record_manifest(key: str) -> Optional[str]:
    """The manifest key an upload status record stands for, else None."""
    prefix = UPLOADS + "/"
    return MANIFESTS + key[len(UPLOADS) :] if key.startswith(prefix) else None


# ---------------------------------------------------------------------------- summary indexes
def step_index_key(step_prefix: str) -> str:
    """The summary index of the step at ``step_prefix``."""
    return INDEXES + step_prefix[len(MANIFESTS) :] + "summaries.json"


def task_summaries_prefix(task_prefix: str) -> str:
    """Where the task at ``task_prefix`` records the summaries of its saves."""
    return INDEXES + task_prefix[len(MANIFESTS) :]


def task_summary_key(task_prefix: str, attempt: int, position: Position = RANK0) -> str:
    """The summaries one attempt of the task at ``task_prefix`` saved from the step process at
    ``position`` (each node of a ``@parallel`` gang writes its own)."""
    token = writer_token(position)
    return task_summaries_prefix(task_prefix) + "attempt-%d%s.json" % (
        attempt,
        "-" + token if token else "",
    )


def is_task_summary_key(key: str) -> bool:
    return key.rsplit("/", 1)[-1].startswith("attempt-")


# ---------------------------------------------------------------------------- promotions
def promotions_prefix(name: str) -> str:
    """Every promotion object of the named checkpoint ``name`` (a validated name)."""
    return "%s/%s/" % (PROMOTIONS, encode(name))


def promoted_to_prefix(name: str, namespace: Optional[str] = None) -> str:
    """The markers of ``name`` (promoted to ``namespace`` only, if given)."""
    base = promotions_prefix(name) + "to/"
    return base if namespace is None else base + encode(namespace) + "/"


def promotion_key(name: str, namespace: str, version: str) -> str:
    """Marker of ``name@version`` promoted to ``namespace``."""
    return promoted_to_prefix(name, namespace) + encode(version)


def promotion_of(key: str, name: str) -> Optional[tuple[str, str]]:
    """``(namespace, version)`` of a promotion marker of ``name``, else None."""
    prefix = promoted_to_prefix(name)
    parts = key[len(prefix) :].split("/") if key.startswith(prefix) else []
    return (decode(parts[0]), decode(parts[1])) if len(parts) == 2 and all(parts) else None


def promotion_log_prefix(name: str) -> str:
    return promotions_prefix(name) + "log/"


def promotion_log_key(name: str, at_ms: int, token: str) -> str:
    """One entry of the promotion log of ``name`` (``token``: a few random hex digits)."""
    return "%s%013d-%s.json" % (promotion_log_prefix(name), at_ms, token)


# ---------------------------------------------------------------------------- leases, GC runs
#: Objects of one writer session: its start, its refreshes, the blobs it names.
LEASE_START = "start"
LEASE_ALIVE = "alive"
LEASE_NAMES = "names-"


def lease_prefix(session: str) -> str:
    """Prefix of every object of one writer session."""
    return "%s%s/" % (LEASES_PREFIX, session)


def lease_key(session: str, name: str) -> str:
    return lease_prefix(session) + name


def lease_names_key(session: str, n: int) -> str:
    """The ``n``-th object naming blobs the session relies on."""
    return lease_prefix(session) + "%s%06d" % (LEASE_NAMES, n)


def lease_of(key: str) -> Optional[tuple[str, str]]:
    """``(session, object name)`` of a key under ``leases/``, else None."""
    if not key.startswith(LEASES_PREFIX):
        return None
    session, _, name = key[len(LEASES_PREFIX) :].partition("/")
    return (session, name) if session else None


def gc_run_key(run: str, phase: str) -> str:
    """Key of one phase object of a GC run."""
    return "%s%s/%s" % (GC_RUNS_PREFIX, run, phase)


def gc_run_of(key: str) -> Optional[tuple[str, str]]:
    """``(run, phase)`` of a key under ``gc/runs/``, else None."""
    rest = key[len(GC_RUNS_PREFIX) :] if key.startswith(GC_RUNS_PREFIX) else ""
    run, sep, phase = rest.partition("/")
    return (run, phase.rsplit("/", 1)[-1]) if run and sep else None


# ---------------------------------------------------------------------------- control
def clock_probe_key(token: str) -> str:
    """The store-clock probe ``token`` (random hex): its mtime is the store's "now"."""
    return "%s/clock/%s" % (CONTROL, token)


def pause_run_key(flow: str, run: str) -> str:
    """The pause request of a whole run."""
    return "%s/pause/%s/%s/_run.json" % (CONTROL, encode(flow), encode(run))


def pause_task_key(flow: str, run: str, step: str, task: str) -> str:
    """The pause request of one task."""
    return "%s/pause/%s/%s/%s/%s.json" % (
        CONTROL,
        encode(flow),
        encode(run),
        encode(step),
        encode(task),
    )


#: Who a gone marker names: a node of a ``@parallel`` gang or a worker rank.
GONE_KINDS = ("node", "rank")
_GONE_FILE_RE = re.compile(r"(?P<kind>node|rank)-(?P<index>%s)\.json" % _INDEX)


def gone_prefix(task_prefix: str, attempt: int) -> str:
    """Every gone marker of one attempt of the task at ``task_prefix`` (one listing)."""
    return "%s/gone/%s%d/" % (CONTROL, task_prefix[len(MANIFESTS_PREFIX) :], attempt)


def gone_key(task_prefix: str, attempt: int, kind: str, index: int) -> str:
    """The marker of node ``index`` (``kind="node"``) or worker rank ``index``
    (``kind="rank"``) that will take part in no more sharded save of the attempt."""
    if kind not in GONE_KINDS:
        raise ValueError("a gone marker names a node or a rank, not %r" % (kind,))
    return gone_prefix(task_prefix, attempt) + "%s-%d.json" % (kind, index)


def save_gone_key(task_prefix: str, attempt: int, gang_id: str, kind: str, index: int) -> str:
    """The marker of a participant whose part of the sharded save ``gang_id`` failed (it stops
    the waits of that save only)."""
    marker = gone_key(task_prefix, attempt, kind, index)
    head, tail = marker.rsplit("/", 1)
    return "%s/save-%s/%s" % (head, gang_id, tail)


def gone_of(key: str) -> Optional[tuple[str, int]]:
    """``(kind, index)`` of a key listed under a :func:`gone_prefix`, else None."""
    match = _GONE_FILE_RE.fullmatch(key.rsplit("/", 1)[-1])
    return (match["kind"], int(match["index"])) if match else None
