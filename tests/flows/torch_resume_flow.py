"""Train a tiny model with TrainingState + Every; attempt 0 may crash after ``crash_after`` steps.

Every step draws from torch (batch indices, dropout), NumPy (input noise) and Python ``random``
(a sign flip), so a resumed attempt matches an uninterrupted run only if all three RNG states
are restored.  ``crash_after=0`` never crashes.  The final state dicts are artifacts, compared
bitwise by the test.

:func:`build` and :func:`train_step` are the whole training: a test may import this file and
run them in its own process for the uninterrupted result (no flow run needed for it).
"""

import random

from metaflow import Every, FlowSpec, Parameter, TrainingState, checkpoint, current, retry, step


def build():
    """Seed every RNG, then make the data and the training state (model, Adam, StepLR,
    GradScaler, ``extra['losses']``): what every attempt starts from before it restores."""
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    x_all = torch.randn(64, 4)
    y_all = x_all.sum(dim=1, keepdim=True).sin()
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
    state = TrainingState(model, optimizer, scheduler, scaler, extra={"losses": []})
    return state, (x_all, y_all)


def train_step(state, data):
    """One optimizer step drawing from all three RNGs; returns its loss."""
    import numpy as np
    import torch

    x_all, y_all = data
    idx = torch.randint(0, 64, (8,))
    noise = torch.from_numpy(np.random.normal(0, 0.1, size=(8, 4)).astype("float32"))
    x = x_all[idx] + noise
    if random.random() < 0.5:
        x = -x
    state.optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(state.model(x), y_all[idx])
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    state.step += 1
    state.extra["losses"].append(loss.item())
    return loss.item()


class TorchResumeFlow(FlowSpec):
    steps = Parameter("steps", default=10, help="Optimizer steps in total.")
    save_every = Parameter("save_every", default=4, help="Save every N steps.")
    crash_after = Parameter("crash_after", default=0, help="Attempt 0 crashes after this step.")
    async_saves = Parameter("async_saves", default=False, help="save(..., blocking=False).")

    # Training is the start step: a separate start would cost one more step process per run.
    @checkpoint
    @retry(times=1)
    @step
    def start(self):
        state, data = build()
        self.resumed_at = state.step if state.restore(current.checkpoint) else None
        every = Every(steps=self.save_every)
        while state.step < self.steps:
            loss = train_step(state, data)
            if every.due(state.step, final=state.step == self.steps):
                meta = {"loss": loss}
                state.save(current.checkpoint, metadata=meta, blocking=not self.async_saves)
            if current.retry_count == 0 and state.step == self.crash_after:
                raise RuntimeError("Simulated crash after step %d" % state.step)

        self.model_state = state.model.state_dict()
        self.optimizer_state = state.optimizer.state_dict()
        self.scheduler_state = state.scheduler.state_dict()
        self.scaler_state = state.scaler.state_dict()
        self.losses = state.extra["losses"]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TorchResumeFlow()
