"""The kit's measurement helpers and the attack benchmark's plumbing, without a daemon."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import attackkit as K
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import attacks as B  # noqa: E402


def test_good_result_iops_and_stall() -> None:
    b0 = 1000  # bucket numbers: 50 ms each
    buckets = {b0 + i: 5 for i in range(20)}  # 1 s at 100 IOPS
    buckets.update({b0 + 20 + i: 5 for i in range(0, 20, 4)})  # then one bucket in four
    r = K.GoodResult(buckets, [], sum(buckets.values()))
    t = b0 * K.BUCKET
    assert r.iops(t, t + 1.0) == pytest.approx(100)
    assert r.iops(t + 1.0, t + 2.0) == pytest.approx(25)
    assert r.max_gap(t, t + 1.0) == 0
    assert r.max_gap(t + 1.0, t + 2.0) == pytest.approx(3 * K.BUCKET)
    assert r.max_gap(t + 2.0, t + 3.0) == pytest.approx(1.0)  # nothing at all: a 1 s stall


def test_pool_in_use_sums_every_reactor() -> None:
    stats = [
        {"module": "reactor_0", "in_use": 3, "in_use_bytes": 9999, "small_pool": {"cache": 7}},
        {"module": "reactor_1", "in_use": 4, "large_pool": {"in_use": 0}},
    ]
    assert K._sum_key(stats, "in_use") == 7


def test_rss_sampler_sees_growth_and_kills_at_the_cap() -> None:
    import subprocess

    code = "import time; b = bytearray(48 << 20); time.sleep(30)"
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3); " + code])
    try:
        s = K.RssSampler([p.pid], hard_cap_mib=32).start()
        p.wait(10)  # killed by the sampler once it passes 32 MiB
        s.stop()
        assert s.killed == [p.pid]
        assert s.growth_mib() > 16
    finally:
        p.kill()
        p.wait()


def test_count_closed() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    b.close()
    d.sendall(b"x" * 1000)  # data waiting is not a close
    assert K.count_closed([a, c]) == 1
    d.close()
    assert K.count_closed([a, c], wait=1.0) == 2
    a.close()
    c.close()


def test_raise_nofile() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    got = K.raise_nofile(soft)  # never lowers
    assert got == soft
    want = min(4096, hard) if hard != resource.RLIM_INFINITY else 4096
    assert K.raise_nofile(want) >= min(want, hard if hard != resource.RLIM_INFINITY else want)


def test_bench_arguments_and_render(tmp_path: Path) -> None:
    a = B.parse_args(["--quick", "--only", "nvme_slowloris,rpc_zmq_flood"])
    assert a.names == ["nvme_slowloris", "rpc_zmq_flood"] and (a.alone, a.attack) == (1.5, 2.0)
    assert B.parse_args([]).names == list(B.ATTACKS)
    with pytest.raises(SystemExit):
        B.parse_args(["--only", "nope"])
    with pytest.raises(SystemExit):
        B.parse_args(["--attack", "0.5"])
    rows = [
        {"attack": "nvme_slowloris", "host": "nvme", "iops_alone": 1000, "iops_attack": 500,
         "ratio": 0.5, "longest_stall_s": 0.1, "host_errors": [], "rss_growth_mib": 3.0,
         "rss_allowance_mib": 32.0, "target_alive": True, "pool_in_use_before": 0,
         "pool_in_use_after": 0, "attack_report": {}, "extra": {}},
        {"attack": "rpc_zmq_flood", "error": "RuntimeError: boom", "ratio": 0.0},
    ]  # fmt: skip
    md = B.render(rows, a, {"host": "h", "date": "d"})
    assert (
        "| nvme_slowloris | nvme | 1,000 | 500 | 0.50 | 0.10 s | 3 MiB (32) | alive | 0 / 0 |" in md
    )
    assert "run failed: RuntimeError: boom" in md


def test_every_attack_of_the_tests_is_benchmarked() -> None:
    made = {
        cls.name
        for cls in vars(K).values()
        if isinstance(cls, type) and issubclass(cls, K.Attack) and cls is not K.Attack
    }
    made -= {"attack"}  # IdleConnections names itself per protocol
    assert made <= set(B.ATTACKS), made - set(B.ATTACKS)
    assert {"nvme_idle_1000", "iscsi_idle_1000"} <= set(B.ATTACKS)
    assert os.path.basename(B.RESULTS) == "results"
