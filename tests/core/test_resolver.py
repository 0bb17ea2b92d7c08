"""The resolver's rules that the flow table (tests/integration/test_resolver.py) does not reach:
a task's view of other flows in its namespace, ties, and the models' view (memory store)."""

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
from metaflow_extensions.checkpointing.plugins.checkpointing.errors import (
    CheckpointConfigError,
    CheckpointNotFound,
    CheckpointScopeError,
)
from metaflow_extensions.checkpointing.plugins.checkpointing.task.view import NamesView, TaskView

from .helpers import make_scope, write_tree

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


def test_a_task_knows_another_flow_by_its_checkpoints_in_its_namespace(store, saved):
    """``EvalFlow@last`` in a TrainFlow task: EvalFlow has checkpoints in the task's namespace,
    so it is a flow (before the named checkpoint of the same name); its load is then refused by
    the scope check unless namespace_check=False."""
    view = TaskView(store, ME, reader=ME.namespace)
    found = resolve("EvalFlow@last", view)
    assert label(found) == "eval-0"
    with pytest.raises(CheckpointScopeError, match="belongs to flow 'EvalFlow', not 'TrainFlow'"):
        check_scope(found[1], ME)
    # A flow with checkpoints only in another namespace is not one the task can see.
    with pytest.raises(CheckpointNotFound, match="No checkpoint named 'ShyFlow'"):
        resolve("ShyFlow@last", view)


def test_best_ties_go_to_the_newest(store, saved):
    view = TaskView(store, ME, reader=ME.namespace)
    assert label(resolve("best:acc", view)) == "me-1"
    assert label(resolve("TrainFlow/100@best:acc:max", view)) == "me-1"


def test_a_task_target_alias_lists_only_the_tasks_namespace(store, saved):
    view = TaskView(store, ME, reader=ME.namespace)
    with pytest.raises(CheckpointNotFound, match="ShyFlow/9/train/2 has no checkpoint"):
        resolve("ShyFlow/9/train/2@last", view)
    assert label(resolve("TrainFlow/100/train/7@last", view)) == "me-1"


def test_the_models_view_takes_names_only(store, saved):
    view = NamesView(store, ME.namespace)
    assert label(resolve("EvalFlow", view)) == "named"
    with pytest.raises(CheckpointConfigError, match="takes named checkpoints"):
        resolve("TrainFlow/100/train/7", view)
    with pytest.raises(CheckpointConfigError, match="there is no running task"):
        resolve("last", view)
