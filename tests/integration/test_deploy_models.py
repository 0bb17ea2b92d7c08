"""A deploy with ``@checkpoint(models=["name=<local path>"])`` says the path is not uploaded.

``argo-workflows create`` / ``step-functions create`` run no ``runtime_init``: the local path
is never uploaded, and the deployed runs resolve the model in the production namespace.  The
deploy still succeeds (the model may already be published and promoted there) but prints one
warning per such model naming the step, the model and what to do.  Deploys run as in
tests/integration/test_deploy_json.py (moto S3, no network beyond 127.0.0.1).
"""

from __future__ import annotations

import pytest

from .test_deploy_json import Deployer, root_config

pytestmark = [pytest.mark.flow, pytest.mark.s3]


@pytest.fixture
def deployer(s3_server, tmp_path):
    return Deployer(tmp_path, s3_server)


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "does not upload local paths" in line]


@pytest.mark.parametrize("command", ["argo-workflows", "step-functions"])
def test_a_deploy_warns_that_a_local_model_path_is_not_uploaded(deployer, command):
    options = root_config(deployer.bucket, models=("m=./local_model", "tiny"))
    _, stderr = deployer.deploy("remote_flow.py", command, *options)
    lines = _warnings(stderr)
    assert len(lines) == 1, stderr[-3000:]  # once, and only for the local-path model
    line = lines[0]
    assert "step 'start'" in line and 'models=["m=./local_model"]' in line
    assert "`%s create`" % command in line
    assert "production namespace" in line
    assert "metaflow checkpoint promote m@<version> --to production:<token>" in line


def test_a_deploy_of_named_models_only_says_nothing(deployer):
    _, stderr = deployer.deploy(
        "remote_flow.py", "argo-workflows", *root_config(deployer.bucket, models=("tiny",))
    )
    assert _warnings(stderr) == [], stderr[-3000:]
