"""Tells Metaflow which module holds this extension's top-level names."""

toplevel = "checkpointing_toplevel"
