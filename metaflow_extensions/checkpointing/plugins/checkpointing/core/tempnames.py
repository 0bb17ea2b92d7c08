"""The temporary names the package creates inside or beside directories a user may save.

One place for them, so that what a load or a background snapshot writes and what a save skips
(:func:`is_temp_name`) cannot drift apart:

* a load's lock file ``.mfckpt-part-<12 hex>`` (in the destination root), its part files
  ``.mfckpt-part-<token>-<i>`` and the backups ``-b<i>`` of files it replaces (:mod:`.download`);
* staging directories of loads ``.mfckpt-load-<8>`` and of background saves
  ``.mfckpt-snapshot-<8>`` (8 random characters);
* the local store's temp files ``.mfckpt-tmp-<8>`` (``storage/local.py``, below this layer).
"""

from __future__ import annotations

import re

PART_PREFIX = ".mfckpt-part-"
#: A load's part or backup file; group 1 is the load's token.
PART = re.compile(r"\.mfckpt-part-([0-9a-f]{12})(?:-b?[0-9]+)?\Z")
#: A load's lock file.
LOCK = re.compile(r"\.mfckpt-part-[0-9a-f]{12}\Z")
STAGING_PREFIX = ".mfckpt-load-"
#: A load's staging directory.
STAGING = re.compile(r"\.mfckpt-load-[a-z0-9_]{8}\Z")
SNAPSHOT_PREFIX = ".mfckpt-snapshot-"

_TEMP = re.compile(
    "|".join(
        (PART.pattern, r"\.mfckpt-(?:load|snapshot|tmp)-[a-z0-9_]{8}\Z"),
    )
)


def is_temp_name(name: str) -> bool:
    """Whether ``name`` (a base name) is one of the package's temporary files or directories."""
    return name.startswith(".mfckpt-") and _TEMP.match(name) is not None
