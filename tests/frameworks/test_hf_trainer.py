"""HFCheckpointCallback: the transformers Trainer's checkpoints saved through current.checkpoint;
a flow that crashes mid-epoch resumes on @retry bitwise identical to an uninterrupted run."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import flow_environment  # noqa: E402
from integration.flowrun import FLOWS, run_flow, single_task  # noqa: E402

pytestmark = pytest.mark.flow

FLOW = FLOWS / "hf_trainer_flow.py"


@pytest.fixture(autouse=True)
def _client_namespace():
    from metaflow import namespace

    namespace(None)
    yield


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """(env, cwd, train task) of one uninterrupted run, shared by the tests of this module."""
    from metaflow import namespace

    namespace(None)  # results are read through Runner's Run objects
    tmp = tmp_path_factory.mktemp("hf")
    (tmp / "home").mkdir()
    # Nothing is downloaded: the model is built from a config in the flow.
    env = flow_environment(tmp, HF_HUB_OFFLINE="1", HF_HOME=str(tmp / "hf-home"))
    return env, tmp, single_task(run_flow(FLOW, env, tmp).run, "start")


def test_a_crash_mid_epoch_resumes_on_retry_bitwise_identical(straight):
    """Saves at steps 5, 10, 15, 20 and 24 (the end); the crash at step 12 (mid-epoch 1) loses
    steps 11-12, the retry resumes from step 10 in a fresh output_dir and ends with the
    uninterrupted run's weights.  save_total_limit=2 keeps the two newest each attempt's
    callback saved (it deletes only its own), the best series only the best."""
    env, tmp, straight = straight
    crashed = single_task(run_flow(FLOW, env, tmp, run_kwargs={"crash_at": 12}).run, "start")

    assert straight.current_attempt == 0 and straight.data.resumed_from is None
    assert crashed.current_attempt == 1 and crashed.data.resumed_from == 10
    s, c = straight.data.weights, crashed.data.weights
    assert set(s) == set(c) and len(s) > 10
    for k in s:
        assert torch.equal(s[k], c[k]), k

    losses = straight.data.eval_losses
    assert sorted(losses) == [5, 10, 15, 20, 24]  # evaluated at every save
    best_step = min(losses, key=lambda k: (losses[k], k))  # the first of equals, as HF
    assert straight.data.saved == [
        ("best", best_step, 0),
        ("hf_trainer", 20, 0),
        ("hf_trainer", 24, 0),
    ]
    assert straight.data.best["eval_loss"] == losses[best_step]
    assert straight.data.best["step"] == best_step
    assert crashed.data.eval_losses == losses  # the retry's history includes attempt 0's
    assert [x for x in crashed.data.saved if x[0] == "hf_trainer"] == [
        ("hf_trainer", 5, 0),  # attempt 0's: the retry's callback did not save them
        ("hf_trainer", 10, 0),
        ("hf_trainer", 20, 1),
        ("hf_trainer", 24, 1),
    ]


def test_in_a_process_the_step_started_it_saves_through_checkpoint(straight):
    """The Trainer runs in a child process of the step (no ``current`` there): the callback
    saves into the task through ``Checkpoint()``, and the retry's child resumes from what the
    task loaded, ending bitwise identical to the in-step uninterrupted run."""
    env, tmp, straight = straight
    crashed = single_task(
        run_flow(FLOW, env, tmp, run_kwargs={"crash_at": 12, "in_subprocess": True}).run, "start"
    )
    assert crashed.current_attempt == 1 and crashed.data.resumed_from == 10
    for k, v in straight.data.weights.items():
        assert torch.equal(v, crashed.data.weights[k]), k
    assert [x for x in crashed.data.saved if x[0] == "hf_trainer"] == [
        ("hf_trainer", 5, 0),  # attempt 0's: the retry's callback did not save them
        ("hf_trainer", 10, 0),
        ("hf_trainer", 20, 1),
        ("hf_trainer", 24, 1),
    ]
