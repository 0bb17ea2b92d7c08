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
