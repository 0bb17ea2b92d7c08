"""The task layer: ``@checkpoint`` and ``current.checkpoint`` inside a running task."""
