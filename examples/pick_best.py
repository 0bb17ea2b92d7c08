"""Notebook-style: browse the checkpoints of the latest TrainDemoFlow run and pick the best.

Run after ``make demo`` (or ``python examples/train_demo.py run``) in the same directory, or
paste the cells into a notebook.  Only the public client API is used.
"""

# %% Which checkpoints does the latest run have?
import os
import tempfile

import torch
from metaflow import Checkpoint, Flow

run = Flow("TrainDemoFlow").latest_run
ckpt = Checkpoint()
for ref in ckpt.list(run):
    print(
        "%-40s attempt %d  epoch %d  loss %.4f  %s"
        % (ref.pathspec, ref.attempt, ref.metadata["epoch"], ref.metadata["loss"], ref.created_on)
    )

# %% The best checkpoint by a metric is one call (lowest loss; mode="max" for accuracy).
best = ckpt.best(run, metric="loss")
print(
    "\nbest: epoch %d, loss %.4f, %d bytes in %d files: %s"
    % (
        best.metadata["epoch"],
        best.metadata["loss"],
        best.size,
        best.files_count,
        ", ".join(f["path"] for f in best.files),
    )
)

# %% The three best, as a leaderboard.
for rank, ref in enumerate(ckpt.list(run, order_by="loss", limit=3), 1):
    print("#%d epoch %d loss %.4f" % (rank, ref.metadata["epoch"], ref.metadata["loss"]))

# %% Read one file without downloading the rest (verified as it is read).
with best.open("state.pt") as f:
    state = torch.load(f, weights_only=True)
print("\nstate.pt holds epoch %d" % int(state["epoch"]))

# %% Or download the whole checkpoint into a directory of your choice.
dest = best.load(os.path.join(tempfile.mkdtemp(), "best"))
print("downloaded to %s: %s" % (dest, sorted(os.listdir(dest))))
