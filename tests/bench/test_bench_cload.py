"""bench/cload.py: the C load generator builds, its result line parses, and
the table marks the issue-15 targets (no target is started here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import cload
from bench.systems import BenchError


def test_parse_line() -> None:
    r = cload.parse_line(
        "noise\nios=100 seconds=1.000 iops=100 mibs=0.4 lat_us=9.50 sends=100 qd=1"
    )
    assert r == {"ios": 100, "iops": 100.0, "mibs": 0.4, "lat_us": 9.5, "sends": 100}
    with pytest.raises(BenchError):
        cload.parse_line("nvmf_loadgen: status 0x2")


def test_builds(tmp_path: Path) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.fail("no C compiler: scripts/install-deps.sh installs gcc")
    exe = cload.build(tmp_path)
    assert exe.exists()


def test_markdown_marks_targets() -> None:
    ok = {
        "iops": 210_000.0,
        "mibs": 820.0,
        "lat_us": 150.0,
        "target_cpu_pct": 100,
        "load_cpu_pct": 60,
    }
    res = {
        "meta": {"started": "t", "argv": "python -m bench.cload", "cpus_target": "0",
                 "cpus_load": "1", "reps": 1, "duration_s": 1},
        "rows": {
            "rr4k_qd32": {"label": "4 KiB rand read QD32", "target": ("iops", 200_000),
                          "busy": [ok], "blocking": [{"target_cpu_us_per_io": 4.0, "iops": 1.0}]},
            "rw4k_qd32": {"label": "4 KiB rand write QD32", "target": ("iops", 160_000),
                          "busy": [{**ok, "iops": 80_000.0}], "blocking": [{"error": "x"}]},
        },
    }  # fmt: skip
    md = cload.markdown(res)
    assert ">= 200,000 IOPS: met" in md and "250,000" in md  # 1e6 / 4 us
    assert ">= 160,000 IOPS: 0.50x" in md and "Failed runs" in md
