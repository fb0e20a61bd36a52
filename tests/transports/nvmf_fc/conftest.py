"""FC end-to-end fixture: a daemon with 2 reactors exporting M0 on a loopback FC port."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fclib import _setup  # noqa: E402


@pytest.fixture
def fcd(daemon_factory: Any, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("BLOCKFABRIC_RUN_DIR", str(run_dir))  # the host finds the port there
    d = daemon_factory(mask="0x3").start()
    _setup(d)
    yield d
    d.stop()
