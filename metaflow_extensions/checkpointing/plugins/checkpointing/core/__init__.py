"""Pure checkpoint logic on the storage protocol: no Metaflow, no torch."""
