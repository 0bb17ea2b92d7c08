"""Checkpoint a PyTorch training loop with TrainingState and Every; resume it on @retry.

``TrainingState`` saves the model (safetensors), the optimizer, LR scheduler, step counter, a
loss history and the RNG states of Python, NumPy and torch into ``current.checkpoint``;
``Every`` saves every ``save_every`` steps or every two minutes, and once more at the end.
The first attempt crashes after ``crash_after`` steps; ``@retry`` starts attempt 1, which
restores the last saved state and continues exactly as if nothing had happened, dropout masks
and data augmentation included.

    python examples/torch_state_demo.py run
"""

import random

from metaflow import Every, FlowSpec, Parameter, TrainingState, checkpoint, current, retry, step


class TorchStateDemoFlow(FlowSpec):
    steps = Parameter("steps", default=12, help="Optimizer steps to train.")
    save_every = Parameter("save_every", default=3, help="Save every N steps.")
    crash_after = Parameter("crash_after", default=7, help="Attempt 0 crashes after this step.")

    @step
    def start(self):
        self.next(self.train)

    @checkpoint
    @retry(times=1)
    @step
    def train(self):
        import torch

        torch.manual_seed(0)
        x = torch.randn(512, 8)
        y = x @ torch.linspace(-1.0, 1.0, 8).unsqueeze(1) + 0.1 * torch.randn(512, 1)
        model = torch.nn.Sequential(
            torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 1)
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.steps)
        state = TrainingState(model, optimizer, scheduler, extra={"losses": []})

        self.resumed_at = None
        if state.restore(current.checkpoint):
            self.resumed_at = state.step
            info = current.checkpoint.info
            print(
                "Resumed at step %d from %s (attempt %d)"
                % (state.step, info.pathspec, info.attempt)
            )

        every = Every(steps=self.save_every, seconds=120)
        while state.step < self.steps:
            batch = torch.randint(0, len(x), (64,))  # random batches: the torch RNG matters
            scale = random.uniform(0.9, 1.1)  # random augmentation: Python's RNG matters
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[batch] * scale), y[batch] * scale)
            loss.backward()
            optimizer.step()
            scheduler.step()
            state.step += 1
            state.extra["losses"].append(loss.item())
            if every.due(state.step, final=state.step == self.steps):
                state.save(current.checkpoint, metadata={"loss": loss.item()})
                print("step %d loss %.4f (saved)" % (state.step, loss.item()))
            if current.retry_count == 0 and state.step == self.crash_after:
                raise RuntimeError("Simulated crash after step %d" % state.step)

        self.final_step = state.step
        self.final_loss = state.extra["losses"][-1]
        self.next(self.end)

    @step
    def end(self):
        print("Done: %d steps, final loss %.4f" % (self.final_step, self.final_loss))


if __name__ == "__main__":
    TorchStateDemoFlow()
