"""The reference extension's datastores ``s3-compatible`` and ``coreweave`` (task/datastores.py):
a configuration naming one keeps working, checkpoints live in the same S3 store, and
``show_card=True`` degrades to one warning where Metaflow cannot store cards."""

from __future__ import annotations

import uuid

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.task import datastores
from metaflow_extensions.checkpointing.plugins.checkpointing.task.card_attach import (
    attach_checkpoint_card,
)

from .flowrun import FLOWS, run_flow, single_task

pytestmark = [pytest.mark.s3]

NO_CARDS = (
    "Warning: @checkpoint(show_card=True): Metaflow cannot store cards on the 's3-compatible'"
)


@pytest.mark.flow
def test_a_flow_on_the_s3_compatible_datastore_saves_and_loads_its_checkpoint(
    s3_flow_env, s3_server
):
    """``--datastore=s3-compatible`` (the reference's datastore name): ``end`` loads what
    ``start`` saved, in ``<sysroot>/mf.checkpointing``, found again from the run's metadata;
    ``show_card=True`` attaches no card (Metaflow's card datastore cannot store one there) and
    says so once, with no failing ``card create`` in the task's output."""
    from metaflow import Checkpoint
    from metaflow.cards import get_cards
    from metaflow.plugins.cards.exception import CardNotPresentException

    env, tmp, bucket = s3_flow_env
    result = run_flow(FLOWS / "s3_compatible_flow.py", env, tmp, datastore="s3-compatible")
    assert single_task(result.run, "end").data.loaded == "weights"
    start = single_task(result.run, "start")
    root = "s3://%s/mf/mf.checkpointing" % bucket
    assert start.data.saved.root == root
    listed = s3_server["client"].list_objects_v2(Bucket=bucket, Prefix="mf/mf.checkpointing/")
    assert listed["KeyCount"] > 0
    assert not (tmp / ".metaflow" / "mf.checkpointing").exists()  # nothing in a local store
    # A notebook finds the store from the task's metadata (ds-type "s3-compatible").
    (found,) = Checkpoint().list(start)
    assert (found.root, found.key) == (root, start.data.saved.key)
    output = result.stdout + result.stderr
    assert output.count(NO_CARDS) == 1, output
    assert "Traceback" not in output and "NotImplementedError" not in output, output
    with pytest.raises(CardNotPresentException):
        get_cards(start)


@pytest.mark.parametrize("ds_type", ["s3-compatible", "coreweave"])
def test_the_reference_datastores_store_artifacts_through_the_s3_settings(
    s3_env, ds_type, monkeypatch
):
    """Registered under the reference's names, rooted at METAFLOW_DATASTORE_SYSROOT_S3 and
    reaching the endpoint of METAFLOW_S3_ENDPOINT_URL; our checkpoint root sits below theirs."""
    from metaflow import plugins
    from metaflow.plugins.datastores import s3_storage

    from metaflow_extensions.checkpointing.plugins.checkpointing.common.settings import (
        checkpoint_root,
    )

    bucket = s3_env["new_bucket"]()
    impl = {d.TYPE: d for d in plugins.DATASTORES}[ds_type]
    sysroot = "s3://%s/mf" % bucket
    monkeypatch.setattr(s3_storage, "DATASTORE_SYSROOT_S3", sysroot)  # the setting, read once
    assert impl.get_datastore_root_from_config(print) == sysroot
    storage = impl(sysroot)
    payload = uuid.uuid4().bytes
    storage.save_bytes(iter([("a/blob", payload)]), overwrite=True)
    assert storage.is_file(["a/blob", "a/none"]) == [True, False]
    with storage.load_bytes(["a/blob"]) as loaded:
        (key, path, _meta) = next(iter(loaded))
        with open(path, "rb") as f:
            assert (key, f.read()) == ("a/blob", payload)
    got = s3_env["client"].get_object(Bucket=bucket, Key="mf/a/blob")["Body"].read()
    assert got == payload
    assert checkpoint_root(ds_type, sysroot) == sysroot + "/mf.checkpointing"
    assert checkpoint_root("s3", sysroot) == checkpoint_root(ds_type, sysroot)  # one store


@pytest.mark.parametrize("ds_type", ["s3-compatible", "coreweave"])
def test_show_card_attaches_no_card_where_metaflow_cannot_store_one_and_says_so_once(
    ds_type, monkeypatch, capsys
):
    """Metaflow's card datastore raises NotImplementedError for these types in every
    ``card create``; ``attach_checkpoint_card`` leaves the step alone (a flow of None would
    fail if touched) and warns once per process however many steps ask."""
    monkeypatch.setattr(datastores, "_WARNED", set())
    assert not datastores.cards_supported(ds_type)
    assert datastores.cards_supported("s3") and datastores.cards_supported("local")
    for step_name in ("train", "evaluate"):
        assert attach_checkpoint_card(None, step_name, [], ds_type) is False
    warned = capsys.readouterr().err
    assert warned.count("Warning: @checkpoint(show_card=True)") == 1, warned
    assert "on the %r datastore" % ds_type in warned and "--datastore=s3" in warned
