"""Reuse the NVMe-oF target harness (the ``h`` fixture) of tests/transports/nvmf."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_path = Path(__file__).resolve().parents[1] / "nvmf" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_nvmf_conftest_for_rdma", _path)
assert _spec is not None and _spec.loader is not None
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
h = _mod.h
