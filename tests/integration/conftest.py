"""Fixtures of the integration tests (flows run with metaflow.Runner in temp dirs)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _global_client_namespace():
    """Results are read through ``Runner``'s ``Run`` objects (namespace-check free); make the
    in-process client independent of this process's user name, which tests don't set."""
    from metaflow import namespace

    namespace(None)
    yield


@pytest.fixture
def s3_flow_env(s3_env, flow_env, monkeypatch):
    """(env, tmp, bucket) for flows with ``--datastore=s3`` on a fresh bucket; metadata stays
    local.  ``s3_env`` also points this process's client at the server (to read artifacts)."""
    # s3util binds DATATOOLS_CLIENT_PARAMS at import: if it was imported before s3_env patched
    # metaflow_config, the in-process client would still talk to AWS.
    from metaflow import metaflow_config
    from metaflow.plugins.datatools.s3 import s3util

    monkeypatch.setattr(s3util, "DATATOOLS_CLIENT_PARAMS", metaflow_config.DATATOOLS_CLIENT_PARAMS)
    env, tmp = flow_env
    bucket = s3_env["new_bucket"]()
    env = dict(env, METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket, **s3_env["env"])
    return env, tmp, bucket
