"""Named checkpoints cannot be taken over by accident: the client, the CLI and real flow runs.

Users are real Metaflow identities (``METAFLOW_USER``, ``METAFLOW_PRODUCTION_TOKEN``) of
separate processes, as when a colleague uploads a model or a production run starts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .flowrun import FLOWS, PROBE_PRELUDE, run_flow, run_subprocess, subprocess_env

pytestmark = pytest.mark.flow

METAFLOW = Path(sys.executable).parent / "metaflow"
TOKEN = "TrustedModelsFlow-0-prod"
PROD = "production:" + TOKEN


def as_user(env: dict, user: str) -> dict:
    return dict(env, USER=user, METAFLOW_USER=user)


def cli(env: dict, cwd: Path, *args, expect: int = 0) -> subprocess.CompletedProcess:
    """``metaflow checkpoint ARGS``; stdout without the version banner."""
    proc = subprocess.run(
        [str(METAFLOW), "checkpoint", *map(str, args)],
        env=subprocess_env(env),
        cwd=str(cwd),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.stdout.startswith("Metaflow ("):
        proc.stdout = proc.stdout.split("\n", 1)[1].lstrip("\n")
    assert proc.returncode == expect, "%s\n%s\n%s" % (args, proc.stdout, proc.stderr)
    return proc


def upload(env: dict, tmp: Path, content: bytes, user: str = "tester") -> str:
    """``metaflow checkpoint upload`` of a model directory as ``user``; returns the version."""
    src = tmp / ("model-%s-%d" % (user, len(content)))
    src.mkdir()
    (src / "model.pt").write_bytes(content)
    out = cli(as_user(env, user), tmp, "upload", src, "--name", "resnet50").stdout
    return re.search(r"version ([0-9a-f]{16})", out).group(1)


def fields(stdout: str) -> dict:
    head = stdout.split("\n\n", 1)[0]
    return dict(re.match(r"(\S+):\s+(.*)$", line).groups() for line in head.splitlines())


def one_error(proc: subprocess.CompletedProcess) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# ------------------------------------------------------------------------------ client

CLIENT = PROBE_PRELUDE + textwrap.dedent(
    """
    c = Checkpoint()
    role, model = sys.argv[1], sys.argv[2]
    if role == "alice":
        ref = c.save(model, name="resnet50", metadata={"top1": 0.7})
        out["published"] = [ref.version, ref.publisher]
    else:
        alices = sys.argv[3]
        version = lambda ref: ref.version
        attempt("mine", lambda: version(c.get("resnet50")))
        attempt("mine_last", lambda: version(c.get("resnet50@last")))
        attempt("mine_best", lambda: version(c.get("resnet50@best:top1:max")))
        attempt("pinned", lambda: version(c.get("resnet50@" + alices[:8])))
        namespace(None)
        attempt("any", lambda: version(c.get("resnet50")))
        namespace("user:alice")
        attempt("as_alice", lambda: version(c.get("resnet50")))
        namespace("user:bob")
        ref = c.save(model, name="resnet50", metadata={"top1": 0.9})  # bob's own, newer
        out["bobs"] = [ref.version, ref.publisher]
        attempt("bob_now", lambda: version(c.get("resnet50")))
        attempt("bob_best", lambda: version(c.get("resnet50@best:top1")))
        namespace("user:alice")
        attempt("alice_still", lambda: version(c.get("resnet50")))
        attempt("bare_promote", lambda: c.promote("resnet50", to="user:alice"))
        attempt("promoted", lambda: version(c.promote(ref, to="user:alice")))
        attempt("alice_after", lambda: version(c.get("resnet50")))
        attempt("unpromoted", lambda: version(c.unpromote(ref.key, to="user:alice")))
        attempt("alice_back", lambda: version(c.get("resnet50")))
        attempt("listed", lambda: [[r.version, r.publisher["namespace"]] for r in c.list()])
        prune = lambda: c.prune(name="resnet50", keep_last=1, dry_run=True)
        attempt("pruned", lambda: [[p["group"], len(p["deleted"])] for p in prune()])
    print("PROBE" + json.dumps(out))
    """
)


def _client(env, tmp, user, *args):
    script = tmp / "trust_probe.py"
    script.write_text(CLIENT)
    proc = run_subprocess([script, user, *args], as_user(env, user), tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PROBE"))
    return json.loads(line[len("PROBE") :])


def test_client_resolves_names_among_its_namespaces_versions(flow_env):
    env, tmp = flow_env
    (tmp / "home").mkdir(exist_ok=True)
    model = tmp / "model.pt"
    model.write_bytes(b"alice's weights")
    alices, publisher = _client(env, tmp, "alice", model)["published"]
    assert publisher == {"user": "alice", "namespace": "user:alice", "origin": "client"}

    model.write_bytes(b"bob's weights")
    out = _client(env, tmp, "bob", model, alices)
    # Bob's namespace (the client's default) has no version of his own: refused, naming the fix.
    for label in ("mine", "mine_last", "mine_best"):
        assert out[label]["error"] == "CheckpointScopeError", out[label]
        assert (
            "No version of 'resnet50' was published from namespace user:bob"
            in (out[label]["message"])
        )
        assert "promote resnet50@%s --to user:bob" % alices in out[label]["message"]
    assert out["pinned"] == alices  # an explicit pin works whoever published it
    assert out["any"] == alices  # namespace(None): any publisher
    assert out["as_alice"] == alices
    bobs, bob = out["bobs"]
    assert bob == {"user": "bob", "namespace": "user:bob", "origin": "client"}
    assert out["bob_now"] == bobs and out["bob_best"] == bobs
    # Bob's newer upload does not reach alice's namespace ...
    assert out["alice_still"] == alices
    # ... unless promoted there (a bare name is refused: which version would it be?).
    assert out["bare_promote"]["error"] == "CheckpointConfigError"
    assert "needs one exact version" in out["bare_promote"]["message"]
    assert out["promoted"] == bobs and out["alice_after"] == bobs
    assert out["unpromoted"] == bobs and out["alice_back"] == alices
    assert out["listed"] == [[bobs, "user:bob"], [alices, "user:alice"]]
    # Retention groups versions per publisher: bob's upload does not push out alice's version.
    assert out["pruned"] == [["named:resnet50[user:alice]", 0], ["named:resnet50[user:bob]", 0]]


# ------------------------------------------------------------------------------ CLI


def test_cli_promote_show_and_unpromote(flow_env):
    env, tmp = flow_env
    version = upload(env, tmp, b"weights v1")

    listed = cli(env, tmp, "list").stdout.splitlines()
    assert re.split(r"\s{2,}", listed[0])[:4] == ["CHECKPOINT", "ID", "NAME", "PUBLISHER"]
    row = ["resnet50@" + version, version[:8], "resnet50", "user:tester"]
    assert re.split(r"\s{2,}", listed[1])[:4] == row

    shown = fields(cli(env, tmp, "show", "resnet50").stdout)
    assert shown["publisher"] == "user:tester via cli"
    assert shown["trusted"] == "user:tester (publisher)"

    refused = cli(env, tmp, "show", "resnet50", "--namespace", PROD, expect=1)
    error = one_error(refused)
    assert "No version of 'resnet50' was published from namespace %s" % PROD in error
    assert "metaflow checkpoint promote resnet50@%s --to %s" % (version, PROD) in error

    bare = one_error(cli(env, tmp, "promote", "resnet50", "--to", PROD, expect=1))
    assert "promote needs one exact version, not the name 'resnet50'" in bare
    typo = one_error(
        cli(env, tmp, "promote", "resnet50@" + version, "--to", "production", expect=1)
    )
    assert "'production' is not a Metaflow namespace" in typo

    promoted = cli(env, tmp, "promote", "resnet50@" + version[:6], "--to", PROD).stdout
    assert promoted.splitlines() == [
        "Promoted resnet50@%s (published by user:tester via cli) to %s; pinned."
        % (version[:8], PROD),
        "'resnet50' now resolves to resnet50@%s in %s." % (version[:8], PROD),
    ]
    story = cli(env, tmp, "show", "resnet50", "--namespace", PROD).stdout
    assert fields(story)["trusted"] == "user:tester (publisher), %s (promoted)" % PROD
    log = story.split("\n\n")[1].splitlines()
    assert re.split(r"\s{2,}", log[0]) == ["PROMOTED (UTC)", "ACTION", "NAMESPACE", "BY"]
    assert re.split(r"\s{2,}", log[1])[1:] == ["promote", PROD, "user:tester"]
    as_json = json.loads(cli(env, tmp, "show", "resnet50@" + version, "--json").stdout)
    assert as_json["promoted_to"] == [PROD]
    assert as_json["publisher"] == {"user": "tester", "namespace": "user:tester", "origin": "cli"}
    assert [e["action"] for e in as_json["promotions"]] == ["promote"]
    # Promoting pinned it: what production uses is not deleted by accident.
    assert "is pinned" in one_error(cli(env, tmp, "delete", "resnet50", "--yes", expect=1))

    withdrawn = cli(env, tmp, "unpromote", "resnet50@" + version, "--to", PROD).stdout
    assert withdrawn.splitlines()[-1] == "'resnet50' now resolves to no version in %s." % PROD
    again = cli(env, tmp, "show", "resnet50@" + version).stdout
    assert fields(again)["trusted"] == "user:tester (publisher)"
    assert [re.split(r"\s{2,}", x)[1] for x in again.split("\n\n")[1].splitlines()[1:]] == [
        "promote",
        "unpromote",
    ]
    assert "is not promoted to" in one_error(
        cli(env, tmp, "unpromote", "resnet50@" + version, "--to", PROD, expect=1)
    )


# ------------------------------------------------------------------------------ flows


def test_a_production_run_refuses_a_model_only_a_user_published(flow_env):
    env, tmp = flow_env
    version = upload(env, tmp, b"tester's weights")
    flow = FLOWS / "trusted_models_flow.py"
    production = dict(env, METAFLOW_PRODUCTION_TOKEN=TOKEN)

    # Unpinned, only published from user:tester: refused by the launcher, before any task.
    proc = run_subprocess([flow, "--no-pylint", "run"], production, tmp)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Step 'train' needs model 'resnet50'" in out
    assert "pin it: 'resnet50@%s'" % version in out
    assert "metaflow checkpoint promote resnet50@%s --to %s" % (version, PROD) in out
    assert "Task is starting" not in out and "Traceback" not in out

    # Another user's run is refused the same way: nobody's model reaches it by accident.
    bobs = run_subprocess([flow, "--no-pylint", "run"], as_user(env, "bob"), tmp)
    assert bobs.returncode != 0
    assert "published from namespace user:bob" in bobs.stdout + bobs.stderr

    # A pin is explicit trust.
    pinned = run_flow(flow, dict(production, MODEL_SPEC="resnet50@" + version), tmp)
    train = pinned.run["train"].task.data
    assert (train.weights, train.namespace) == (b"tester's weights", PROD)

    # Promoted: production uses it, and a newer upload by someone else does not take over.
    cli(env, tmp, "promote", "resnet50@" + version, "--to", PROD)
    newer = upload(env, tmp, b"bob's experiment", user="bob")
    promoted = run_flow(flow, production, tmp)
    assert promoted.run["train"].task.data.weights == b"tester's weights"
    assert (
        "[@checkpoint] Model 'resnet50': using version %s (promoted in %s); 1 newer version(s) "
        "from other namespaces are not used, the newest resnet50@%s by user:bob via cli"
        % (version, PROD, newer)
    ) in promoted.stdout
