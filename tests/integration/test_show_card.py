"""``@checkpoint(show_card=...)`` and the attributes flows written for the reference extension
(``metaflow-checkpoint``) use: real runs, cards read back with ``get_cards`` as a user would, and
bad input refused before any task starts (issue 14, item 1)."""

from __future__ import annotations

import textwrap

import metaflow
import pytest

from .flowrun import FLOWS, run_flow, run_subprocess

pytestmark = pytest.mark.flow


def _cards(task) -> list[tuple[str, str]]:
    """(type, id) of every card of ``task``; [] when it has none."""
    from metaflow.cards import get_cards
    from metaflow.plugins.cards.exception import CardNotPresentException

    try:
        return [(card.type, card.id) for card in get_cards(task)]
    except CardNotPresentException:
        return []


def _refused_before_any_task(proc, tmp, flow: str) -> str:
    """The run failed at its start: no task ran, nothing was written for the flow."""
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Task is starting" not in output, output
    assert "Traceback" not in output, output  # a named one-line error
    assert not (tmp / ".metaflow" / flow).exists()
    assert not (tmp / ".metaflow" / "mf.checkpointing").exists()
    return output


def test_show_card_true_attaches_one_checkpoint_card_and_false_or_default_none(flow_env):
    env, tmp = flow_env
    run = run_flow(FLOWS / "show_card_flow.py", env, tmp).run

    # True: exactly one card, of our type, with the id users reach it by.
    assert _cards(run["start"].task) == [("checkpoint", "checkpoint")]
    from metaflow.cards import get_cards

    html = get_cards(run["start"].task, id="checkpoint")[0].get()
    assert run["start"].task.pathspec in html and "loss" in html  # it shows the task's save
    # False, and the default (no per-task card unless asked): none.
    assert _cards(run["off"].task) == []
    assert _cards(run["default"].task) == []
    # True beside the user's own @card(type="checkpoint"): still one card (the user's).
    assert _cards(run["explicit"].task) == [("checkpoint", None)]


def test_show_card_from_the_command_line(flow_env):
    """``--with checkpoint:show_card=true`` (a string on the command line) attaches the card to
    every step it decorates."""
    env, tmp = flow_env
    run = run_flow(
        FLOWS / "show_card_plain_flow.py", env, tmp, decospecs=["checkpoint:show_card=true"]
    ).run
    assert _cards(run["start"].task) == [("checkpoint", "checkpoint")]
    assert _cards(run["end"].task) == [("checkpoint", "checkpoint")]


@pytest.mark.parametrize(
    "flow_file, args",
    [
        ("show_card_bad_flow.py", []),
        ("show_card_plain_flow.py", ["--with", "checkpoint:show_card=maybe"]),
    ],
    ids=["in-code", "command-line"],
)
def test_a_show_card_that_is_not_a_bool_fails_before_any_task(flow_env, flow_file, args):
    env, tmp = flow_env
    proc = run_subprocess([FLOWS / flow_file, "--no-pylint", *args, "run"], env, tmp)
    flow = "ShowCardBadFlow" if "bad" in flow_file else "ShowCardPlainFlow"
    output = _refused_before_any_task(proc, tmp, flow)
    assert "Invalid checkpoint configuration" in output
    assert "@checkpoint(show_card='maybe') must be True or False." in output, output


@pytest.mark.parametrize(
    "flow_file, args, attribute, guess",
    [
        ("show_card_typo_flow.py", [], "show_cards", "show_card"),
        (
            "show_card_plain_flow.py",
            ["--with", "checkpoint:load_polcy=x"],
            "load_polcy",
            "load_policy",
        ),
    ],
    ids=["in-code", "command-line"],
)
def test_a_misspelt_attribute_is_named_with_the_closest_one_before_any_task(
    flow_env, flow_file, args, attribute, guess
):
    env, tmp = flow_env
    proc = run_subprocess([FLOWS / flow_file, "--no-pylint", *args, "run"], env, tmp)
    flow = "ShowCardTypoFlow" if "typo" in flow_file else "ShowCardPlainFlow"
    output = _refused_before_any_task(proc, tmp, flow)
    assert "Unknown decorator attribute" in output
    from metaflow_extensions.checkpointing.plugins.checkpointing.task.decorator import (
        CheckpointDecorator,
    )

    supported = ", ".join(CheckpointDecorator.defaults)  # every one, show_card included
    assert "show_card" in supported
    assert (
        "@checkpoint does not support the attribute %r (did you mean %r?). "
        "Supported attributes: %s." % (attribute, guess, supported)
    ) in output, output


def test_with_artifact_store_is_refused_before_any_task_naming_the_equivalent(flow_env):
    """A flow written for the reference extension's ``@with_artifact_store`` loads (its
    attributes are accepted) and the run stops at its start, saying what to use instead."""
    env, tmp = flow_env
    flow_file = tmp / "artifact_store_flow.py"
    flow_file.write_text(
        textwrap.dedent(
            """
            from metaflow import FlowSpec, checkpoint, step, with_artifact_store


            @with_artifact_store(type="s3", config=lambda: {"root": "s3://bucket/prefix"})
            class ArtifactStoreFlow(FlowSpec):
                @checkpoint
                @step
                def start(self):
                    self.next(self.end)

                @step
                def end(self):
                    pass


            if __name__ == "__main__":
                ArtifactStoreFlow()
            """
        )
    )
    proc = run_subprocess([flow_file, "--no-pylint", "run"], env, tmp)
    output = _refused_before_any_task(proc, tmp, "ArtifactStoreFlow")
    assert "@with_artifact_store (from metaflow-checkpoint) is not provided" in output, output
    for equivalent in ('@checkpoint(root="s3://', "METAFLOW_CHECKPOINT_ROOT", "Checkpoint(root="):
        assert equivalent in output, output


@pytest.mark.s3
def test_show_card_on_an_s3_datastore(s3_env, flow_env, monkeypatch):
    """The same flow with ``--datastore=s3`` (a local moto server): the attached card is stored
    in the S3 datastore, read back with ``get_cards``, and shows the checkpoint saved on S3."""
    from metaflow import metaflow_config
    from metaflow.cards import get_cards
    from metaflow.plugins.datatools.s3 import s3util

    # s3util binds the client params at import; point this process's card reads at the server.
    monkeypatch.setattr(s3util, "DATATOOLS_CLIENT_PARAMS", metaflow_config.DATATOOLS_CLIENT_PARAMS)
    env, tmp = flow_env
    bucket = s3_env["new_bucket"]()
    env = dict(env, METAFLOW_DATASTORE_SYSROOT_S3="s3://%s/mf" % bucket, **s3_env["env"])
    run = run_flow(FLOWS / "show_card_flow.py", env, tmp, datastore="s3").run

    task = run["start"].task
    assert _cards(task) == [("checkpoint", "checkpoint")]
    html = get_cards(task, id="checkpoint")[0].get()
    assert task.pathspec in html and task.data  # the task ran on S3
    (saved,) = metaflow.Checkpoint().list(task)
    assert saved["url"].startswith("s3://%s/mf/mf.checkpointing/" % bucket)
    assert saved["key"] in html  # the card lists the checkpoint stored on S3
    assert _cards(run["off"].task) == [] and _cards(run["default"].task) == []
    assert _cards(run["explicit"].task) == [("checkpoint", None)]
