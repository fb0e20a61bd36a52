"""The benchmark suite's argument parsing, parsers and rendering, from canned
data only: nothing is started and nothing is timed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from bftest import missing_tool

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.suite import SECTIONS, parse_args  # noqa: E402
from bench.systems import (  # noqa: E402
    WL,
    BenchError,
    bf_perf_cmd,
    core_mask,
    iscsi_perf_cmd,
    parse_bf_perf,
    parse_cpus,
    parse_iperf3,
    parse_iscsi_perf,
    perf_ios,
    top_self,
)


def test_defaults_and_quick() -> None:
    a = parse_args([])
    assert (a.sections, a.duration, a.reps) == (list(SECTIONS), 10.0, 3)
    assert (a.target_cpus, a.load_cpus, a.scaling_counts) == ([0], [1], [1, 2])
    q = parse_args(["--quick"])
    assert (q.duration, q.reps) == (3.0, 1)
    # explicit values win over --quick
    q = parse_args(["--quick", "--duration", "5", "--reps", "2"])
    assert (q.duration, q.reps) == (5.0, 2)


def test_only_and_cpus() -> None:
    a = parse_args(["--only", "nvmf,iscsi", "--only", "ceiling"])
    assert a.sections == ["ceiling", "iscsi", "nvmf"]  # suite order, not argument order
    a = parse_args(["--cpus-target", "0-7", "--cpus-load", "8-15", "--scaling-reactors", "4,1,2"])
    assert a.target_cpus == list(range(8)) and a.load_cpus == list(range(8, 16))
    assert a.scaling_counts == [1, 2, 4]


@pytest.mark.parametrize(
    "argv",
    [
        ["--only", "fio"],
        ["--cpus-target", "0", "--cpus-load", "0"],
        ["--cpus-target", "3-1"],
        ["--duration", "0.5"],
        ["--reps", "0"],
        ["--scaling-reactors", "0"],
    ],
)
def test_bad_arguments_exit(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2


def test_cpu_helpers() -> None:
    assert parse_cpus("0,2-3, 5") == [0, 2, 3, 5]
    assert core_mask([0]) == "0x1" and core_mask([0, 1]) == "0x3" and core_mask([4]) == "0x10"
    with pytest.raises(ValueError):
        parse_cpus("")


ISCSI_PERF_OUT = (
    "iscsi-perf version 0.1 - (c) 2014-2015 by Peter Lieven\n\n"
    "connected to iscsi://127.0.0.1:3260/iqn.x:t/1\n"
    "capacity is 524288 blocks or 268435456 byte (256 MB)\n"
    "performing RANDOM READ with 32 parallel requests\n"
    "FIXED transfer size of 8 blocks (4096 byte)\n"
    "will run for 3 seconds.\n\n"
    "00:00:02 - lba 327187, iops current 39758 (155 MB/s), iops average 39758 (155 MB/s), "
    "in_flight 32, busy 0        \r"
    "00:00:01 - lba 494844, iops current 43023 (168 MB/s), iops average 41390 (161 MB/s), "
    "in_flight 32, busy 0        \r"
    "iops average 41458 (161 MB/s)                                  \n\nfinished.\n"
)


def test_parse_iscsi_perf() -> None:
    assert parse_iscsi_perf(ISCSI_PERF_OUT) == (41458.0, 4096)
    with pytest.raises(BenchError):
        parse_iscsi_perf("Login Failed. target not found\n")
    cmd = iscsi_perf_cmd("iscsi://h/iqn/0", WL["rr4k_qd32"], 10)
    assert cmd == ["iscsi-perf", "-m", "32", "-b", "8", "-t", "10", "-r", "iscsi://h/iqn/0"]
    cmd = iscsi_perf_cmd("iscsi://h/iqn/0", WL["sr128k_qd16"], 3.4)
    assert cmd == ["iscsi-perf", "-m", "16", "-b", "256", "-t", "3", "iscsi://h/iqn/0"]


def test_parse_bf_perf() -> None:
    doc = {
        "workers": [{"iops": 1.0}],
        "total": {"iops": 25000.0, "mib_s": 97.65625, "lat": {"avg_us": 1279.5, "p99_us": 2000.0}},
    }
    assert parse_bf_perf(doc, WL["rr4k_qd32"]) == (25000.0, 97.65625, 1279.5)
    # a flatter shape still works; MiB/s derived from IOPS when absent
    iops, mib, lat = parse_bf_perf({"iops": 8.0}, WL["sr128k_qd16"])
    assert (iops, mib, lat) == (8.0, 1.0, None)
    with pytest.raises(BenchError):
        parse_bf_perf({"nothing": 1}, WL["rr4k_qd1"])
    assert perf_ios({"total": {"ios": 12345}}) == 12345
    assert perf_ios({"total": {}}) == 0 and perf_ios([]) == 0


def test_bf_perf_cmd_submission() -> None:
    cmd = bf_perf_cmd("trtype:TCP", WL["rr4k_qd32"], 5, 1, "F")
    assert cmd[cmd.index("--submission") + 1] == "per-command"  # the default: as real hosts
    cmd = bf_perf_cmd("trtype:TCP", WL["rr4k_qd32"], 5, 1, "F", True, submission="batch")
    assert cmd[cmd.index("--submission") + 1] == "batch" and "--busy-poll" in cmd


def test_parse_iperf3() -> None:
    doc = {
        "end": {
            "sum_received": {"bits_per_second": 8 * 4096 * 2**20},
            "cpu_utilization_percent": {"host_total": 99.5, "remote_total": 40.0},
        }
    }
    assert parse_iperf3(doc) == (4096.0, 40.0, 99.5)
    with pytest.raises(BenchError, match="unable to connect"):
        parse_iperf3({"error": "unable to connect to server"})


def test_top_self() -> None:
    raw = (
        "<module> (x.py:1);run (loop.py:10);poll (r.py:5) 60\n"
        "<module> (x.py:1);run (loop.py:10) 30\n"
        "<module> (x.py:1);run (loop.py:10);send (t.py:7) 10\n"
        "garbage line\n"
    )
    total, top = top_self(raw, 2)
    assert total == 100
    assert top == [
        {"function": "poll (r.py:5)", "samples": 60, "self_pct": 60.0},
        {"function": "run (loop.py:10)", "samples": 30, "self_pct": 30.0},
    ]


def _rep(iops: float, size: int, qd: int, t: float = 100.0, ld: float = 50.0) -> dict[str, Any]:
    return {
        "ok": True,
        "error": None,
        "iops": iops,
        "mib_s": iops * size / 2**20,
        "lat_us": qd / iops * 1e6,
        "lat_source": "derived",
        "target_cpu_pct": t,
        "load_cpu_pct": ld,
        "other_cpu_pct": 1.0,
    }


def _row(system: str, proto: str, key: str, iops: list[float], **extra: Any) -> dict[str, Any]:
    wl = WL[key]
    reps = [_rep(x, wl.size, wl.qd) for x in iops]
    return {
        "system": system,
        "proto": proto,
        "workload": key,
        "label": wl.label,
        "status": "ok",
        "error": None,
        "reps": reps,
        "median": report.median_of(reps),
        "lat_source": "derived",
        **extra,
    }


def _failed(system: str, proto: str, key: str, err: str, status: str = "failed") -> dict[str, Any]:
    return {
        "system": system,
        "proto": proto,
        "workload": key,
        "label": WL[key].label,
        "status": status,
        "error": err,
        "reps": [],
        "median": {},
    }


def canned() -> dict[str, Any]:
    meta = {
        "started": "2024-01-01T00:00:00",
        "quick": False,
        "reps": 3,
        "duration_s": 10.0,
        "cpus_target": "0",
        "cpus_load": "1",
        "argv": "python -m bench",
        "machine": {
            "cpu_model": "AMD EPYC",
            "cpus": 2,
            "kernel": "6.1",
            "mem_gib": 23.5,
            "virtualization": "KVM guest",
        },
        "versions": {
            "python": "3.11.2",
            "tgt (tgtd)": "1:1.0.85-1",
            "libiscsi (iscsi-perf)": "1.19.0-3",
        },
    }
    loop = {
        "system": "loopback",
        "proto": "tcp",
        "workload": "stream128k",
        "label": "stream",
        "status": "ok",
        "error": None,
        "reps": [],
        "median": {"mib_s": 4000.0, "target_cpu_pct": 60.0, "load_cpu_pct": 99.0},
    }
    iscsi = [
        _row("tgt", "iscsi", "rr4k_qd1", [9000, 10000, 11000]),
        _row("blockfabric", "iscsi", "rr4k_qd1", [12000, 12000, 1]),
        _row("tgt", "iscsi", "rr4k_qd32", [30000]),
        _failed("blockfabric", "iscsi", "rr4k_qd32", "RPC iscsi_create_target_node: boom"),
        _failed("tgt", "iscsi", "rw4k_qd32", "iscsi-perf has no write mode", "n/a"),
        _failed("blockfabric", "iscsi", "rw4k_qd32", "iscsi-perf has no write mode", "n/a"),
    ]
    pc = {"submission": "per-command", "poll": "busy"}
    adaptive = _row("blockfabric", "nvmf", "rr4k_qd32", [30000], submission="per-command")
    adaptive["poll"] = "adaptive"
    adaptive["median"]["cpu_us_per_io"] = 3.25
    nvmf = [
        _row("blockfabric", "nvmf", "rr4k_qd32", [39612.5], **pc),
        _row("blockfabric", "nvmf", "sr128k_qd16", [8000], **pc),  # 1000 MiB/s
        _row("blockfabric", "nvmf", "rr4k_qd32", [50000], submission="batch", poll="busy"),
        adaptive,
    ]
    scaling = [
        _row(
            "blockfabric",
            "nvmf",
            "rr4k_qd32",
            [20000],
            reactors=1,
            mask="0x1",
            target_cpus="0",
            load_cpus="1",
            workers=2,
            shared_cpus=False,
        ),
        _row(
            "blockfabric",
            "nvmf",
            "rr4k_qd32",
            [30000],
            reactors=2,
            mask="0x3",
            target_cpus="0,1",
            load_cpus="1",
            workers=2,
            shared_cpus=True,
        ),
    ]
    prof = {
        "status": "ok",
        "samples": 100,
        "top": [{"function": "poll (r.py:5)", "samples": 60, "self_pct": 60.0}],
    }
    secs = {
        "ceiling": {"rows": [loop]},
        "iscsi": {"rows": iscsi, "notes": ["reads only"]},
        "nvmf": {"rows": nvmf, "commands": ["taskset -c 1 blockfabric perf -q 32"]},
        "scaling": {"rows": scaling},
        "profile": prof,
    }
    return {"meta": meta, "sections": secs}


def test_median_ignores_failed_reps() -> None:
    reps = [_rep(10, 4096, 1), _rep(30, 4096, 1), {"ok": False, "error": "x"}, _rep(20, 4096, 1)]
    m = report.median_of(reps)
    assert m["iops"] == 20 and m["target_cpu_pct"] == 100.0
    assert report.median_of([{"ok": False}])["iops"] is None


def test_text_report() -> None:
    txt = report.text_report(canned())
    line = next(ln for ln in txt.splitlines() if ln.startswith("4 KiB rand read QD1 "))
    assert "10,000" in line and "12,000" in line and "1.20x" in line  # medians and bf/tgt ratio
    qd32 = next(ln for ln in txt.splitlines() if ln.startswith("4 KiB rand read QD32 "))
    assert "30,000" in qd32 and "FAILED" in qd32 and "209,606" in qd32
    assert (
        "FAILED: blockfabric iscsi (4 KiB rand read QD32): RPC iscsi_create_target_node: boom"
        in txt
    )
    nv = next(ln for ln in txt.splitlines() if ln.startswith("128 KiB seq read QD16"))
    assert "1,000" in nv and "25.0%" in nv and "3,106" in nv  # vs the 4000 MiB/s ceiling
    assert ">= 3,000 MiB/s: 0.33x" in nv  # the issue's target, missed by that much
    nv32 = next(ln for ln in txt.splitlines() if "QD32" in ln and "396,125" in ln)
    # per-command busy IOPS, adaptive IOPS and its CPU cost, batch IOPS, ratio, target
    assert "39,612" in nv32 and "0.10x" in nv32 and ">= 200,000: 0.20x" in nv32
    assert "30,000" in nv32 and "3.25" in nv32 and "50,000" in nv32
    assert "1.50x" in txt  # 2 reactors vs 1
    assert "poll (r.py:5)" in txt and "60.0" in txt
    # --only limits what is printed
    only = report.text_report(canned(), ["scaling"])
    assert "Scaling" in only and "iSCSI" not in only


def test_markdown_report() -> None:
    md = report.markdown_report(canned())
    assert md.startswith("# blockfabric benchmarks")
    assert "## Machine" in md and "AMD EPYC, 2 CPUs" in md and "1.19.0-3" in md
    assert "| workload | tgt IOPS |" in md
    assert "reference, NOT same run" in md and "70 652 IOPS at QD1" in md
    assert "| 1 | `poll (r.py:5)` | 60.0 | 60 |" in md
    assert "taskset -c 1 blockfabric perf -q 32" in md
    assert "- reads only" in md
    # a failed profile renders as a failure, not a crash
    res = canned()
    res["sections"]["profile"] = {"status": "failed", "error": "py-spy missing"}
    assert "FAILED: py-spy missing" in report.markdown_report(res)


def test_plot(tmp_path: Path) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        missing_tool("matplotlib is not installed (the bench extra)")
    out = tmp_path / "p.png"
    assert report.plot(canned(), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not report.plot({"sections": {}}, tmp_path / "none.png")
