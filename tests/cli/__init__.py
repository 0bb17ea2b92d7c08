"""Tests of the ``checkpoint`` command line (flow CLI and standalone ``metaflow`` command)."""
