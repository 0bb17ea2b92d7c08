"""Tests of the training-framework helpers (PyTorch, Lightning)."""
