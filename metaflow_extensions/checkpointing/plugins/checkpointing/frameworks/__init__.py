"""Training-framework helpers (PyTorch, Lightning); the only modules that import torch, lazily."""
