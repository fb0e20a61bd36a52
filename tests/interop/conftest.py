"""Interop tests: make the helper modules in this folder importable (khost, peers),
and make sure they cannot hide under CI.

An interop test skips when its external tool (libiscsi's iscsi-test-cu, tgtd,
qemu...) or the kernel-host harness is missing — fine on a laptop, but under CI
(``CI=true``, set by .ci/run and every CI service) a skip would read as a pass
of something that never ran. There every skip of a test marked ``interop``
becomes a failure that keeps the skip's reason."""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

_here = str(Path(__file__).resolve().parent)
if _here not in sys.path:
    sys.path.insert(0, _here)


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def _reason(rep: pytest.TestReport) -> str:
    lr = rep.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2]).removeprefix("Skipped: ")
    return str(lr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, None]:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    if not rep.skipped or not under_ci() or item.get_closest_marker("interop") is None:
        return
    if hasattr(rep, "wasxfail"):
        return  # an expected failure is reported as such, not as a skip
    rep.outcome = "failed"
    rep.longrepr = (
        f"CI=true: the interop test {item.nodeid} may not skip, but it would have: "
        f"{_reason(rep)}\n(install what it needs: scripts/install-deps.sh all)"
    )
