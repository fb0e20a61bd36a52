"""bench/tls.py without running it: the rows, the perf command with --psk-path,
the markdown table with same-run ratios and the goal marks."""

from __future__ import annotations

from bench import tls
from bench.systems import Workload, bf_perf_cmd


def test_perf_command_carries_the_psk_path() -> None:
    wl = Workload("rr4k_qd32", "x", "randread", 4096, 32)
    cmd = bf_perf_cmd("trtype:TCP", wl, 3, 1, "/tmp/x.json", True, ["--psk-path", "/k"])
    assert cmd[-2:] == ["--psk-path", "/k"] and "--busy-poll" in cmd
    assert "--psk-path" not in bf_perf_cmd("trtype:TCP", wl, 3, 1, "/tmp/x.json")


def test_markdown_ratios_and_goals() -> None:
    rows = {
        "plain": {"label": "plain TCP (peer)", "rr4k_qd32": {"median": 1000.0, "unit": "IOPS"},
                  "sr128k_qd16": {"median": 500.0, "unit": "MiB/s"}},
        "tls128": {"label": "TLS a", "rr4k_qd32": {"median": 600.0, "unit": "IOPS"},
                   "sr128k_qd16": {"median": 300.0, "unit": "MiB/s", "errors": ["x"]}},
        "tls256": {"label": "TLS b", "rr4k_qd32": {"median": None}, "sr128k_qd16": {}},
    }  # fmt: skip
    meta = {"started": "t", "openssl": "OpenSSL 3", "cpus_load": "1", "cpus_target": "0",
            "size_mb": 64, "duration_s": 1, "reps": 1, "argv": "python -m bench --only tls"}  # fmt: skip
    md = tls.markdown({"meta": meta, "rows": rows})
    assert "| TLS a | 600 IOPS | 0.60 (goal met) | 300 MiB/s | 0.60 (below goal) |" in md
    assert "| TLS b | failed | - | failed | - |" in md
    assert "Failed repetitions:" in md and "TLS a sr128k_qd16: x" in md
    assert [r[0] for r in tls.ROWS] == ["plain", "tls128", "tls256"]
