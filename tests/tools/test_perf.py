"""blockfabric perf: transport-ID parsing, argument errors, and runs against a scripted target."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockfabric.tools import perf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "transports", "nvmf_host"))
from nvmf_fake_target import SUBNQN, FakeTarget  # noqa: E402


def test_parse_trid_spdk_form() -> None:
    t = perf.parse_trid(
        "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.2016-06.io.x:cnode1"
    )
    assert t == {
        "trtype": "TCP",
        "adrfam": "IPv4",
        "traddr": "127.0.0.1",
        "trsvcid": "4420",
        "subnqn": "nqn.2016-06.io.x:cnode1",
    }
    t = perf.parse_trid("TRTYPE=tcp traddr=::1 ns:2")
    assert (
        t["trtype"] == "TCP" and t["traddr"] == "::1" and t["trsvcid"] == "4420" and t["ns"] == "2"
    )
    assert t["subnqn"] == "nqn.2014-08.org.nvmexpress.discovery"


@pytest.mark.parametrize(
    "bad,msg",
    [
        ("trtype:TCP traddr:1.2.3.4 color:blue", "unknown transport ID key 'color'"),
        ("trtype:PCIE traddr:1.2.3.4", "not supported"),
        ("traddr:1.2.3.4", "needs trtype"),
        ("trtype:TCP", "needs traddr"),
        ("trtype:TCP traddr:x trsvcid:99999", "not a TCP port"),
        ("trtype:TCP traddr:x adrfam:FC", "adrfam"),
        ("trtype:TCP traddr:x traddr:y", "given twice"),
        ("trtype:TCP traddr", "not key:value"),
        ("trtype:TCP traddr:", "empty value"),
        ("trtype:TCP traddr:x ns:0", "namespace id"),
    ],
)
def test_parse_trid_errors(bad: str, msg: str) -> None:
    with pytest.raises(perf.TridError, match=msg):
        perf.parse_trid(bad)


@given(st.text(max_size=80))
def test_parse_trid_never_crashes(s: str) -> None:
    try:
        perf.parse_trid(s)
    except perf.TridError:
        pass


def run_perf(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blockfabric.tools.cli", "perf", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_arguments_exit_2() -> None:
    p = run_perf("-r", "trtype:TCP traddr:127.0.0.1 foo:1")
    assert p.returncode == 2 and "unknown transport ID key 'foo'" in p.stderr
    p = run_perf("-r", "trtype:TCP traddr:127.0.0.1", "-w", "rw")
    assert p.returncode == 2 and "-M" in p.stderr


@pytest.fixture
def target():
    t = FakeTarget(num_blocks=16384)
    yield t
    t.close()


@pytest.mark.parametrize("digests", [[], ["-H", "--enable-tcp-ddgst"]])
def test_verify_two_workers_zero_miscompares(
    target: FakeTarget, tmp_path, digests: list[str]
) -> None:
    out = tmp_path / "r.json"
    p = run_perf(
        "-r",
        f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{target.port} subnqn:{SUBNQN}",
        "-q",
        "4",
        "-o",
        "8192",
        "-w",
        "randwrite",
        "-t",
        "1.5",
        "-P",
        "2",
        "--verify",
        "--json",
        str(out),
        *digests,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(out.read_text())
    assert doc["total"]["miscompares"] == 0 and doc["total"]["errors"] == 0
    assert len(doc["workers"]) == 2 and all(w["ios"] > 0 for w in doc["workers"])
    assert doc["hdgst"] == bool(digests) and doc["ddgst"] == bool(digests)
    assert "Total" in p.stdout and "CPU %" in p.stdout and "IOPS" in p.stderr


def test_verify_detects_corruption(target: FakeTarget, tmp_path) -> None:
    target.corrupt_reads = True
    p = run_perf(
        "-r",
        f"trtype:TCP traddr:127.0.0.1 trsvcid:{target.port} subnqn:{SUBNQN}",
        "-q",
        "2",
        "-o",
        "4096",
        "-w",
        "write",
        "-t",
        "1",
        "-P",
        "1",
        "--verify",
    )
    assert p.returncode == 1
    assert "miscompare at LBA" in p.stdout and "verify: 0 miscompare" not in p.stdout


def test_randrw_mix_and_lba_errors_reported(target: FakeTarget, tmp_path) -> None:
    out = tmp_path / "r.json"
    p = run_perf(
        "-r",
        f"trtype:TCP traddr:127.0.0.1 trsvcid:{target.port} subnqn:{SUBNQN}",
        "-q",
        "8",
        "-o",
        "4096",
        "-w",
        "randrw",
        "-M",
        "70",
        "-t",
        "1",
        "-P",
        "1",
        "--json",
        str(out),
        "--quiet",
    )
    assert p.returncode == 0, p.stderr
    w = json.loads(out.read_text())["workers"][0]
    assert w["reads"] > w["writes"] > 0
    assert 0.55 < w["reads"] / (w["reads"] + w["writes"]) < 0.85


NQN = "nqn.2016-06.io.blockfabric:cnode1"


@pytest.mark.e2e
def test_verify_against_real_target(daemon_factory, tmp_path) -> None:
    import socket

    d = daemon_factory(mask="0x3").start()
    try:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        d.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 131072, "block_size": 512})
        d.rpc("nvmf_create_transport", {"trtype": "TCP"})
        d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
        d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}})
        d.rpc(
            "nvmf_subsystem_add_listener",
            {
                "nqn": NQN,
                "listen_address": {
                    "trtype": "tcp",
                    "adrfam": "ipv4",
                    "traddr": "127.0.0.1",
                    "trsvcid": str(port),
                },
            },
        )
        trid = f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}"
        for digests in ([], ["-H", "-I"]):
            out = tmp_path / "r.json"
            p = run_perf(
                "-r",
                trid,
                "-q",
                "8",
                "-o",
                "16384",
                "-w",
                "randwrite",
                "-t",
                "2",
                "-P",
                "2",
                "--verify",
                "--json",
                str(out),
                "--quiet",
                *digests,
            )
            assert p.returncode == 0, p.stdout + p.stderr
            doc = json.loads(out.read_text())
            assert doc["total"]["miscompares"] == 0 and doc["total"]["errors"] == 0
            assert all(w["ios"] > 0 for w in doc["workers"])
    finally:
        d.stop()


@pytest.mark.parametrize("mode", ["per-command", "batch"])
def test_submission_modes(target: FakeTarget, tmp_path, mode: str) -> None:
    """per-command (the default) sends each command PDU on its own: at least one
    sendmsg per submitted command; batch gathers the commands queued while one
    recv's completions are handled (the first QD commands alone go out in one
    sendmsg, so there are fewer sends than commands)."""
    out = tmp_path / "r.json"
    args = ["--submission", mode] if mode == "batch" else []
    p = run_perf(
        "-r",
        f"trtype:TCP traddr:127.0.0.1 trsvcid:{target.port} subnqn:{SUBNQN}",
        "-q",
        "8",
        "-o",
        "4096",
        "-w",
        "randread",
        "-t",
        "1",
        "-P",
        "1",
        "--json",
        str(out),
        "--quiet",
        *args,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    w = doc["workers"][0]
    assert doc["submission"] == w["submission"] == mode
    submitted = w["reads"] + w["writes"]
    assert w["ios"] > 100 and submitted >= w["ios"]
    if mode == "per-command":
        assert w["sends"] >= submitted
    else:
        assert 0 < w["sends"] < submitted
