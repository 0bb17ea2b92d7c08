"""Which checkpoint store ``--datastore``/``--root`` designate (:func:`store_root`).

``--datastore D`` alone is that datastore's configured root (Metaflow's
``METAFLOW_DATASTORE_SYSROOT_*``, or the ``.metaflow`` directory found from the current
directory), plus ``mf.checkpointing``.  ``D`` is any datastore Metaflow's own ``--datastore``
accepts (:data:`DATASTORES`, read from Metaflow's registered datastores, so ours,
``s3-compatible`` and ``coreweave``, are there and the list cannot drift from a flow's).
``--root URL`` is either a checkpoint root (used as given, as before) or a datastore root,
below which ``mf.checkpointing/`` is found.  Decisions: ADR 005, cli.
"""

from __future__ import annotations

from typing import Optional

from metaflow._vendor import click

from ..common.settings import storage_for_url
from ..core.layout import MANIFESTS_PREFIX
from ..errors import CheckpointConfigError
from ..storage.factory import CHECKPOINT_DIRNAME, normalize_root, root_for_datastore, url_scheme

#: URL schemes of the roots of each kind of datastore ("" is a plain path; Metaflow spells an
#: Azure root ``container/prefix``, without a scheme).
_SCHEMES = {
    "local": ("", "file", "local"),
    "s3": ("s3",),
    "azure": ("", "az", "abfs", "abfss"),
    "gs": ("gs", "gcs"),
}
_EXAMPLES = {
    "local": "/path/to/.metaflow",
    "s3": "s3://bucket/metaflow",
    "azure": "container/metaflow or az://container/metaflow",
    "gs": "gs://bucket/metaflow",
}


def datastore_kinds() -> dict[str, Optional[str]]:
    """``{TYPE: kind}`` of every datastore Metaflow's ``--datastore`` accepts (its registered
    ``DATASTORES``: Metaflow's own and the extensions', ours ``s3-compatible`` and
    ``coreweave``): ``local``, ``s3``, ``azure``, ``gs`` first, then the others by name
    (Metaflow's own order changes from one process to the next).

    The kind is the first of ``local``, ``s3``, ``azure``, ``gs`` among the ``TYPE`` of the
    class and its bases (``coreweave`` and ``s3-compatible`` subclass Metaflow's S3 datastore:
    ``s3``; ``spin``: ``local``): which roots ``--root`` may give with it and how a missing
    root is explained.  None for a datastore built on none of them (its root is then used as
    :func:`~..storage.factory.root_for_datastore` allows: a URL, or refused).
    """
    from metaflow import plugins

    kinds: dict[str, Optional[str]] = {}
    first = list(_SCHEMES)
    for impl in sorted(
        plugins.DATASTORES,
        key=lambda d: (first.index(d.TYPE) if d.TYPE in first else len(first), d.TYPE),
    ):
        types = (getattr(cls, "TYPE", None) for cls in impl.__mro__)
        kinds[impl.TYPE] = next((t for t in types if t in _SCHEMES), None)
    return kinds


#: The datastores ``--datastore`` accepts: exactly Metaflow's own ``--datastore`` choices (one
#: source, so a datastore a flow accepts is never refused here; review r14 R3).
DATASTORES = tuple(datastore_kinds())


def store_root(root: Optional[str], datastore: Optional[str]) -> Optional[str]:
    """The checkpoint root of ``--root``/``--datastore``; None when neither is given.

    Parameters
    ----------
    root : str, optional
        ``--root``: a checkpoint root, or a datastore root with ``mf.checkpointing/`` below.
    datastore : str, optional
        ``--datastore``: one of :data:`DATASTORES`.

    Returns
    -------
    str or None
        - ``--datastore D``: ``<D's configured datastore root>/mf.checkpointing``
          (``METAFLOW_CHECKPOINT_ROOT`` does not apply: the datastore was asked for);
        - ``--root R`` naming a directory ``mf.checkpointing``, or a store that holds
          checkpoints (``R/manifests/``): ``R``;
        - ``--root R`` with ``R/mf.checkpointing/`` holding anything, or with ``--datastore``
          (R is then that datastore's root, as Metaflow's ``--datastore-root``):
          ``R/mf.checkpointing``;
        - else ``R`` (a new, empty store is created there by what writes).

    Raises
    ------
    click.UsageError
        ``--root`` is not a root of ``--datastore`` (e.g. a path with ``--datastore s3``).
    CheckpointConfigError
        ``--datastore`` alone with no root configured for it.
    StorageError
        The root cannot be read (its URL and the reason are in the message).
    """
    if root is None and datastore is None:
        return None
    if root is None:
        found = configured_root(datastore)
        return root_for_datastore(datastore_kinds().get(datastore) or datastore, found)
    kind = datastore_kinds().get(datastore) if datastore is not None else None
    if kind is not None:
        scheme = url_scheme(root)
        if scheme not in _SCHEMES[kind]:
            raise click.UsageError(
                "--root %s is not a root of the %s datastore (e.g. %s): give such a root, or "
                "leave out --datastore." % (root, datastore, _EXAMPLES[kind])
            )
        if kind == "azure" and not scheme:
            root = "az://" + root.strip("/")  # Metaflow's spelling of an Azure root
    if normalize_root(root).rsplit("/", 1)[-1] == CHECKPOINT_DIRNAME:
        return root
    storage = storage_for_url(root, workers=1)
    if storage.has_objects(MANIFESTS_PREFIX):
        return root  # already a checkpoint root (e.g. one given to @checkpoint(root=...))
    below = root_for_datastore(kind or datastore or "local", root)
    if datastore is not None or storage.has_objects(CHECKPOINT_DIRNAME + "/"):
        return below
    return root


def configured_root(datastore: str) -> str:
    """The datastore root Metaflow is configured with for ``datastore`` (what a flow run with
    ``--datastore <datastore>`` uses)."""
    from metaflow import plugins

    impl = {d.TYPE: d for d in plugins.DATASTORES}.get(datastore)
    if impl is None:  # DATASTORES is Metaflow's list: always there
        raise CheckpointConfigError("Metaflow has no %r datastore." % datastore)
    found = impl.get_datastore_root_from_config(lambda *a, **k: None, create_on_absent=False)
    if not found:
        # The variable it reads: an S3/Azure/GCS-based one reads its base's (s3-compatible and
        # coreweave: ..._S3); a local-based one its own (spin: ..._SPIN, in .metaflow_spin).
        kind = datastore_kinds().get(datastore) or datastore
        name = kind if kind in ("s3", "azure", "gs") else datastore
        where = "set METAFLOW_DATASTORE_SYSROOT_%s" % name.upper().replace("-", "_")
        if kind == "local":
            found_dir = getattr(impl, "DATASTORE_DIR", ".metaflow")
            where = "no %s directory here or above, and %s unset" % (found_dir, where[4:])
        example = _EXAMPLES.get(kind, "a URL").split(" or ")[0]
        raise CheckpointConfigError(
            "--datastore %s: no %s datastore root is configured (%s): give --root, e.g. "
            "--root %s." % (datastore, datastore, where, example)
        )
    return found


def warn_if_no_store(root: Optional[str]) -> bool:
    """Say on stderr that ``root`` (``--root``/``--datastore``; None: the default store, not
    checked) holds no checkpoint store, as ``gc`` refuses such a root: a mistyped ``--root`` of a
    read-only command (list, show, du, verify) otherwise answers "0 checkpoints" as if it were
    an empty store.  Returns True when it said so (verify then exits non-zero).  Test:
    tests/cli/test_cli_output.py::test_a_root_with_no_checkpoint_store_is_said_on_read_commands.
    """
    if root is None or storage_for_url(root, workers=1).has_objects(MANIFESTS_PREFIX):
        return False
    click.echo(
        "No checkpoint store at %s (it holds no checkpoint: check --root, or leave it out to "
        "use the default store)." % root,
        err=True,
    )
    return True
