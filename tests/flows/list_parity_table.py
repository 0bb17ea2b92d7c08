"""One table of listing calls, made in a task (``current.checkpoint`` and ``Checkpoint()``), in
a process the task started and from a notebook: every way must give the same answer or error
(tests/integration/test_list_parity.py)."""

import json
import sys

from metaflow.exception import MetaflowException


#: Calls current.checkpoint.list takes too (its parameters: name, task, attempt, full_namespace).
def rows(start: str, bogus: str, other: str) -> dict:
    return {
        "latest": dict(task=start),
        "all": dict(task=start, attempt="all"),
        "attempt0": dict(task=start, attempt=0),
        "trailing_slash": dict(task=start + "/"),
        "leading_slash": dict(task="/" + start),
        "full": dict(task=start, full_namespace=True),
        "named_all": dict(task=start, name="e", attempt="all"),
        "bogus": dict(task=bogus),
        "other_namespace": dict(task=other),
        "other_namespace_all": dict(task=other, attempt="all"),
    }


#: Calls only Checkpoint().list takes: step=/run=/foreach= never dropped.
def client_rows(start: str) -> dict:
    return {
        "step_alone": dict(step="nonexistent"),
        "run_alone": dict(run="999"),
        "foreach_alone": dict(foreach="7"),
        "positional": dict(target=start),
    }


def _answer(fn):
    try:
        got = fn()
    except MetaflowException as exc:
        return [type(exc).__name__, exc.message]
    if isinstance(got, list):
        return [[r["attempt"], r["name"], r["pathspec"]] for r in got]
    return [got["attempt"], got["name"], got["metadata"].get("loss")]


def table(ckpt, start: str, bogus: str, other: str, client: bool = True) -> dict:
    """Each row's answer: references as [attempt, name, pathspec], errors as [type, message]."""
    out = {}
    calls = dict(rows(start, bogus, other))
    if client:
        calls.update(client_rows(start))
    for label, kwargs in calls.items():
        out[label] = _answer(lambda kw=kwargs: ckpt.list(**kw))
    if client:
        out["best"] = _answer(lambda: ckpt.best(task=start, metric="loss"))
        out["best_all"] = _answer(lambda: ckpt.best(task=start, metric="loss", attempt="all"))
    return out


if __name__ == "__main__":  # in a process a task started: Checkpoint() there
    from metaflow import Checkpoint

    print("TABLE" + json.dumps(table(Checkpoint(), *sys.argv[1:4])))
