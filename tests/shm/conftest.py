"""Private run dir and unique instance names for shared-memory tests."""

from shm_fixtures import instance, run_dir  # noqa: F401
