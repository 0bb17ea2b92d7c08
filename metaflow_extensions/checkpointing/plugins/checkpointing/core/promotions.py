"""Who published each version of a named checkpoint, and which namespaces trust it.

A named checkpoint (``resnet50``) lives in the store-wide library, so anyone who can write the
store can add a version.  To keep a version from reaching other namespaces by accident:

* every version records its **publisher** in its manifest, ``source["publisher"]``:
  ``{"user": "alice", "namespace": "user:alice", "origin": "cli"}`` (origin: ``cli``,
  ``client``, or the run pathspec ``Flow/run_id`` whose launcher uploaded it);
* a reader in namespace ``N`` resolves ``"resnet50"`` / ``"resnet50@latest"`` to the newest
  version **published from** ``N`` or **promoted to** ``N``; ``namespace=None`` (Metaflow's
  ``namespace(None)``) trusts every version; ``"resnet50@<version>"`` pins one version,
  whoever published it (an explicit pin is explicit trust);
* a **promotion** is a small marker object, one put, ``promotions/<name>/to/<namespace>/<id>``,
  and every promote or unpromote is also appended to a log,
  ``promotions/<name>/log/<ms>-<random>.json``, that ``show`` prints (keys in :mod:`.layout`;
  ``<ms>`` is dated after the log's newest entry, so the log is in the order of the events even
  when a promoting machine's clock is behind).

This prevents accidents (a colleague's upload, a test upload, a stale laptop client), not
attackers: whoever can write the store can also write a manifest or a marker.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..errors import (
    CheckpointConfigError,
    CheckpointException,
    CheckpointNotFound,
    CheckpointScopeError,
    ManifestError,
    StorageNotFound,
)
from ..storage.base import Storage
from . import clock, layout
from .manifest import Manifest, ManifestHeader, iso_time
from .scope import validate_name

LOG_FORMAT = "metaflow-checkpointing-promotion/1"
#: Longest user, namespace or origin string recorded (longer ones are malformed).
MAX_FIELD = 512
#: How many manifests a resolution reads at once while it looks for a trusted version.
READ_BATCH = 8
# "kind:value", e.g. user:alice or production:TrainFlow-0-abcd; no control characters.
_NAMESPACE_RE = re.compile(r"^[^:\s/\x00-\x1f]+:[^\s\x00-\x1f]+$")


# ------------------------------------------------------------------------------ publishers
def publisher_record(user: Optional[str], namespace: Optional[str], origin: str) -> dict:
    """The ``source["publisher"]`` value of a new version.

    Parameters
    ----------
    user : str, optional
        Who published (Metaflow's user name); None when it cannot be told.
    namespace : str, optional
        The publisher's Metaflow namespace (``user:alice``, ``production:...``); None when it
        cannot be told (e.g. root without ``USER``): such a version is trusted by no namespace
        until promoted.
    origin : str
        ``"cli"``, ``"client"`` or the pathspec of the run that published it.
    """
    return {"user": user or None, "namespace": namespace or None, "origin": str(origin)}


def publisher_of(source: object) -> Optional[dict]:
    """The validated publisher of a version from its manifest's ``source``; None when absent
    (versions saved before publishers were recorded) or malformed.  A version without a
    publisher is trusted only where it was promoted, by a pin, or by ``namespace(None)``."""
    raw = source.get("publisher") if isinstance(source, dict) else None
    if not isinstance(raw, dict):
        return None
    out = {}
    for k in ("user", "namespace", "origin"):
        v = raw.get(k)
        if v is not None and (not isinstance(v, str) or not v or len(v) > MAX_FIELD):
            return None
        out[k] = v
    return out


def describe_publisher(publisher: Optional[dict]) -> str:
    """``user:alice (alice) via cli``, or ``unknown publisher``."""
    if publisher is None:
        return "unknown publisher (saved before publishers were recorded)"
    text = publisher.get("namespace") or "unknown namespace"
    if publisher.get("user") and publisher["namespace"] != "user:%s" % publisher["user"]:
        text += " (%s)" % publisher["user"]
    if publisher.get("origin"):
        text += " via %s" % publisher["origin"]
    return text


def validate_namespace(namespace: object) -> str:
    """Check a namespace to promote to: ``kind:value`` such as ``production:TrainFlow-0-ab``.

    Raises
    ------
    CheckpointConfigError
        Not a ``kind:value`` string (e.g. ``production`` without its token).
    """
    if (
        not isinstance(namespace, str)
        or len(namespace) > MAX_FIELD
        or not _NAMESPACE_RE.fullmatch(namespace)
    ):
        raise CheckpointConfigError(
            "%r is not a Metaflow namespace: give it whole, as 'kind:value', e.g. "
            "'production:TrainFlow-0-abcd' (the production token of a deployed flow) or "
            "'user:alice'." % (namespace,)
        )
    return namespace


# ------------------------------------------------------------------------------ promotions
def promotion_key(name: str, namespace: str, version: str) -> str:
    """Marker of ``name@version`` promoted to ``namespace`` (:func:`.layout.promotion_key`)."""
    return layout.promotion_key(validate_name(name), namespace, version)


def _log_key(name: str, at_ms: int) -> str:
    return layout.promotion_log_key(validate_name(name), at_ms, uuid.uuid4().hex[:8])


def _log_date(storage: Storage, name: str) -> int:
    """The date of a new log entry of ``name``: after every entry already logged (one listing;
    keys start with their date), so the log keeps the order of events whatever the clocks of
    the machines that promote say (:func:`.clock.after`)."""
    dates = []
    for o in storage.list(layout.promotion_log_prefix(validate_name(name))):
        stamp = o.key.rsplit("/", 1)[-1].split("-", 1)[0]
        if stamp.isdigit():
            dates.append(int(stamp))
    return clock.after(dates)


def promoted_versions(storage: Storage, name: str, namespace: str) -> frozenset:
    """Version ids of ``name`` promoted to ``namespace`` (one listing)."""
    prefix = layout.promoted_to_prefix(validate_name(name), namespace)
    markers = (layout.promotion_of(o.key, name) for o in storage.list(prefix))
    return frozenset(m[1] for m in markers if m is not None and m[0] == namespace)


def promotions_of(storage: Storage, name: str) -> dict[str, list[str]]:
    """``{version id: [namespaces it is promoted to]}`` of ``name`` (one listing)."""
    out: dict[str, list[str]] = {}
    for o in storage.list(layout.promoted_to_prefix(validate_name(name))):
        marker = layout.promotion_of(o.key, name)
        if marker is not None:
            out.setdefault(marker[1], []).append(marker[0])
    return {k: sorted(v) for k, v in out.items()}


def _event(action: str, manifest: Manifest, namespace: str, by: dict, at_ms: int) -> dict:
    return {
        "format": LOG_FORMAT,
        "action": action,
        "name": manifest.name,
        "version": manifest.id,
        "key": manifest.key,
        "namespace": namespace,
        "by": {"user": by.get("user"), "namespace": by.get("namespace")},
        "at_ms": at_ms,
        "at": iso_time(at_ms),
    }


def promote(
    storage: Storage, manifest: Manifest, namespace: str, by: dict, at_ms: Optional[int] = None
) -> dict:
    """Make ``manifest`` (a version of a named checkpoint) resolve by name in ``namespace``.

    The log entry is written first: a promotion that took effect is always in the log.
    Returns the log entry.
    """
    if not manifest.scope.is_library:
        raise CheckpointConfigError(
            "Only versions of named checkpoints can be promoted; %s is a checkpoint of the task "
            "%s (load it by key or pathspec instead)." % (manifest.key, manifest.scope.pathspec)
        )
    namespace = validate_namespace(namespace)
    at_ms = _log_date(storage, manifest.name) if at_ms is None else at_ms
    event = _event("promote", manifest, namespace, by, at_ms)
    body = json.dumps(event, sort_keys=True).encode("utf-8")
    storage.put_bytes(_log_key(manifest.name, at_ms), body)
    storage.put_bytes(promotion_key(manifest.name, namespace, manifest.id), body)
    return event


def unpromote(
    storage: Storage, manifest: Manifest, namespace: str, by: dict, at_ms: Optional[int] = None
) -> dict:
    """Withdraw a promotion made with :func:`promote`; returns the log entry.

    Raises
    ------
    CheckpointNotFound
        ``manifest`` is not promoted to ``namespace`` (nothing written).
    """
    namespace = validate_namespace(namespace)
    key = promotion_key(manifest.name, namespace, manifest.id)
    if not storage.exists(key):
        promoted = promotions_of(storage, manifest.name).get(manifest.id, [])
        raise CheckpointNotFound(
            "%s@%s is not promoted to %s (promoted to: %s)."
            % (manifest.name, manifest.id, namespace, ", ".join(promoted) or "no namespace")
        )
    at_ms = _log_date(storage, manifest.name) if at_ms is None else at_ms
    event = _event("unpromote", manifest, namespace, by, at_ms)
    storage.put_bytes(_log_key(manifest.name, at_ms), json.dumps(event, sort_keys=True).encode())
    storage.delete(key)
    return event


def history(storage: Storage, name: str, version: Optional[str] = None) -> list[dict]:
    """Promote and unpromote events of ``name`` (of one ``version`` if given), oldest first.
    Unreadable entries are skipped: the log tells a story, the markers decide."""
    events = []
    log = storage.list(layout.promotion_log_prefix(validate_name(name)))
    for o in sorted(log, key=lambda o: o.key):
        try:
            event = json.loads(storage.get_bytes(o.key))
        except (CheckpointException, ValueError):
            continue
        if not isinstance(event, dict) or event.get("format") != LOG_FORMAT:
            continue
        if version is None or event.get("version") == version:
            events.append(event)
    return events


# ------------------------------------------------------------------------------ resolution
@dataclass
class Resolution:
    """Which version a name resolved to, and why.

    Attributes
    ----------
    manifest : Manifest
        The chosen version.
    trust : str
        ``"pinned"`` (``name@version``), ``"published"`` (from the reader's namespace),
        ``"promoted"`` (to the reader's namespace) or ``"any"`` (``namespace=None``).
    passed_over : list of (ManifestHeader, publisher or None, reason)
        Newer versions not trusted by the reader (another publisher, or unreadable).
    """

    manifest: Manifest
    trust: str
    passed_over: list = field(default_factory=list)


def trusted(publisher: Optional[dict], version: str, reader: str, promoted: frozenset) -> bool:
    """Whether a reader in namespace ``reader`` trusts a version by name."""
    return version in promoted or (publisher is not None and publisher["namespace"] == reader)


def _scan(headers: Sequence[ManifestHeader], read: Callable[[str], Manifest]):
    """``(header, manifest or None, error or None)`` of ``headers`` in order, read lazily: the
    newest alone first (usually the answer), then a few at a time in parallel.  Versions
    deleted since they were listed are left out."""

    def attempt(h: ManifestHeader):
        try:
            return read(h.key), None
        except (CheckpointNotFound, StorageNotFound):
            return None, None
        except ManifestError as exc:
            return None, exc

    batches = [headers[:1]]
    batches += [headers[i : i + READ_BATCH] for i in range(1, len(headers), READ_BATCH)]
    with ThreadPoolExecutor(READ_BATCH) as pool:
        for batch in batches:
            for h, (m, error) in zip(batch, pool.map(attempt, batch)):
                if m is not None or error is not None:
                    yield h, m, error


def resolve(
    storage: Storage,
    name: str,
    headers: Sequence[ManifestHeader],
    reader: Optional[str],
    read: Callable[[str], Manifest],
) -> Resolution:
    """The newest of ``headers`` (versions of ``name``, newest first) trusted in ``reader``.

    ``reader`` None trusts every version (the newest readable one wins).  Damaged versions are
    passed over: they cannot be loaded, and their publisher cannot be known.

    Raises
    ------
    CheckpointScopeError
        No version is trusted in ``reader``: the message names the newest version to pin and
        the command that promotes it.
    CheckpointNotFound
        No version can be read at all.
    """
    promoted = frozenset() if reader is None else promoted_versions(storage, name, reader)
    passed: list = []
    for h, m, error in _scan(headers, read):
        if m is None:
            passed.append((h, None, "unreadable: %s" % error.message))
            continue
        publisher = publisher_of(m.source)
        if reader is None:
            return Resolution(m, "any", passed)
        if h.id in promoted:
            return Resolution(m, "promoted", passed)
        if trusted(publisher, h.id, reader, promoted):
            return Resolution(m, "published", passed)
        passed.append((h, publisher, "published by %s" % describe_publisher(publisher)))
    raise untrusted_error(name, reader, passed)


def newest_published(
    headers: Sequence[ManifestHeader], publisher: Optional[dict], read: Callable[[str], Manifest]
) -> Optional[Manifest]:
    """The newest of ``headers`` published from the namespace of ``publisher`` (an unknown
    namespace matches only unknown ones), or None."""
    wanted = (publisher or {}).get("namespace")
    for _, m, _ in _scan(headers, read):
        if m is not None and (publisher_of(m.source) or {}).get("namespace") == wanted:
            return m
    return None


def untrusted_error(name: str, reader: Optional[str], passed: list) -> CheckpointException:
    """The error of a name with versions, none of which ``reader`` trusts."""
    readable = [(h, p) for h, p, reason in passed if not reason.startswith("unreadable")]
    if not readable:
        return CheckpointNotFound(
            "No readable version of checkpoint %r: %s."
            % (name, "; ".join("%s@%s %s" % (name, h.id, r) for h, _, r in passed[:5]))
        )
    newest, publisher = readable[0]
    lines = ", ".join(
        "%s@%s (%s, %s)" % (name, h.id, describe_publisher(p), iso_time(h.created_ms)[:19])
        for h, p in readable[:5]
    )
    more = " and %d more" % (len(readable) - 5) if len(readable) > 5 else ""
    return CheckpointScopeError(
        "No version of %r was published from namespace %s or promoted to it, so none is used "
        "by name there (a version from another namespace is never picked up by accident). Its "
        "versions, newest first: %s%s. To use one, pin it: '%s@%s', or promote it: "
        "`metaflow checkpoint promote %s@%s --to %s` (Checkpoint().promote(...))."
        % (name, reader, lines, more, name, newest.id, name, newest.id, reader)
    )


__all__ = [
    "Resolution",
    "describe_publisher",
    "history",
    "newest_published",
    "promote",
    "promoted_versions",
    "promotion_key",
    "promotions_of",
    "publisher_of",
    "publisher_record",
    "resolve",
    "trusted",
    "unpromote",
    "untrusted_error",
    "validate_namespace",
]
