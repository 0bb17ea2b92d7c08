"""``argo-workflows create --only-json`` and ``step-functions create --only-json`` with @checkpoint.

No cluster and no AWS: the flow's datastore is S3 on the local moto server, which also answers
Step Functions' look-up of an existing deployment and holds the AWS Batch job queue it checks;
the Kubernetes and Batch settings are dummy values.  Every process runs with
``tests/flows/netguard`` on its PYTHONPATH, which refuses (and logs) any connection or name
lookup for a host other than 127.0.0.1.  What a remote task needs must be in the generated JSON
or travel with the flow: the datastore root is on the step command line, the checkpoint root
and models ride in the flow's Config (stored in the code package), settings set with
``@environment`` are in the container's environment; the launcher's own
``METAFLOW_CHECKPOINT_*`` variables are not (design.md section 7).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import uuid
from pathlib import Path

import pytest
from conftest import flow_environment

from .flowrun import FLOWS, run_subprocess

pytestmark = [pytest.mark.flow, pytest.mark.s3]

NETGUARD = FLOWS / "netguard"
#: The launcher's own checkpoint settings: they must not end up in what remote tasks get.
LAUNCHER_ONLY = {
    "METAFLOW_CHECKPOINT_ROOT": "s3://launcher-only/ckpt",
    "METAFLOW_CHECKPOINT_TIMEOUT_SECONDS": "7",
}


def batch_queue(client_kwargs: dict) -> str:
    """An AWS Batch job queue on the moto server (``step-functions create`` registers a job
    definition for it and reads its compute environment's type)."""
    import boto3

    ec2 = boto3.client("ec2", **client_kwargs)
    batch = boto3.client("batch", **client_kwargs)
    iam = boto3.client("iam", **client_kwargs)
    name = "mf-%s" % uuid.uuid4().hex[:8]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=name, Description=name, VpcId=vpc)["GroupId"]
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    env = batch.create_compute_environment(
        computeEnvironmentName=name,
        type="MANAGED",
        serviceRole=role,
        computeResources={
            "type": "FARGATE",
            "maxvCpus": 4,
            "subnets": [subnet],
            "securityGroupIds": [group],
        },
    )
    batch.create_job_queue(
        jobQueueName=name,
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env["computeEnvironmentArn"]}],
    )
    return name


class Deployer:
    """Runs deploy commands for flows copied into a project directory (as a user's repo)."""

    def __init__(self, tmp: Path, s3_server: dict):
        self.tmp = tmp
        self.s3 = s3_server
        self.bucket = s3_server["new_bucket"]()
        self.project = tmp / "project"
        self.project.mkdir()
        (tmp / "home").mkdir(exist_ok=True)
        self.netlog = tmp / "net.log"
        endpoint = s3_server["endpoint"]
        self.env = flow_environment(
            tmp,
            METAFLOW_DEFAULT_DATASTORE="s3",
            METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % self.bucket,
            METAFLOW_KUBERNETES_NAMESPACE="default",
            # step-functions create asks Step Functions, STS and Batch: all the moto server.
            AWS_ENDPOINT_URL=endpoint,
            METAFLOW_SFN_IAM_ROLE="arn:aws:iam::123456789012:role/mf-sfn",
            METAFLOW_ECS_S3_ACCESS_IAM_ROLE="arn:aws:iam::123456789012:role/mf-task",
            METAFLOW_ECS_FARGATE_EXECUTION_ROLE="arn:aws:iam::123456789012:role/mf-exec",
            PYTHONPATH=str(NETGUARD),
            NETGUARD_LOG=str(self.netlog),
            **s3_server["env"],
            **LAUNCHER_ONLY,
        )

    def deploy(self, flow: str, command: str, *options: str, expect_ok: bool = True):
        """``python <flow> [options] <command> create --only-json``; returns (JSON, stderr)."""
        shutil.copy(FLOWS / flow, self.project / flow)
        env = dict(self.env)
        if command == "step-functions":
            env["METAFLOW_BATCH_JOB_QUEUE"] = batch_queue(
                {"endpoint_url": self.s3["endpoint"], "region_name": "us-east-1"}
            )
        args = [flow, "--no-pylint", *options, command, "create", "--only-json"]
        proc = run_subprocess(args, env, self.project, timeout=120)
        assert not self.netlog.exists(), self.netlog.read_text()
        if not expect_ok:
            assert proc.returncode != 0, proc.stdout[-2000:]
            return None, proc.stderr
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads(proc.stdout), proc.stderr

    def package(self, code_url: str) -> tarfile.TarFile:
        """The code package a deploy uploaded (``METAFLOW_CODE_URL`` of a task)."""
        bucket, key = code_url[len("s3://") :].split("/", 1)
        body = self.s3["client"].get_object(Bucket=bucket, Key=key)["Body"].read()
        return tarfile.open(fileobj=io.BytesIO(body))


ROOT_CONFIG = ("--config-value", "ckpt")


def root_config(bucket: str, models=("tiny",)) -> tuple[str, ...]:
    """``--config-value ckpt {"root": s3://<bucket>/custom, "models": [...]}``."""
    value = {"root": "s3://%s/custom" % bucket, "models": list(models) or None}
    return (*ROOT_CONFIG, json.dumps(value))


@pytest.fixture
def deployer(s3_server, tmp_path):
    return Deployer(tmp_path, s3_server)


def argo_container(workflow: dict, step: str) -> dict:
    template = next(t for t in workflow["spec"]["templates"] if t["name"] == step)
    return template["container"]


def argo_env(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container["env"]}


def _config_of(package: tarfile.TarFile) -> dict:
    return json.loads(package.extractfile(".mf_meta/CONFIG").read())["user_configs"]


def test_argo_workflows_json_carries_what_checkpoint_tasks_need(deployer):
    workflow, _ = deployer.deploy("remote_flow.py", "argo-workflows", *root_config(deployer.bucket))
    container = argo_container(workflow, "start")
    command = container["command"][2]
    env = argo_env(container)
    # The datastore root (the default checkpoint root's parent) is on the step command line.
    assert "--datastore=s3 --datastore-root=s3://%s/mf" % deployer.bucket in command
    assert "step start" in command and "--max-user-code-retries 1" in command
    template = next(t for t in workflow["spec"]["templates"] if t["name"] == "start")
    assert template["retryStrategy"]["limit"] == 1
    # A setting given with @environment reaches the container; the launcher's do not.
    assert env["METAFLOW_CHECKPOINT_TIMEOUT_SECONDS"] == "30"
    text = json.dumps(workflow)
    assert "launcher-only" not in text and "METAFLOW_CHECKPOINT_ROOT" not in text
    # The root and models given through the flow's Config are stored in the code package.
    config = _config_of(deployer.package(env["METAFLOW_CODE_URL"]))
    assert config["ckpt"][0] == {"root": "s3://%s/custom" % deployer.bucket, "models": ["tiny"]}


def test_argo_workflows_json_accepts_a_checkpointing_gang(deployer):
    workflow, _ = deployer.deploy("remote_parallel_flow.py", "argo-workflows")
    commands = [
        t["container"]["command"][2] for t in workflow["spec"]["templates"] if t.get("container")
    ]
    # @parallel becomes a JobSet; its pods run the same step command with the datastore root.
    jobsets = [t for t in workflow["spec"]["templates"] if "resource" in t]
    assert jobsets, [t["name"] for t in workflow["spec"]["templates"]]
    manifest = jobsets[0]["resource"]["manifest"]
    assert "step train" in manifest
    assert "--datastore-root=s3://%s/mf" % deployer.bucket in manifest
    assert all("launcher-only" not in c for c in commands) and "launcher-only" not in manifest


def test_step_functions_json_carries_what_checkpoint_tasks_need(deployer):
    machine, _ = deployer.deploy("remote_flow.py", "step-functions", *root_config(deployer.bucket))
    params = machine["States"]["start"]["Parameters"]
    command = params["ContainerOverrides"]["Command"][2]
    env = {e["Name"]: e.get("Value") for e in params["ContainerOverrides"]["Environment"]}
    assert "--datastore=s3 --datastore-root=s3://%s/mf" % deployer.bucket in command
    assert "step start" in command and "--max-user-code-retries 1" in command
    assert env["METAFLOW_CHECKPOINT_TIMEOUT_SECONDS"] == "30"
    text = json.dumps(machine)
    assert "launcher-only" not in text and "METAFLOW_CHECKPOINT_ROOT" not in text
    config = _config_of(deployer.package(env["METAFLOW_CODE_URL"]))
    assert config["ckpt"][0]["root"] == "s3://%s/custom" % deployer.bucket


def test_step_functions_refuses_a_gang_itself(deployer):
    """Step Functions does not run @parallel at all: Metaflow refuses it, not @checkpoint."""
    _, stderr = deployer.deploy("remote_parallel_flow.py", "step-functions", expect_ok=False)
    assert "@parallel decorator(s) to AWS Step Functions is not supported" in stderr
    error = stderr[stderr.index("AWS Step Functions error") :]
    assert "checkpoint" not in error.lower()
