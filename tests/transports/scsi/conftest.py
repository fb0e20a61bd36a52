from __future__ import annotations

import os
import sys

import pytest

# the helper module sits next to the tests (pytest runs with --import-mode=importlib)
sys.path.insert(0, os.path.dirname(__file__))

from scsi_testlib import Env  # noqa: E402


@pytest.fixture
def env(tmp_path) -> Env:
    return Env(tmp_path)
