"""Blob codecs: a blob stored plain or zstd-compressed, under a name that says which.

A blob's identity is the BLAKE3 digest of its *plain* bytes whatever the codec, so saves with
and without compression deduplicate against each other and every check (load, ``verify``)
hashes the plain bytes.  How it is stored is in its name, which the manifest's chunk
references, the key (:func:`.layout.blob_key`), GC and leases all use as is:

* ``<digest>``: the plain bytes (every blob written before codecs existed);
* ``<digest>.zst``: one zstd frame of them, with its content size declared.

So one key always holds one form (a plain object always hashes to its name) and a manifest
names exactly the object it needs.  A blob is stored compressed only when that saves at least
:data:`MIN_SAVING` of it: weights of a trained model barely compress, and a plain blob keeps
the in-kernel fast paths of local stores on load.

``zstandard`` (the ``zstd`` extra) is imported only when a blob is encoded or decoded.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from ..errors import CheckpointConfigError, CheckpointDependencyError

#: Codec setting -> the suffix of the names of blobs it encodes.
CODECS = {"zstd": "zst"}
_BY_SUFFIX = {suffix: codec for codec, suffix in CODECS.items()}
#: zstd level: its default, ~3-5x faster than gzip -6 at a similar ratio on text.
LEVEL = 3
#: A blob is stored compressed only if that saves at least this fraction of its bytes.
MIN_SAVING = 1 / 32
#: Largest plain size a compressed blob may declare (blobs are at most a chunk: 5 GiB).
MAX_PLAIN = 5 << 30

_local = threading.local()


def check_setting(value: object, where: str = "") -> Optional[str]:
    """The codec a ``compression`` setting asks for (None: store plain).

    Accepts None, ``"none"``/``""`` (plain) and ``"zstd"``.  A codec also needs its package:
    checked here, so a missing one fails before anything is read or written.  ``where``
    prefixes the messages (``"Step 'train': @checkpoint"``).

    Raises
    ------
    CheckpointConfigError
        An unknown value, naming ``where`` and what is accepted.
    CheckpointDependencyError
        ``zstandard`` is not installed, naming the extra that installs it.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    codec = value.strip().lower() if isinstance(value, str) else None
    label = "%s(compression=%%r)" % where if where else "compression=%r"
    if codec not in CODECS:
        raise CheckpointConfigError(
            "%s is not a known compression: use %s, or None to store blobs uncompressed."
            % (label % (value,), " or ".join(repr(c) for c in CODECS))
        )
    _zstd(label % codec)
    return codec


def split(name: str) -> tuple[str, Optional[str]]:
    """(digest, codec or None) of a stored blob name (already validated by the manifest)."""
    digest, dot, suffix = name.partition(".")
    if not dot:
        return name, None
    codec = _BY_SUFFIX.get(suffix)
    if codec is None:  # the manifest parser refuses these first; keep the message anyway
        raise CheckpointConfigError(
            "Blob %s is stored with codec %r, which this release cannot decode; upgrade "
            "metaflow-checkpointing to load it." % (name, suffix)
        )
    return digest, codec


def name_of(digest: str, codec: Optional[str]) -> str:
    """The stored name of the blob ``digest`` encoded with ``codec`` (None: plain)."""
    return digest if codec is None else "%s.%s" % (digest, CODECS[codec])


def encode(codec: str, data: Any) -> Optional[bytes]:
    """``data`` (a buffer) encoded with ``codec``, or None when that saves less than
    :data:`MIN_SAVING` of it (store it plain)."""
    cctx = getattr(_local, "cctx", None)
    if cctx is None:  # compressor objects are not thread-safe: one per worker thread
        cctx = _local.cctx = _zstd("compression='zstd'").ZstdCompressor(
            level=LEVEL, write_content_size=True
        )
    n = len(data)
    out = cctx.compress(data)
    return out if len(out) <= n - n * MIN_SAVING else None


class DecodeError(ValueError):
    """A stored object is not a valid encoding of a blob (corrupt at rest or in transit)."""


def decode(codec: str, data: bytes) -> bytes:
    """The plain bytes of a blob stored with ``codec``.

    The frame must declare its content size (every frame we write does), at most
    :data:`MAX_PLAIN`, and hold exactly that many bytes: a damaged or hostile object can
    neither allocate more than it declares nor pass for a shorter blob.  The caller then checks
    the plain bytes against the blob's hash.

    Raises
    ------
    DecodeError
        The object is not such a frame.
    CheckpointDependencyError
        ``zstandard`` is not installed.
    """
    zstd = _zstd("Loading a zstd-compressed checkpoint")
    try:
        size = zstd.frame_content_size(data)
    except zstd.ZstdError as exc:
        raise DecodeError("not a zstd frame (%s)" % exc) from None
    if size < 0 or size > MAX_PLAIN:
        raise DecodeError("the zstd frame declares no usable content size (%d)" % size)
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstd.ZstdDecompressor()
    try:
        plain = dctx.decompress(data, max_output_size=size)
    except zstd.ZstdError as exc:
        raise DecodeError("the zstd frame does not decompress (%s)" % exc) from None
    if len(plain) != size:
        raise DecodeError("the zstd frame holds %d bytes, not the %d declared" % (len(plain), size))
    return plain


def stream_decoder(codec: str) -> Any:
    """A streaming decoder (``decompressobj``) for windows of a stored object, for checks that
    read blobs back in bounded windows (``verify``)."""
    return _zstd("Checking a zstd-compressed checkpoint").ZstdDecompressor().decompressobj()


def check_header(codec: str, head: bytes) -> None:
    """Refuse an object whose frame header (in its first bytes) declares no content size or
    more than :data:`MAX_PLAIN`, before a streaming decoder is fed any of it.

    Raises
    ------
    DecodeError
        As :func:`decode` would for that frame.
    """
    zstd = _zstd("Checking a zstd-compressed checkpoint")
    try:
        size = zstd.frame_content_size(head)
    except zstd.ZstdError as exc:
        raise DecodeError("not a zstd frame (%s)" % exc) from None
    if size < 0 or size > MAX_PLAIN:
        raise DecodeError("the zstd frame declares no usable content size (%d)" % size)


def require(codec: str) -> None:
    """Import ``codec``'s package now (loading a checkpoint with blobs stored with it).

    Raises
    ------
    CheckpointDependencyError
        It is not installed, naming the extra that installs it.
    """
    _zstd("Loading a zstd-compressed checkpoint")


def _zstd(feature: str):
    try:
        import zstandard
    except ImportError as exc:
        raise CheckpointDependencyError.of(feature, "zstandard", "zstd", exc) from exc
    return zstandard
