"""Remote tasks run from Metaflow's code package, in a Python that has only Metaflow and boto3.

The package is the one ``argo-workflows create`` builds and uploads (to S3 on the local moto
server).  A "pod" is the step's container command from that JSON, run by bash in a fresh
directory with a clean virtual environment's ``python`` first on PATH: it downloads the package
from S3, unpacks it, puts it on PYTHONPATH and runs ``init`` and ``step start`` with
``--datastore=s3``, exactly as the container would.  Only what needs a cluster is replaced:
Argo's ``{{...}}`` template values, the ``/tmp/mf-input-paths`` file (per pod here, since pods
share this machine's /tmp), the pod-identity variables Kubernetes fills in, and the Argo
output-parameter decorator (it writes to ``/mnt/out``, a volume of the pod).
``METAFLOW_KUBERNETES_WORKLOAD`` is left out: it makes Metaflow poll the EC2 metadata endpoint
for spot notices.  The netguard (tests/flows/netguard) refuses any other host than 127.0.0.1.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.task.deps import TASK_PACKAGES

from .flowrun import FLOWS, REPO, run_subprocess
from .test_deploy_json import NETGUARD, Deployer, argo_container, root_config

pytestmark = [pytest.mark.flow, pytest.mark.s3]

EXTENSION = REPO / "metaflow_extensions"
#: What a pod image has: exactly the launcher's Metaflow and boto3.
POD_PACKAGES = ["metaflow==%s" % version("metaflow"), "boto3==%s" % version("boto3")]
#: What `pip install metaflow-checkpointing` adds to it for a task (the same versions as here).
DEP_PACKAGES = ["%s==%s" % (module, version(module)) for module, _ in TASK_PACKAGES]


def _cached(name: str, build) -> Path:
    """A directory under the venv built once (across sessions and xdist workers) by ``build``."""
    base = Path(sys.prefix) / "pod-envs"
    base.mkdir(exist_ok=True)
    target = base / name
    with open(base / (name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".complete").exists():
            build(target)
            (target / ".complete").write_text("")
    return target


def _pip(python: str, *args: str) -> None:
    proc = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture
def deployer(s3_server, tmp_path) -> Deployer:
    return Deployer(tmp_path, s3_server)


@pytest.fixture(scope="session")
def pod_python() -> Path:
    """bin/ of a clean virtual environment with only Metaflow and boto3 (and their deps)."""

    def build(target: Path) -> None:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(target)], check=True)
        _pip(str(target / "bin" / "python"), *POD_PACKAGES)

    return _cached("venv-" + "-".join(POD_PACKAGES).replace("==", "-"), build) / "bin"


@pytest.fixture(scope="session")
def pod_deps(pod_python) -> Path:
    """A directory with metaflow-checkpointing's task dependencies, for the pod's PYTHONPATH
    (an image where they were installed)."""
    name = "deps-" + "-".join(DEP_PACKAGES).replace("==", "-")
    return _cached(
        name, lambda t: _pip(str(pod_python / "python"), "--target", str(t), *DEP_PACKAGES)
    )


def run_pod(deployer, workflow: dict, step: str, attempt: int, bin_dir: Path, extra_path=()):
    """Run ``step``'s container command of an Argo workflow as attempt ``attempt`` of a pod."""
    container = argo_container(workflow, step)
    pod = deployer.tmp / ("pod-%s-%d" % (step, attempt))
    pod.mkdir()
    values = {
        "{{workflow.name}}": "remoteflow-t1",
        "{{workflow.creationTimestamp}}": "2026-01-01T00:00:00Z",
        "{{retries}}": str(attempt),
        "/tmp/mf-input-paths": str(pod / "mf-input-paths"),
        " --with=argo_workflows_internal:auto-emit-argo-events=1": "",
    }
    command = container["command"][2]
    for key, value in values.items():
        assert key in command, key
        command = command.replace(key, value)
    assert "{{" not in command, re.findall(r"\{\{[^}]*\}\}", command)
    env = {}
    for item in container["env"]:
        value = item.get("value")
        value = "pod-value" if value is None else value  # set by Kubernetes from the pod
        for key, sub in values.items():
            value = value.replace(key, sub)
        env[item["name"]] = value
    del env["METAFLOW_KUBERNETES_WORKLOAD"]
    env.update(
        PATH=os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"]),
        HOME=str(pod),
        PYTHONPATH=os.pathsep.join([str(NETGUARD), *map(str, extra_path)]),
        NETGUARD_LOG=str(deployer.netlog),
        # The image has what Metaflow would pip-install (boto3); no registry from a pod here.
        METAFLOW_SKIP_INSTALL_DEPENDENCIES="1",
        # Credentials reach a pod from its service account; the S3 endpoint is in the JSON.
        **{k: v for k, v in deployer.s3["env"].items() if k.startswith("AWS_")},
    )
    proc = subprocess.run(
        ["bash", "-c", command], env=env, cwd=pod, capture_output=True, text=True, timeout=180
    )
    assert not deployer.netlog.exists(), deployer.netlog.read_text()
    return proc


def _manifests(deployer, prefix: str) -> list[str]:
    """Keys of the checkpoint manifests of RemoteFlow's tasks under ``prefix``."""
    listing = deployer.s3["client"].list_objects_v2(Bucket=deployer.bucket, Prefix=prefix)
    keys = [o["Key"] for o in listing.get("Contents", [])]
    return [k for k in keys if "/manifests/" in k and "/RemoteFlow/" in k]


def test_the_code_package_carries_the_extension_and_no_tests(deployer):
    workflow, _ = deployer.deploy("remote_flow.py", "argo-workflows")
    env = {e["name"]: e.get("value") for e in argo_container(workflow, "start")["env"]}
    package = deployer.package(env["METAFLOW_CODE_URL"])
    names = set(package.getnames())
    ours = {
        ".mf_code/" + p.relative_to(REPO).as_posix()
        for p in EXTENSION.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    # Every module: the decorator and task code, storage, client, CLI, the card, the toplevel.
    assert ours <= names, sorted(ours - names)
    for module in (
        "checkpointing/plugins/checkpointing/task/decorator.py",
        "checkpointing/plugins/cards/checkpoint_card/card.py",
        "checkpointing/toplevel/checkpointing_toplevel.py",
        "checkpointing/plugins/mfextinit_checkpointing.py",
    ):
        assert ".mf_code/metaflow_extensions/" + module in names
    extension = {n for n in names if n.startswith(".mf_code/metaflow_extensions/")}
    assert {n for n in extension if n.endswith(".py")} - ours == {
        ".mf_code/metaflow_extensions/__init__.py"  # Metaflow's own namespace marker
    }
    # Nothing of the repository's tests, only the user's flow directory.
    assert not [n for n in names if "tests/" in n or "conftest" in n]
    assert "remote_flow.py" in names


def test_a_pod_with_only_metaflow_and_boto3_names_what_checkpoint_needs(deployer, pod_python):
    workflow, _ = deployer.deploy("remote_flow.py", "argo-workflows", *root_config(deployer.bucket))
    proc = run_pod(deployer, workflow, "start", 0, pod_python)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    # Metaflow itself starts from the package (init ran, the task began); @checkpoint stops
    # before touching the store and says what to install.
    assert "Task is starting." in out
    assert "@checkpoint in step 'start' needs blake3>=1.0 and tenacity>=8.2" in out, out[-3000:]
    assert "No module named 'blake3'" in out and "pip install metaflow-checkpointing" in out
    assert "Cannot locate step_decorator plugin" not in out
    assert _manifests(deployer, "custom/") == []


#: Publishes a named model into a store and promotes it to a namespace (argv: root, dir, to).
PUBLISH = """
import os, sys
from metaflow import Checkpoint
src = os.path.join(sys.argv[2], "tiny.bin")
with open(src, "w") as f:
    f.write("tiny weights")
client = Checkpoint(root=sys.argv[1])
client.promote(client.save(src, name="tiny"), to=sys.argv[3])
"""


def test_a_pod_saves_on_s3_and_its_retry_loads_the_save(deployer, pod_python, pod_deps):
    # A named model reaches a deployed flow's (production) namespace by promotion.
    root = "s3://%s/custom" % deployer.bucket
    production = "production:__PLACEHOLDER_PRODUCTION_TOKEN__"  # the --only-json token
    proc = run_subprocess(
        ["-c", PUBLISH, root, deployer.tmp, production], deployer.env, deployer.tmp
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = root_config(deployer.bucket, models=["tiny"])
    workflow, _ = deployer.deploy("remote_flow.py", "argo-workflows", *config)
    first = run_pod(deployer, workflow, "start", 0, pod_python, [pod_deps])
    assert first.returncode != 0
    assert "crash after saving (attempt 0)" in first.stderr, first.stderr[-3000:]
    # Attempt 0 saved under the root from the flow's Config, not under the datastore.
    saved = _manifests(deployer, "custom/")
    assert len(saved) == 1, saved
    assert _manifests(deployer, "mf/mf.checkpointing/") == []

    # The retry is a new pod: nothing of attempt 0's directory, only the store.
    second = run_pod(deployer, workflow, "start", 1, pod_python, [pod_deps])
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    line = next(x for x in second.stdout.splitlines() if "REMOTE-LOADED" in x)
    root = "s3://%s/custom" % deployer.bucket
    assert line.split("REMOTE-LOADED ", 1)[1].startswith(
        "0 %s saved by attempt 0 of RemoteFlow/argo-remoteflow-t1/start/" % root
    ), line
    assert "[@checkpoint] Loaded checkpoint 'mfchckpt'" in second.stdout
    assert "REMOTE-MODEL %s tiny tiny weights" % production in second.stdout
    assert _manifests(deployer, "custom/") == saved


def test_task_packages_are_the_install_requires():
    """The requirements a task names are the ones setup.py installs."""
    setup = (REPO / "setup.py").read_text()
    requires = setup[setup.index("install_requires") : setup.index("extras_require")]
    for _, requirement in TASK_PACKAGES:
        assert '"%s"' % requirement in requires, requirement


@pytest.mark.parametrize("decorator", ["checkpoint", "model", "huggingface_hub"])
def test_every_decorator_names_a_broken_dependency_before_its_task_starts(decorator, flow_env):
    """A task whose Python cannot import blake3 (here a broken copy first on PYTHONPATH)
    fails in the decorator's first hook with the message, whichever decorator it is."""
    env, tmp = flow_env
    broken = tmp / "broken"
    broken.mkdir()
    (broken / "blake3.py").write_text('raise ImportError("blake3 is broken here (injected)")\n')
    env = dict(env, PYTHONPATH=str(broken))
    args = [FLOWS / "plain_flow.py", "--no-pylint", "--with", decorator, "run"]
    proc = run_subprocess(args, env, tmp)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "@%s in step 'start' needs blake3>=1.0 and tenacity>=8.2" % decorator in out, out[-3000:]
    assert "blake3>=1.0 (ImportError: blake3 is broken here (injected))" in out
    assert 'pip install "blake3>=1.0"' in out
