"""Fixtures for tests that create shared-memory objects directly (tests/shm, tests/tools)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest


def _remove_instance_files(instance: str) -> None:
    from blockfabric.shm.segment import hugetlbfs_mounts

    dirs = [Path("/dev/shm")] + [Path(m.path) for m in hugetlbfs_mounts()]
    for d in dirs:
        for pat in (
            f"blockfabric.{instance}.*",
            f"sem.blockfabric.{instance}.*",
            f".blockfabric.{instance}.*",
        ):
            for p in d.glob(pat):
                p.unlink(missing_ok=True)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    d = tmp_path / "run"
    monkeypatch.setenv("BLOCKFABRIC_RUN_DIR", str(d))
    return d


@pytest.fixture
def instance(run_dir):
    """A unique instance name; whatever it leaves in /dev/shm is removed."""
    name = f"t{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield name
    _remove_instance_files(name)
