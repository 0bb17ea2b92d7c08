"""The counter example on Metaflow's ``azure`` datastore (Azurite) and ``gs`` datastore
(gcp-storage-emulator): saves, ``@retry`` loads the last save, the client lists and loads it.

Metaflow's own clients authenticate with the cloud's default credentials
(``DefaultAzureCredential``, ``google.auth.default()``), not a key: each test stands up the
cloud's identity endpoint on 127.0.0.1 (Azure's managed identity endpoint, Google's metadata
server) and Azurite serves HTTPS with OAuth (Azure's SDK sends tokens over HTTPS only).  Our
extension finds the store from the run's datastore and the same settings.  Reads go through
subprocesses: the settings are environment variables the clients read when first imported.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest
from emulators import (
    AZURITE_KEY,
    new_azure_container,
    start_azure_identity,
    start_azurite,
    start_gce_metadata,
)

from .flowrun import EXAMPLES, run_flow, run_subprocess

pytestmark = [pytest.mark.flow]

CLIENT_SCRIPT = """
import json, os, sys
from metaflow import Checkpoint, Run, namespace
namespace(None)
refs = Checkpoint().list(sys.argv[1])
dest = Checkpoint().load(refs[0], os.path.join(sys.argv[2], "newest"))
with open(os.path.join(dest, "counter.txt")) as f:
    counter = f.read()
run = Run(sys.argv[1])
task = run["count_values"].task
print(json.dumps({
    "keys": [r.key for r in refs], "root": refs[0].root, "counter": counter,
    "artifact": run.data.counter, "final_key": task["final_checkpoint"].data.key,
    "ds_type": task.metadata_dict.get("ds-type"),
}))
"""


def _check_run(result, env, tmp, root: str, manifests: list) -> None:
    """What a user sees: the retry loaded attempt 0's last save, 20 saves are in the store and
    the client lists and loads them from the run alone."""
    loaded = result.checkpoint_log("count_values")[-1]
    assert loaded.startswith("[@checkpoint] Loaded checkpoint 'mfchckpt' ("), loaded
    assert "attempt 0" in loaded and "retry attempt 1" in loaded, loaded
    assert len(manifests) == 20, manifests

    proc = run_subprocess(["-c", CLIENT_SCRIPT, result.run.pathspec, tmp], env, tmp)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["root"] == root
    assert seen["counter"] == "18" and seen["artifact"] == 18
    assert len(seen["keys"]) == 20 and seen["keys"][0] == seen["final_key"]
    # ``manifests`` are "<bucket>/<object name>", as the root without its scheme.
    assert {"%s/%s" % (root.split("://", 1)[1], key) for key in seen["keys"]} == set(manifests)


@pytest.fixture(scope="module")
def azure_oauth(tmp_path_factory):
    """Azurite over HTTPS with OAuth, and a managed identity endpoint, for this module."""
    emulator = start_azurite(tmp_path_factory.mktemp("azurite-oauth"), oauth=True)
    identity = start_azure_identity()
    try:
        yield emulator, identity
    finally:
        emulator.stop()
        identity.stop()


def test_counter_example_on_the_azure_datastore(azure_oauth, flow_env):
    from azure.storage.blob import BlobServiceClient

    emulator, identity = azure_oauth
    env, tmp = flow_env
    container = new_azure_container(emulator, "flow")
    env = dict(
        env,
        METAFLOW_DATASTORE_SYSROOT_AZURE="%s/mf" % container,
        METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT=emulator.endpoint,
        REQUESTS_CA_BUNDLE=emulator.env["REQUESTS_CA_BUNDLE"],
        SSL_CERT_FILE=emulator.env["SSL_CERT_FILE"],
        **identity.env,
    )
    result = run_flow(EXAMPLES / "checkpoint_basic.py", env, tmp, datastore="azure")

    client = BlobServiceClient(
        emulator.endpoint,
        credential=AZURITE_KEY,
        connection_verify=emulator.env["REQUESTS_CA_BUNDLE"],
    )
    prefix = "mf/mf.checkpointing/manifests/"
    names = [
        "%s/%s" % (container, b.name)
        for b in client.get_container_client(container).list_blobs(name_starts_with=prefix)
    ]
    _check_run(result, env, tmp, "az://%s/mf/mf.checkpointing" % container, names)
    assert not (tmp / ".metaflow" / "mf.checkpointing").exists()


@pytest.fixture(scope="module")
def gce_metadata():
    server = start_gce_metadata()
    try:
        yield server
    finally:
        server.stop()


def _gcs_names(endpoint: str, bucket: str, prefix: str) -> list:
    query = urllib.parse.urlencode({"prefix": prefix})
    url = "%s/storage/v1/b/%s/o?%s" % (endpoint, bucket, query)
    with urllib.request.urlopen(url, timeout=10) as response:
        items = json.load(response).get("items", [])
    return ["%s/%s" % (bucket, item["name"]) for item in items]


def test_counter_example_on_the_gs_datastore(gcs_emulator, gce_metadata, flow_env):
    env, tmp = flow_env
    bucket = gcs_emulator["new_bucket"]()
    env = dict(
        env,
        METAFLOW_DATASTORE_SYSROOT_GS="gs://%s/mf" % bucket,
        **gcs_emulator["env"],
        **gce_metadata.env,
    )
    result = run_flow(EXAMPLES / "checkpoint_basic.py", env, tmp, datastore="gs")
    names = _gcs_names(gcs_emulator["endpoint"], bucket, "mf/mf.checkpointing/manifests/")
    _check_run(result, env, tmp, "gs://%s/mf/mf.checkpointing" % bucket, names)
    assert not (tmp / ".metaflow" / "mf.checkpointing").exists()
