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
"""

from __future__ import annotations

from metaflow.plugins.datastores.s3_storage import S3Storage


class S3CompatibleStorage(S3Storage):
    """``--datastore=s3-compatible``: Metaflow's S3 datastore (an S3-compatible endpoint is
    ``METAFLOW_S3_ENDPOINT_URL``), rooted at ``METAFLOW_DATASTORE_SYSROOT_S3``."""

    TYPE = "s3-compatible"


class CoreweaveStorage(S3CompatibleStorage):
    """``--datastore=coreweave``: as ``s3-compatible`` (CoreWeave object storage is an
    S3-compatible endpoint)."""

    TYPE = "coreweave"
