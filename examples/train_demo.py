"""Train a tiny PyTorch model with @checkpoint + @retry; the first attempt crashes mid-training.

Every epoch saves the model and optimizer state (``torch.save`` of plain tensors, loaded back
with ``weights_only=True``) together with the epoch and loss as checkpoint metadata.  The first
attempt crashes after ``crash_after`` epochs; ``@retry`` starts attempt 1, which finds that
attempt's last checkpoint in ``current.checkpoint.directory`` and continues from the next epoch.

    python examples/train_demo.py run
"""

import os

from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step


class TrainDemoFlow(FlowSpec):
    epochs = Parameter("epochs", default=8, help="Epochs to train.")
    crash_after = Parameter("crash_after", default=4, help="Epoch after which attempt 0 crashes.")

    @step
    def start(self):
        self.next(self.train)

    @checkpoint
    @retry(times=1)
    @step
    def train(self):
        import torch

        torch.manual_seed(0)
        x = torch.randn(256, 8)
        y = x @ torch.arange(1.0, 9.0).unsqueeze(1) + 0.1 * torch.randn(256, 1)
        model = torch.nn.Linear(8, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        state_file = os.path.join(current.checkpoint.directory, "state.pt")

        first_epoch = 0
        if current.checkpoint.is_loaded:
            state = torch.load(state_file, weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            first_epoch = int(state["epoch"]) + 1
            print(
                "Resuming at epoch %d from %s (attempt %d)"
                % (first_epoch, current.checkpoint.info.pathspec, current.checkpoint.info.attempt)
            )

        for epoch in range(first_epoch, self.epochs):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            torch.save(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                state_file,
            )
            current.checkpoint.save(metadata={"epoch": epoch, "loss": float(loss)})
            print("epoch %d loss %.4f (saved)" % (epoch, float(loss)))
            if current.retry_count == 0 and epoch + 1 == self.crash_after:
                raise RuntimeError("Simulated crash after epoch %d" % epoch)

        self.final_loss = float(loss)
        self.resumed_from_epoch = first_epoch
        self.next(self.end)

    @step
    def end(self):
        print(
            "Done: final loss %.4f, resumed at epoch %d"
            % (self.final_loss, self.resumed_from_epoch)
        )


if __name__ == "__main__":
    TrainDemoFlow()
