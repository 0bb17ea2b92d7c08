"""Fine-tune a tiny BERT (built from a config: nothing downloaded) with the transformers Trainer
and HFCheckpointCallback; attempt 0 may crash at step ``crash_at``.

3 epochs of 8 steps; the Trainer saves every ``save_steps`` steps and at the end, evaluates at
each save and keeps ``save_total_limit`` checkpoints.  Every attempt writes to a fresh
``output_dir``: a retry can only resume from the checkpoint the task loaded.  Dropout and the
Trainer's shuffling draw random numbers, so a resumed run matches an uninterrupted one only if
the model, optimizer, scheduler, RNG states and the position in the epoch are all restored.
``in_subprocess=True`` trains in a process the step starts (as ``torchrun`` would): there the
callback finds no ``current`` and saves through ``Checkpoint()``.
"""

import json
import os
import subprocess
import sys
import tempfile

from metaflow import FlowSpec, HFCheckpointCallback, Parameter, checkpoint, current, retry, step


def fit(crash_at, save_steps, save_total_limit, save_strategy, attempt):
    """Train; return what the test compares.  Runs in the step, or in a process it started
    (there HFCheckpointCallback saves through Checkpoint())."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    class Pairs(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.x = torch.randint(0, 32, (n, 8), generator=g)
            self.y = self.x.sum(dim=1) % 2

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"input_ids": self.x[i], "labels": self.y[i]}

    crash_at = crash_at if attempt == 0 else 0

    class CrashAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == crash_at:
                raise RuntimeError("simulated crash at step %d" % crash_at)

    cb = HFCheckpointCallback()
    resume = cb.resume_from_checkpoint
    out = {"resumed_from": None}
    if resume is not None:
        with open(os.path.join(resume, "trainer_state.json")) as f:
            out["resumed_from"] = json.load(f)["global_step"]
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-out-"),
        num_train_epochs=3,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        save_strategy=save_strategy,
        save_steps=save_steps,
        eval_strategy="epoch" if save_strategy == "epoch" else "steps",
        eval_steps=save_steps,
        save_total_limit=save_total_limit or None,
        metric_for_best_model="loss",
        greater_is_better=False,
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=42,
    )
    # Another initialisation on each attempt: a retry's weights come from the checkpoint.
    torch.manual_seed(100 + attempt)
    config = BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    trainer = Trainer(
        model=BertForSequenceClassification(config),
        args=args,
        train_dataset=Pairs(64, 0),
        eval_dataset=Pairs(16, 1),
        callbacks=[cb] + ([CrashAt()] if crash_at else []),
    )
    trainer.train(resume_from_checkpoint=resume)
    out["weights"] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    out["eval_losses"] = {
        h["step"]: h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h
    }
    out["best"] = dict(cb.best_reference.metadata) if cb.best_reference else None
    return out


CHILD = """
import sys, torch
sys.path.insert(0, %r)
from hf_trainer_flow import fit
torch.save(fit(*[int(a) if a.isdigit() else a for a in sys.argv[2:]]), sys.argv[1])
"""


class HFTrainerFlow(FlowSpec):
    crash_at = Parameter("crash_at", default=0, help="Attempt 0 crashes after this step.")
    save_steps = Parameter("save_steps", default=5)
    save_total_limit = Parameter("save_total_limit", default=2, help="0: no limit.")
    save_strategy = Parameter("save_strategy", default="steps")
    in_subprocess = Parameter("in_subprocess", default=False, help="Train in a child process.")

    # Training is the start step: a separate start would cost one more step process per run.
    @checkpoint
    @retry(times=1)
    @step
    def start(self):
        options = (
            self.crash_at,
            self.save_steps,
            self.save_total_limit,
            self.save_strategy,
            current.retry_count,
        )
        if self.in_subprocess:
            result = os.path.join(tempfile.mkdtemp(), "result.pt")
            code = CHILD % os.path.dirname(os.path.abspath(__file__))
            subprocess.run(
                [sys.executable, "-c", code, result] + [str(o) for o in options], check=True
            )
            import torch  # after the child: a crashed attempt never imports it here

            out = torch.load(result, weights_only=True)
        else:
            out = fit(*options)
        for key, value in out.items():
            setattr(self, key, value)
        self.saved = sorted(
            (r.name, r.metadata["step"], r.attempt) for r in current.checkpoint.list()
        )
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    HFTrainerFlow()
