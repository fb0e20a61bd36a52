"""The conftest rule: under CI=true an interop test that would skip fails with
the reason; elsewhere it still skips. Runs pytest on a scratch copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

SCRATCH_TEST = """
import pytest

@pytest.mark.interop
def test_needs_a_tool():
    pytest.skip("external tool(s) not installed: iscsi-test-cu")

def test_plain_skip_is_untouched():
    pytest.skip("not an interop test")

@pytest.mark.interop
def test_runs():
    assert True
"""


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    d = tmp_path / f"ci-{ci}"
    d.mkdir()
    shutil.copy(HERE / "conftest.py", d / "conftest.py")
    (d / "test_scratch.py").write_text(SCRATCH_TEST)
    (d / "pytest.ini").write_text("[pytest]\nmarkers =\n  interop: external client\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(d)],
        capture_output=True,
        text=True,
        env=env,
        cwd=d,
        timeout=120,
    )


def test_interop_skip_fails_under_ci(tmp_path: Path) -> None:
    p = _run(tmp_path, "true")
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "1 failed, 1 passed, 1 skipped" in out, out
    assert "FAILED" in out and "test_needs_a_tool" in out
    assert "may not skip" in out and "iscsi-test-cu" in out  # the reason is kept


def test_interop_skip_is_a_skip_elsewhere(tmp_path: Path) -> None:
    for ci in (None, "false"):
        p = _run(tmp_path, ci)
        out = p.stdout + p.stderr
        assert p.returncode == 0, out
        assert "1 passed, 2 skipped" in out, out
