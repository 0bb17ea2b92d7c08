"""List the checkpoints of the latest TrainDemoFlow run with the client API."""

from metaflow import Checkpoint, Flow

run = Flow("TrainDemoFlow").latest_run
print("\nCheckpoints of %s (newest first):" % run.pathspec)
print("%-44s %-8s %-6s %-6s %s" % ("pathspec", "attempt", "epoch", "loss", "created"))
for ref in Checkpoint().list(run):
    print(
        "%-44s %-8s %-6s %-6.4f %s"
        % (ref.pathspec, ref.attempt, ref.metadata["epoch"], ref.metadata["loss"], ref.created_on)
    )
print(
    "\nfinal loss %.4f, attempt 1 resumed at epoch %d"
    % (run.data.final_loss, run.data.resumed_from_epoch)
)
