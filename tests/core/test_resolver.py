"""The resolver's rules that the flow table (tests/integration/test_resolver.py) does not reach:
what one word before '@' means for every view, ties, the messages, a task's own store however
it is spelled, and the models' view (memory and local stores)."""

from __future__ import annotations

import pytest

from metaflow_extensions.checkpointing.plugins.checkpointing.common.resolver import (
    check_scope,
    resolve,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.promotions import (
    publisher_record,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.core.scope import library_scope
from metaflow_extensions.checkpointing.plugins.checkpointing.core.store import CheckpointStore
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    CheckpointNotFound,
    CheckpointScopeError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.storage.local import LocalStorage
from metaflow_extensions.checkpointing.plugins.checkpointing.task.view import NamesView, TaskView

from .helpers import make_scope, options, write_tree

ME = make_scope(flow="TrainFlow", run="100", task="7")
OTHER_FLOW = make_scope(flow="EvalFlow", run="5", step="score", task="1")
OTHER_NS = make_scope(namespace="user:bob", flow="ShyFlow", run="9", task="2")


@pytest.fixture
def saved(store, tmp_path):
    """label -> manifest of checkpoints of three scopes and a named checkpoint."""
    out = {}
    for scope, label, acc in (
        (ME, "me-0", 0.5),
        (ME, "me-1", 0.5),  # a tie on acc: the newest wins
        (OTHER_FLOW, "eval-0", 0.9),
        (OTHER_NS, "bob-0", 0.1),
    ):
        src = write_tree(tmp_path / label, {"label.txt": label.encode()})
        out[label] = store.save(str(src), scope, metadata={"label": label, "acc": acc})
    src = write_tree(tmp_path / "named", {"w": b"x"})
    out["named"] = store.save(
        str(src),
        library_scope("EvalFlow"),  # a named checkpoint called like a flow
        name="EvalFlow",
        metadata={"label": "named"},
        publisher=publisher_record("alice", ME.namespace, "cli"),
    )
    return out


def label(result) -> str:
    return result[1].metadata["label"]


def views(store) -> dict:
    """Every view a task-side caller resolves with: tasks of three flows and namespaces (one
    of them EvalFlow's own task), with and without the namespace check, and the models'."""
    return {
        "TrainFlow task": TaskView(store, ME, reader=ME.namespace),
        "EvalFlow task": TaskView(store, OTHER_FLOW, reader=OTHER_FLOW.namespace),
        "bob's task": TaskView(store, OTHER_NS, reader=OTHER_NS.namespace),
        "no namespace check": TaskView(store, ME, other_stores=True, reader=None),
        "models": NamesView(store, ME.namespace),
    }


@pytest.mark.parametrize(
    "spelling",
    ["EvalFlow@last", "EvalFlow@latest", "EvalFlow", "EvalFlow@best:w:max"],
)
def test_one_word_before_the_at_is_the_named_checkpoint_for_every_caller(store, saved, spelling):
    """The store holds a checkpoint named 'EvalFlow' and a flow EvalFlow has checkpoints:
    the named one wins whoever asks (was: the flow for a TrainFlow task, which sees EvalFlow's
    checkpoints in its namespace, and for EvalFlow's own task; the named one for bob's task and
    the models' view)."""
    got = {}
    for who, view in views(store).items():
        try:
            got[who] = label(resolve(spelling, view))
        except (CheckpointNotFound, CheckpointScopeError) as exc:
            # What a caller that sees the flow EvalFlow is told beyond (how to reach it) is
            # tested in test_a_named_checkpoint_that_shadows_a_flow_says_how_to_reach_the_flow.
            got[who] = exc.message.split(" %r names the checkpoint" % spelling)[0]
    want = "named"
    if spelling.endswith("best:w:max"):
        want = (
            "No version of the named checkpoint 'EvalFlow' has a numeric metadata field 'w' "
            "(fields seen: label)."
        )
    wants = {who: want for who in got}
    # Bob's namespace does not trust alice's version: refused as the named checkpoint it is.
    assert got.pop("bob's task").startswith(
        "No version of 'EvalFlow' was published from namespace user:bob"
    )
    del wants["bob's task"]
    assert got == wants


def test_a_trailing_slash_makes_the_word_a_flow(store, saved):
    """``EvalFlow/@last``: the flow, named checkpoint or not; a task's load of it is then
    refused by the scope check unless namespace_check=False."""
    found = resolve("EvalFlow/@last", TaskView(store, ME, reader=ME.namespace))
    assert label(found) == "eval-0"
    with pytest.raises(CheckpointScopeError, match="belongs to flow 'EvalFlow', not 'TrainFlow'"):
        check_scope(found[1], ME)
    assert label(resolve("EvalFlow/@best:acc:max", views(store)["EvalFlow task"])) == "eval-0"
    with pytest.raises(CheckpointConfigError, match="takes named checkpoints"):
        resolve("EvalFlow/@last", views(store)["models"])


def test_a_word_no_checkpoint_is_named_after_is_the_flow(store, saved):
    """No checkpoint named 'TrainFlow': ``TrainFlow@...`` is the flow's checkpoints."""
    view = TaskView(store, ME, reader=ME.namespace)
    assert label(resolve("TrainFlow@last", view)) == "me-1"
    assert label(resolve("TrainFlow@best:acc:max", view)) == "me-1"
    # The models' view takes names only: the flow's checkpoints are not for it.
    with pytest.raises(CheckpointConfigError, match="takes named checkpoints"):
        resolve("TrainFlow@last", views(store)["models"])


def test_a_word_that_is_neither_says_both(store, saved):
    """ShyFlow has checkpoints only in another namespace: neither a named checkpoint nor a flow
    the task sees; the message says both, in the user's case."""
    view = TaskView(store, ME, reader=ME.namespace)
    with pytest.raises(CheckpointNotFound) as err:
        resolve("ShyFlow@last", view)
    assert err.value.message == (
        "'ShyFlow@last' picks among the versions of a named checkpoint 'ShyFlow', else the "
        "checkpoints of a flow ShyFlow: there is no checkpoint named 'ShyFlow' in %s, and no "
        "checkpoint in flow ShyFlow." % store.url
    )


#: (spelling, message): what is missing, named as the user spelled it (was: the first letter
#: capitalised, "Resnet50/9 has no checkpoint.", and "No checkpoint of checkpoint 'x' ...").
MESSAGES = [
    ("resnet50/@last", "No checkpoint in flow resnet50."),
    ("resnet50/9@last", "No checkpoint in run resnet50/9."),
    ("resnet50/9/train@last", "No checkpoint in step resnet50/9/train."),
    ("resnet50/9/train/1@last", "No checkpoint in task resnet50/9/train/1."),
    (
        "resnet50/@best:acc",
        "No checkpoint in flow resnet50 has a numeric metadata field 'acc' (fields seen: none).",
    ),
    (
        "best:nope",
        "No checkpoint in task TrainFlow/100/train/7 has a numeric metadata field 'nope' "
        "(fields seen: acc, label).",
    ),
    (
        "EvalFlow@best:acc",
        "No version of the named checkpoint 'EvalFlow' has a numeric metadata field 'acc' "
        "(fields seen: label). 'EvalFlow@best:acc' names the checkpoint called EvalFlow, which "
        "shadows the flow EvalFlow; that flow has checkpoints too: 'EvalFlow/@best:acc' picks "
        "among them.",
    ),
]


@pytest.mark.parametrize("spelling,message", MESSAGES, ids=[s for s, _ in MESSAGES])
def test_what_is_missing_is_named_as_spelled(store, saved, spelling, message):
    with pytest.raises(CheckpointNotFound) as err:
        resolve(spelling, TaskView(store, ME, reader=ME.namespace))
    assert err.value.message == message


def test_best_ties_go_to_the_newest(store, saved):
    view = TaskView(store, ME, reader=ME.namespace)
    assert label(resolve("best:acc", view)) == "me-1"
    assert label(resolve("TrainFlow/100@best:acc:max", view)) == "me-1"


def test_a_task_target_alias_lists_only_the_tasks_namespace(store, saved):
    """Another namespace's task is not picked from: the error says whose it is (issue 15 item
    8; was "No checkpoint in task ...")."""
    view = TaskView(store, ME, reader=ME.namespace)
    with pytest.raises(CheckpointScopeError, match="task ShyFlow/9/train/2 belong to namespace"):
        resolve("ShyFlow/9/train/2@last", view)
    assert label(resolve("TrainFlow/100/train/7@last", view)) == "me-1"


def test_the_models_view_takes_names_only(store, saved):
    view = NamesView(store, ME.namespace)
    assert label(resolve("EvalFlow", view)) == "named"
    with pytest.raises(CheckpointConfigError, match="takes named checkpoints"):
        resolve("TrainFlow/100/train/7", view)
    with pytest.raises(CheckpointConfigError, match="there is no running task"):
        resolve("last", view)


# ------------------------------------------------------------------------------ own store
#: Spellings of the task's own local store (root: its path, key: a manifest key in it), each
#: with a cwd of ``<tmp>/sub`` (was: refused as "another store" by a task, loaded outside).
OWN_STORE = [
    ("dict, trailing slash", lambda root, key: {"key": key, "root": root + "/"}),
    ("dict, file://", lambda root, key: {"key": key, "root": "file://" + root}),
    ("dict, relative", lambda root, key: {"key": key, "root": "../store"}),
    ("dict, ..", lambda root, key: {"key": key, "root": root + "/../store"}),
    ("url, file://", lambda root, key: "file://%s/%s" % (root, key)),
    ("url, //", lambda root, key: "%s//%s" % (root, key)),
    ("url, /./", lambda root, key: "%s/./%s" % (root, key)),
    ("url, ..", lambda root, key: "%s/../store/%s" % (root, key)),
    ("url, relative", lambda root, key: "../store/%s" % key),
    ("url, through a symlink", lambda root, key: "%s/../link/%s" % (root, key)),
    ("url, exact", lambda root, key: "%s/%s" % (root, key)),
]


@pytest.fixture
def own(tmp_path, monkeypatch):
    """A local store at ``<tmp>/store`` (also reachable as ``<tmp>/link``) with one
    checkpoint of the task ME; the cwd is ``<tmp>/sub``."""
    local = CheckpointStore(LocalStorage(str(tmp_path / "store")), options())
    m = local.save(
        str(write_tree(tmp_path / "src", {"label.txt": b"mine"})), ME, metadata={"label": "mine"}
    )
    (tmp_path / "link").symlink_to(tmp_path / "store")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    return local, m


@pytest.mark.parametrize("spell", [s for _, s in OWN_STORE], ids=[i for i, _ in OWN_STORE])
def test_a_task_takes_its_own_store_however_it_is_spelled(own, spell):
    local, m = own
    reference = spell(local.url, m.key)
    for view in (TaskView(local, ME, reader=ME.namespace), NamesView(local, ME.namespace)):
        store, manifest = resolve(reference, view)
        assert store is local and manifest.key == m.key


def test_a_task_still_refuses_another_store(own, tmp_path):
    local, m = own
    for root in (str(tmp_path / "other"), str(tmp_path / "store" / "sub"), "memory://store"):
        with pytest.raises(CheckpointScopeError, match="pass namespace_check=False"):
            resolve({"key": m.key, "root": root}, TaskView(local, ME, reader=ME.namespace))


def test_the_short_id_of_a_reference_resolves_back_to_it(store, saved):
    """``ref.short_id`` (the id shown by repr, listings and the CLI's ID column) is the version's
    first SHORT_ID_LENGTH hex digits, and ``name@<short_id>`` loads that version back."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.reference import (
        SHORT_ID_LENGTH,
        reference_of,
    )

    ref = reference_of(store, saved["named"])
    assert SHORT_ID_LENGTH == 8
    assert ref.short_id == ref.version[:8] and len(ref.short_id) == 8
    view = views(store)["models"]
    assert label(resolve("EvalFlow@%s" % ref.short_id, view)) == "named"


# ------------------------------------------------------------------------------ short names
def own_view(store) -> TaskView:
    return TaskView(store, ME, reader=ME.namespace)


def test_a_task_checkpoint_by_its_id_prefix(store, saved):
    """``TASK@<id prefix>``: that checkpoint of the task, not its newest (was: a config error,
    '@' after a pathspec took an alias only); the full id and upper case work too."""
    first = saved["me-0"]
    for version in (first.id[:4], first.id[:8], first.id, first.id[:8].upper()):
        assert label(resolve("%s@%s" % (ME.pathspec, version), own_view(store))) == "me-0"
    assert label(resolve(ME.pathspec, own_view(store))) == "me-1"


def test_an_id_prefix_of_no_or_several_checkpoints_lists_the_tasks_ids(store, tmp_path):
    """No match lists the task's ids and dates; a prefix shared by several lists those (with
    17 checkpoints, two share their first hex digit)."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.refspec import (
        RefSpec,
        Target,
    )

    ids = []
    for i in range(17):
        src = write_tree(tmp_path / str(i), {"i": str(i).encode()})
        ids.append(store.save(str(src), ME, metadata={"i": i}).id)
    task = Target(*ME.pathspec.split("/"))
    digit = next(d for d in "0123456789abcdef" if sum(i.startswith(d) for i in ids) > 1)
    with pytest.raises(CheckpointNotFound) as err:
        resolve(RefSpec("task", target=task, version=digit), own_view(store))
    shared = [i for i in ids if i.startswith(digit)]
    assert "is the start of the ids of %d checkpoints of task" % len(shared) in err.value.message
    assert all(i in err.value.message for i in shared) and "Give more" in err.value.message
    assert "%s (20" % shared[0] in err.value.message  # "<id> (<created_on>)"
    missing = next(
        p for p in ("%04x" % n for n in range(65536)) if not any(i.startswith(p) for i in ids)
    )
    with pytest.raises(CheckpointNotFound) as err:
        resolve("%s@%s" % (ME.pathspec, missing), own_view(store))
    assert "has no checkpoint whose id starts with %r" % missing in err.value.message
    assert all(i in err.value.message for i in ids)


MATCHES = [
    # (spelling, label): the newest checkpoint whose metadata match
    (ME.pathspec + "@label=me-0", "me-0"),
    (ME.pathspec + "@acc=0.5", "me-1"),  # both have it: the newest
    (ME.pathspec + '@acc=0.5,label="me-0"', "me-0"),
    ("label=me-0", "me-0"),  # alone: the task's own
    ("TrainFlow/100@label=me-0", "me-0"),
    ("EvalFlow/@acc=0.9", "eval-0"),
]


@pytest.mark.parametrize("spelling,expected", MATCHES, ids=[s for s, _ in MATCHES])
def test_a_metadata_match_is_the_newest_matching_checkpoint(store, saved, spelling, expected):
    assert label(resolve(spelling, own_view(store))) == expected


def test_what_is_shown_can_be_typed_back(store, tmp_path):
    """A float saved with noise (0.1 + 0.2) matches the value tables show (0.3); the values an
    error lists are spelt as a match is (JSON: true, "3"), not in Python's syntax."""
    src = write_tree(tmp_path / "f", {"w": b"x"})
    store.save(str(src), ME, metadata={"label": "noisy", "loss": 0.1 + 0.2, "flag": True, "s": "3"})
    view = own_view(store)
    assert label(resolve(ME.pathspec + "@loss=0.3", view)) == "noisy"
    assert label(resolve(ME.pathspec + "@loss=0.30000000000000004", view)) == "noisy"
    with pytest.raises(CheckpointNotFound) as err:
        resolve(ME.pathspec + "@loss=0.31", view)
    assert "values seen: loss: 0.30000000000000004;" in err.value.message
    with pytest.raises(CheckpointNotFound) as err:
        resolve(ME.pathspec + "@flag=false,s=3", view)
    assert 'values seen: flag: true; s: "3";' in err.value.message
    with pytest.raises(CheckpointNotFound):
        resolve(ME.pathspec + "@flag=1", view)  # true is still not 1


def test_no_metadata_match_names_the_values_seen(store, saved):
    with pytest.raises(CheckpointNotFound) as err:
        resolve(ME.pathspec + "@acc=0.7,epoch=3", own_view(store))
    assert err.value.message == (
        "No checkpoint in task TrainFlow/100/train/7 has metadata acc=0.7,epoch=3 (values seen: "
        "acc: 0.5; epoch: in no checkpoint; fields seen: acc, label)."
    )
    with pytest.raises(CheckpointNotFound, match="values seen: acc: 0.5; fields seen"):
        resolve(ME.pathspec + "@acc=true", own_view(store))  # true is not 1 (nor 0.5)


MISSPELT = [
    # (spelling, message): a step or task the run has no checkpoint of says which it has
    (
        "TrainFlow/100/trian/7",
        "Task TrainFlow/100/trian/7 has no checkpoint: there is no step 'trian' with "
        "checkpoints in run TrainFlow/100 (its steps with checkpoints: train).",
    ),
    (
        "TrainFlow/100/trian@last",
        "No checkpoint in step TrainFlow/100/trian: there is no step 'trian' with checkpoints "
        "in run TrainFlow/100 (its steps with checkpoints: train).",
    ),
    (
        "TrainFlow/100/train/8@best:acc",
        "No checkpoint in task TrainFlow/100/train/8: step TrainFlow/100/train has checkpoints "
        "in tasks 7 only.",
    ),
    (
        "TrainFlow/100/train/8@" + "0" * 8,
        "Task TrainFlow/100/train/8 has no checkpoint: step TrainFlow/100/train has checkpoints "
        "in tasks 7 only.",
    ),
]


@pytest.mark.parametrize("spelling,message", MISSPELT, ids=[s for s, _ in MISSPELT])
def test_a_misspelt_step_or_task_lists_what_the_run_has(store, saved, spelling, message):
    with pytest.raises(CheckpointNotFound) as err:
        resolve(spelling, own_view(store))
    assert err.value.message == message


def test_repr_shows_a_spelling_that_loads_it_back(store, saved, tmp_path):
    """``repr(ref)``: ``<pathspec>@<short id> attempt=N {metadata}`` (exact values: was
    rounded to 4 significant digits, which a match then missed), ``<name>@<short id>
    {metadata}`` for a named one; the spelling and each value shown resolve back."""
    from metaflow_extensions.checkpointing.plugins.checkpointing.common.reference import (
        reference_of,
    )

    src = write_tree(tmp_path / "m", {"w": b"m"})
    metadata = {"epoch": 3, "loss": 0.123456789, "lr": [1e-05, 123456.7], "ok": True}
    ref = reference_of(store, store.save(str(src), ME, metadata=metadata))
    assert repr(ref) == (
        "CheckpointReference(TrainFlow/100/train/7@%s attempt=0 {'epoch': 3, 'loss': "
        "0.123456789, 'lr': [1e-05, 123456.7], 'ok': True})" % ref.version[:8]
    )
    typed = resolve("%s@loss=0.123456789" % ME.pathspec, own_view(store))[1]
    assert typed.key == ref.key
    named = reference_of(store, saved["named"])
    assert repr(named) == "CheckpointReference(EvalFlow@%s {'label': 'named'})" % named.short_id
    for r in (ref, named):
        spelling = repr(r)[len("CheckpointReference(") :].split(" ")[0]
        assert resolve(spelling, own_view(store))[1].key == r.key


def test_a_task_of_another_namespace_loads_only_without_the_namespace_check(store, saved):
    """``load("Flow/run/step/task", namespace_check=False)`` finds a task of another namespace
    as loading by key does (was: "has no checkpoint", the flag ignored); with the check the
    error says whose it is and how to load it anyway."""
    bob = OTHER_NS.pathspec
    assert label(resolve(bob, views(store)["no namespace check"])) == "bob-0"
    assert label(resolve(bob + "@label=bob-0", views(store)["no namespace check"])) == "bob-0"
    with pytest.raises(CheckpointScopeError) as err:
        resolve(bob, own_view(store))
    assert err.value.message == (
        "The checkpoints of task ShyFlow/9/train/2 belong to namespace 'user:bob' but this "
        "task runs in 'user:alice'; pass namespace_check=False to load them anyway."
    )


@pytest.mark.parametrize("spelling", ["TrainFlow", "TrainFlow@latest", "TrainFlow@1a2b3c4d"])
def test_a_flow_spelt_as_a_name_says_how_to_spell_its_checkpoints(store, saved, spelling):
    """No checkpoint is named 'TrainFlow', a flow TrainFlow has checkpoints: the error says so
    and how to spell them (was: only "No checkpoint named 'TrainFlow'", a missing model)."""
    with pytest.raises(CheckpointNotFound) as err:
        resolve(spelling, own_view(store))
    message = err.value.message
    assert message.startswith("No checkpoint named 'TrainFlow' in %s" % store.url)
    assert message.endswith(
        " TrainFlow is a flow with checkpoints: say which, e.g. 'TrainFlow@last', "
        "'TrainFlow@best:<metric>', 'TrainFlow@<field>=<value>' or "
        "'TrainFlow/<run_id>/<step>/<task_id>@<id>' ('latest' and a bare name are for named "
        "checkpoints)."
    )
    with pytest.raises(CheckpointNotFound) as err:
        resolve("nosuch", own_view(store))
    assert "is a flow" not in err.value.message


@pytest.mark.parametrize(
    "spelling,fragment",
    [
        ("lastt", "'lastt' is no alias either (did you mean 'last'?)"),
        ("bset:loss", "unknown alias 'bset:loss' (did you mean 'best:loss'?)"),
    ],
)
def test_a_bare_alias_misspelt_says_did_you_mean_in_a_task(store, saved, spelling, fragment):
    """``load("lastt")`` and ``load("bset:loss")`` get the did-you-mean ``Flow@lastt`` gets
    (was: "no checkpoint named 'lastt'", "name is invalid")."""
    with pytest.raises((CheckpointNotFound, CheckpointConfigError)) as err:
        resolve(spelling, own_view(store))
    assert fragment in err.value.message


def test_a_named_checkpoint_that_shadows_a_flow_says_how_to_reach_the_flow(store, saved):
    """``EvalFlow@acc=0.9`` means the named checkpoint 'EvalFlow' (the documented rule); none
    of its versions matches, and the flow EvalFlow has a checkpoint that does: the error says
    so and gives ``EvalFlow/@acc=0.9`` (was: only the named one's values), which resolves."""
    with pytest.raises(CheckpointNotFound) as err:
        resolve("EvalFlow@acc=0.9", own_view(store))
    assert "which shadows the flow EvalFlow" in err.value.message
    assert "'EvalFlow/@acc=0.9' picks among them" in err.value.message
    assert label(resolve("EvalFlow/@acc=0.9", own_view(store))) == "eval-0"
