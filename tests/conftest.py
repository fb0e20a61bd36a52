"""Shared fixtures: a real blockfabric daemon per test, always stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bftest import BIN, Daemon, _seq, shm_objects


@pytest.fixture
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # short path: ipc:// socket paths are limited to 107 bytes
    d = Path(f"/tmp/bf-{os.getpid()}-{next(_seq)}")
    d.mkdir(mode=0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon_factory(run_dir: Path) -> Iterator[Any]:
    made: list[Daemon] = []

    def make(mask: str = "0x1", extra: list[str] | None = None, name: str | None = None) -> Daemon:
        d = Daemon(run_dir, name or f"t{os.getpid()}x{next(_seq)}", mask, extra)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()
    for d in made:
        # a test that failed half-way must not leak processes or shared memory
        from blockfabric.shm.lock import InstanceLock

        os.environ["BLOCKFABRIC_RUN_DIR"] = str(run_dir)
        try:
            pid = InstanceLock.holder_pid(d.name) if InstanceLock.is_held(d.name) else None
        finally:
            os.environ.pop("BLOCKFABRIC_RUN_DIR", None)
        if pid:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        subprocess.run([*BIN, "shm", "cleanup", "--name", d.name], env=d.env, capture_output=True)


@pytest.fixture
def daemon(daemon_factory: Any) -> Iterator[Daemon]:
    d = daemon_factory().start()
    yield d
    d.stop()
    assert shm_objects(d.name) == [], f"{d.name} left shared memory behind"
