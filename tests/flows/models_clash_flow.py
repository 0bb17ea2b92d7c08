"""Two declared models whose names map to one environment variable: refused before any task."""

from metaflow import FlowSpec, checkpoint, step


class ModelsClashFlow(FlowSpec):
    @checkpoint(models=["Res-Net", "Res_Net"])
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ModelsClashFlow()
