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


def decode(codec: str, data: bytes, expected: int) -> bytes:
    """The plain bytes of a blob stored with ``codec``, which the manifest says hold
    ``expected`` bytes.

    The frame must declare its size (every frame we write does), at most ``expected``
    (every manifest references all of a blob), checked before anything is decompressed, hold
    exactly that many, and be all the object holds (bytes after it are refused, as by
    :class:`BoundedReader`, so a load and ``verify --deep`` judge an object alike): a damaged or
    hostile object can neither make a reader allocate more than the manifest expects nor pass
    for a shorter blob.  The caller then checks the
    plain bytes against the blob's hash (and a shorter blob against the slices it must hold).

    Raises
    ------
    DecodeError
        The object is not such a frame.
    CheckpointDependencyError
        ``zstandard`` is not installed.
    """
    zstd = _zstd("Loading a zstd-compressed checkpoint")
    size = declared_size(codec, data, expected)
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstd.ZstdDecompressor()
    try:
        plain = dctx.decompress(data, max_output_size=size, allow_extra_data=False)
    except zstd.ZstdError as exc:
        raise DecodeError("the zstd frame does not decompress (%s)" % exc) from None
    if len(plain) != size:
        raise DecodeError("the zstd frame holds %d bytes, not the %d declared" % (len(plain), size))
    return plain


def declared_size(codec: str, head: bytes, expected: int) -> int:
    """The plain size the frame starting ``head`` declares, refused (before a byte of it is
    decompressed) when it is more than ``expected``, the size the manifests need.

    A smaller size is returned: decoding it costs less than the manifest allows, and the hash
    then tells a corrupt blob from an intact one a manifest asks too much of.

    Raises
    ------
    DecodeError
        No frame, no declared size, or more than ``expected``.
    """
    zstd = _zstd("Checking a zstd-compressed checkpoint")
    try:
        size = zstd.frame_content_size(head)
    except zstd.ZstdError as exc:
        raise DecodeError("not a zstd frame (%s)" % exc) from None
    if size < 0 or size > MAX_PLAIN:
        raise DecodeError("the zstd frame declares no usable content size (%d)" % size)
    if size > expected:
        raise DecodeError(
            "the zstd frame declares %d plain bytes, the manifest expects %d" % (size, expected)
        )
    return size


class BoundedReader:
    """The plain bytes of a stored object, decoded while it is read in windows, never more than
    ``expected`` of them and at most ``window`` at a time (``read``), whatever the object holds.

    ``fetch(offset)`` returns the stored bytes from ``offset`` (one window; ``b""`` at the end).
    The frame header is checked (:func:`declared_size`) before the decoder sees any byte, and
    the decoder is bounded by the size it declares from then on.
    """

    def __init__(self, codec: str, fetch: Any, expected: int, window: int):
        self._zstd = _zstd("Checking a zstd-compressed checkpoint")
        self._fetch = fetch
        self.window = window
        self.stored = 0  # stored bytes fetched so far
        self.plain = 0  # plain bytes returned so far
        self._first: Optional[bytes] = None
        head = fetch(0)
        self.stored = len(head)
        self.expected = declared_size(codec, head, expected)
        self._first = head
        self._reader = self._zstd.ZstdDecompressor().stream_reader(
            self, read_size=window, read_across_frames=False
        )

    def read(self, n: int = -1) -> bytes:  # the source side, called by the decoder
        if self._first is not None:
            data, self._first = self._first, None
            return data
        data = self._fetch(self.stored)
        self.stored += len(data)
        return data

    def next(self) -> bytes:
        """The next plain bytes (at most one window; ``b""`` at the end).

        Raises
        ------
        DecodeError
            The object does not decode, holds more than ``expected`` bytes, or ends early.
        """
        try:
            data = self._reader.read(min(self.window, self.expected - self.plain + 1))
        except self._zstd.ZstdError as exc:
            raise DecodeError("the zstd frame does not decompress (%s)" % exc) from None
        self.plain += len(data)
        if self.plain > self.expected:
            raise DecodeError(
                "the zstd frame holds more than the %d bytes declared" % self.expected
            )
        if not data and self.plain != self.expected:
            raise DecodeError(
                "the zstd frame ends after %d of the %d bytes declared"
                % (self.plain, self.expected)
            )
        return data


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
