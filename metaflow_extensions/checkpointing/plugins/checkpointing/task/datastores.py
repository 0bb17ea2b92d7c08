"""The reference extension's Metaflow datastores ``s3-compatible`` and ``coreweave``.

``metaflow-checkpoint`` registers both (``DATASTORES_DESC``), so a Metaflow configuration or
command line naming one (``--datastore=s3-compatible``, ``METAFLOW_DEFAULT_DATASTORE=coreweave``)
must keep working after the switch.  In the reference, both are Metaflow's S3 datastore under
another ``TYPE``: rooted at ``METAFLOW_DATASTORE_SYSROOT_S3`` and reached through Metaflow's S3
client, so its settings apply (``METAFLOW_S3_ENDPOINT_URL`` for MinIO, R2, CoreWeave...,
``METAFLOW_S3_CLIENT_PARAMS``, the AWS credential chain).  Ours are exactly that: Metaflow's
``S3Storage`` with the reference's ``TYPE``.  The reference's ``coreweave`` additionally reads
artifacts with plain boto3 in threads, which ignores ``METAFLOW_S3_ENDPOINT_URL``; ours reads
them as ``s3`` does, honouring it (the one deliberate difference, docs/compatibility.md).

Checkpoints of a flow on either datastore live under ``<sysroot>/mf.checkpointing`` in the same
S3 store (``storage/factory.py::root_for_datastore`` maps any datastore whose root is a URL).
Metaflow's cards cannot be stored on either (:func:`cards_supported`): ``show_card=True`` then
attaches no card and says so once (:func:`warn_no_cards`) instead of a failing ``card create``.
"""

from __future__ import annotations

import sys
from typing import Optional

from metaflow.plugins.datastores.s3_storage import S3Storage


class S3CompatibleStorage(S3Storage):
    """``--datastore=s3-compatible``: Metaflow's S3 datastore (an S3-compatible endpoint is
    ``METAFLOW_S3_ENDPOINT_URL``), rooted at ``METAFLOW_DATASTORE_SYSROOT_S3``."""

    TYPE = "s3-compatible"


class CoreweaveStorage(S3CompatibleStorage):
    """``--datastore=coreweave``: as ``s3-compatible`` (CoreWeave object storage is an
    S3-compatible endpoint)."""

    TYPE = "coreweave"


#: Datastore types a card-less warning was already printed for (once per process).
_WARNED: set = set()


def cards_supported(ds_type: str) -> bool:
    """Whether Metaflow can store cards on datastore ``ds_type``.

    Metaflow's card datastore (``CardDatastore.get_storage_root``) knows ``s3``, ``azure``,
    ``gs``, ``local`` and ``spin`` only: on ``s3-compatible``, ``coreweave`` (or any other
    plugin datastore) every ``card create`` fails with its NotImplementedError, and
    ``get_cards`` finds nothing.  Asked, not copied, so a Metaflow that learns a type is
    believed.
    """
    from metaflow.plugins.cards.card_datastore import CardDatastore

    try:
        CardDatastore.get_storage_root(ds_type)
    except NotImplementedError:
        return False
    return True


def warn_no_cards(ds_type: str) -> None:
    """Say once per process, and only in the one launching the run (not in each task or
    ``card create``), that ``show_card=True`` attaches no card on ``ds_type``."""
    if ds_type in _WARNED or _command() in ("step", "card"):
        return
    _WARNED.add(ds_type)
    print(
        "Warning: @checkpoint(show_card=True): Metaflow cannot store cards on the %r "
        "datastore (its card datastore supports s3, azure, gs and local), so no checkpoint card "
        "is attached; checkpoints are saved and loaded as usual. `--datastore=s3` with the same "
        "S3 settings reaches the same store and has cards." % ds_type,
        file=sys.stderr,
        flush=True,
    )


def _command() -> Optional[str]:
    """The Metaflow subcommand this process runs (``run``, ``step``, ``card``...), from the
    arguments Metaflow's top-level command kept (``saved_args``); None outside its CLI."""
    try:
        from metaflow._vendor import click

        ctx = click.get_current_context(silent=True)
    except Exception:  # not under Metaflow's CLI
        return None
    args = list(getattr(ctx.find_root(), "saved_args", None) or []) if ctx else []
    return args[0] if args else None
