"""The test suite; shared helpers live in tests/support/ (import them as ``from tests.support.X import ...``)."""
