"""Helpers shared by the tests and the tools (see tiny.py for the one tiny model and dataset)."""
