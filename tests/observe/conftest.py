"""Fixtures of the observability tests (tests/observe/obs_helpers.py)."""

from obs_helpers import target  # noqa: F401
