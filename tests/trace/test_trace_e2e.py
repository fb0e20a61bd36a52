"""Tracepoints against a real daemon (issue 13 items 1-2).

* ``-e nvmf_tcp`` at start, `blockfabric perf` briefly, `blockfabric trace`:
  every complete request has its phases in order, on every reactor;
* the group mask follows the RPCs on every reactor (and the supervisor's
  ring records RPCs when ``rpc`` is on);
* SIGKILL of the whole instance under load: `blockfabric trace -f` on the
  leftover segment shows the last requests of every reactor, then
  `blockfabric shm cleanup` removes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dlib
import psutil
import pytest
from bftest import BIN

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

READ_PHASES = ["PDU_RECV", "REQ_NEW", "BDEV_SUBMIT", "BDEV_DONE", "DATA_SENT"]


def _trid(port: int) -> str:
    return f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{dlib.NQN}"


def _perf(port: int, seconds: float, workers: int = 2, qd: int = 8, rw: str = "randread") -> Any:
    return subprocess.Popen(
        [
            *BIN, "perf", "-r", _trid(port), "-q", str(qd), "-o", "4096", "-w", rw,
            "-t", str(seconds), "-P", str(workers), "--quiet",
            *(["-M", "50"] if "rw" in rw else []),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _run_perf(port: int, seconds: float, **kw: Any) -> None:
    p = _perf(port, seconds, **kw)
    out, err = p.communicate(timeout=seconds + 90)
    assert p.returncode == 0, f"perf failed: {out[-2000:]}\n{err[-2000:]}"


def _trace(d: Any, *args: str) -> Any:
    p = d.cli("trace", "-n", d.name, *args, "--json")
    return json.loads(p.stdout)


def _target(d: Any, mb: int = 16) -> int:
    port = dlib.free_port()
    d.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": mb * 2048, "block_size": 512})
    dlib.export_nvmf(d, port, "Malloc0")
    return port


ORDER = ["PDU_RECV", "REQ_NEW", "H2C_DATA", "BDEV_SUBMIT", "BDEV_DONE", "DATA_SENT", "RESP_SENT"]


def _check_phases(req: dict[str, Any]) -> bool:
    """Phases in order; a Read (opcode 2) has every one of them. True for a Read."""
    names = [p["phase"] for p in req["phases"]]
    assert names == sorted(names, key=ORDER.index), req
    assert names[-1] in ("DATA_SENT", "RESP_SENT") and names[:2] == ORDER[:2], req
    is_read = req["opc"] == 2
    if is_read:
        want = READ_PHASES + ([] if names[-1] == "DATA_SENT" else ["RESP_SENT"])
        assert names == want, req
    ts = [e["ts_ns"] for e in req["events"]]
    assert ts == sorted(ts), req
    assert all(p["us"] >= 0 for p in req["phases"]), req
    return is_read


def test_nvmf_tcp_requests_have_their_phases_in_order(daemon_factory: Any) -> None:
    d = daemon_factory(mask="0x3", extra=["-e", "nvmf_tcp", "--num-trace-entries", "262144"])
    d.start()
    port = _target(d)
    info = d.rpc("trace_get_info")
    assert info["tpoint_group_mask"] == "0x20" and info["nvmf_tcp"]["tpoint_mask"] != "0x0"
    assert os.path.exists(info["tpoint_shm_path"])
    _run_perf(port, 1.5)
    reqs = _trace(d, "--slowest", "100000000")
    reads = [q for q in reqs if _check_phases(q)]
    assert len(reads) > 200, len(reads)
    # I/O queues went round-robin over both reactors: both rings have reads
    assert {q["ring"] for q in reads} == {0, 1}
    # the summary counts the same requests, with percentiles per phase
    s = _trace(d, "--summary")
    assert s["requests"] == len(reqs)
    for ph in READ_PHASES[1:]:
        lat = s["latency_us"][ph]
        assert 0 <= lat["p50"] <= lat["p99"] <= lat["max"], (ph, lat)
    # following one request: the text form names every phase
    q = reqs[len(reqs) // 2]
    text = d.cli("trace", "-n", d.name, "--request", q["key"]).stdout
    assert f"request {q['key']}" in text and "TCP_BDEV_DONE" in text and "phases:" in text
    # the raw event list is merged in time order over the rings
    evs = _trace(d, "--last", "200")
    assert [e["ts_ns"] for e in evs] == sorted(e["ts_ns"] for e in evs)
    assert {e["ring"] for e in evs} >= {0, 1}
    # connection events are another group: not recorded
    assert not [e for e in evs if e["group"] == "nvmf"]


def test_rpc_mask_changes_reach_every_reactor(daemon_factory: Any) -> None:
    # rings big enough that the controller events at the start are not overwritten
    d = daemon_factory(mask="0x3", extra=["--num-trace-entries", "524288"]).start()
    port = _target(d)
    m = d.rpc("trace_get_tpoint_group_mask")
    assert m["tpoint_group_mask"] == "0x0" and m["nvmf_tcp"] == {"enabled": False, "mask": "0x20"}
    _run_perf(port, 0.5)
    assert _trace(d) == []  # nothing enabled, nothing recorded
    assert d.cli("rpc", "-s", d.rpc_addr, "trace_enable_tpoint_group", "nvmf_tcp").returncode == 0
    d.rpc("trace_enable_tpoint_group", {"name": "nvmf"})
    d.rpc("trace_enable_tpoint_group", {"name": "rpc"})
    m = d.rpc("trace_get_tpoint_group_mask")
    assert m["nvmf_tcp"]["enabled"] and m["nvmf"]["enabled"] and m["rpc"]["enabled"]
    assert int(m["tpoint_group_mask"], 16) == (1 << 5) | (1 << 0x13) | (1 << 0x14)
    _run_perf(port, 0.5)
    evs = _trace(d)
    tcp = [e for e in evs if e["group"] == "nvmf_tcp"]
    assert {e["ring"] for e in tcp} == {0, 1}, "every reactor traces once the RPC returned"
    names = {e["tpoint"] for e in evs}
    assert {"QPAIR_CONNECT", "CTRLR_CREATE", "QPAIR_DISCONNECT", "TCP_QP_NEW"} <= names, names
    rpcs = [e for e in evs if e["group"] == "rpc"]
    assert rpcs and {e["role"] for e in rpcs} == {"supervisor"}
    n_tcp = len(tcp)
    d.rpc("trace_disable_tpoint_group", {"name": "all"})
    assert d.rpc("trace_get_tpoint_group_mask")["tpoint_group_mask"] == "0x0"
    _run_perf(port, 0.5)
    assert len([e for e in _trace(d) if e["group"] == "nvmf_tcp"]) == n_tcp
    # bad names are refused with invalid params, the mask untouched
    from blockfabric.control.client import RpcClient

    with RpcClient(d.rpc_addr, timeout=10) as c, pytest.raises(Exception, match="unknown tpoint"):
        c.call("trace_enable_tpoint_group", {"name": "nosuch"})
    assert d.rpc("trace_get_tpoint_group_mask")["tpoint_group_mask"] == "0x0"


def test_sigkill_under_load_leaves_a_ring_that_decodes(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory(mask="0x3", extra=["-e", "nvmf_tcp,bdev"]).start()
    port = _target(d)
    seg = f"/dev/shm/blockfabric.{d.name}.trace"
    perf = _perf(port, 30, workers=2, qd=16, rw="randrw")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # load on both reactors
            rings = {e["ring"] for e in _trace(d, "--last", "50") if e["group"] == "nvmf_tcp"}
            if rings == {0, 1}:
                break
            assert perf.poll() is None, perf.communicate()
            time.sleep(0.3)
        time.sleep(1.0)
        pids = d.pids()
        t_kill = time.perf_counter_ns()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            try:
                psutil.Process(pid).wait(10)
            except psutil.NoSuchProcess:
                pass
        d.started = False
    finally:
        perf.send_signal(signal.SIGINT)
        try:
            perf.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            perf.kill()
            perf.communicate()
    assert os.path.exists(seg), "the trace must survive a SIGKILL"
    out = subprocess.run(
        [*BIN, "trace", "-f", seg, "--last", "20", "--json"], env=d.env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    evs = json.loads(out.stdout)
    for ring in (0, 1):
        mine = [e for e in evs if e["ring"] == ring and e["group"] in ("nvmf_tcp", "bdev")]
        assert mine, f"reactor {ring}: no events in the leftover ring"
        # the last requests: recorded within the last seconds before the kill
        assert t_kill - mine[-1]["ts_ns"] < 5e9, (ring, mine[-1], t_kill)
    reqs = json.loads(
        subprocess.run(
            [*BIN, "trace", "-f", seg, "--slowest", "1000000", "--json"], env=d.env,
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    )  # fmt: skip
    assert {q["ring"] for q in reqs} == {0, 1}
    text = subprocess.run(
        [*BIN, "trace", "-f", seg, "--last", "5"], env=d.env, capture_output=True, text=True
    ).stdout
    assert "reactor 0" in text and "reactor 1" in text, text
    p = subprocess.run([*BIN, "shm", "cleanup"], env=d.env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert f"blockfabric.{d.name}.trace" in p.stdout
    assert not os.path.exists(seg)


def test_trace_record_copies_the_rings(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory(mask="0x1", extra=["-e", "nvmf_tcp", "--num-trace-entries", "16384"])
    d.start()
    port = _target(d)
    out = tmp_path / "rec.bftrace"
    rec = subprocess.Popen(
        [*BIN, "trace", "record", "-n", d.name, "-f", str(out), "--interval", "0.02"],
        env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        _run_perf(port, 2.0, workers=1, qd=4)
        time.sleep(0.5)
    finally:
        rec.send_signal(signal.SIGINT)
        so, se = rec.communicate(timeout=30)
    assert rec.returncode == 0, se
    assert "recorded" in so, so
    reqs = json.loads(d.cli("trace", "-f", str(out), "--slowest", "10000000", "--json").stdout)
    # more requests than one ring holds (6 records per read): the recorder kept them
    reads = [q for q in reqs if _check_phases(q)]
    assert len(reads) > 16384 // 6, len(reads)
    live = json.loads(d.cli("trace", "-n", d.name, "--json").stdout)
    assert len(live) <= 16384 * 2


def test_iscsi_requests_and_the_scsi_and_bdev_groups(daemon_factory: Any) -> None:
    d = daemon_factory(mask="0x1", extra=["-e", "iscsi,scsi,bdev"]).start()
    port = dlib.free_port()
    d.rpc("bdev_malloc_create", {"name": "Malloc1", "num_blocks": 8192, "block_size": 512})
    dlib.export_iscsi(d, port, {"n0": "Malloc1"})
    w = dlib.IscsiPatternWriter(port, "iqn.2016-06.io.blockfabric:n0").start()
    try:
        deadline = time.monotonic() + 60
        while w.ios < 100 and time.monotonic() < deadline and not w.error:
            time.sleep(0.1)
    finally:
        w.stop()
    assert not w.error and w.ios >= 100, (w.error, w.ios)
    reqs = [q for q in _trace(d, "--slowest", "100000000") if q["group"] == "iscsi_conn"]
    reads = [q for q in reqs if q["opc"] in (0x28, 0x88)]
    writes = [q for q in reqs if q["opc"] in (0x2A, 0x8A)]
    assert len(reads) > 20 and len(writes) > 20, (len(reads), len(writes))
    for q in reads:
        names = [p["phase"] for p in q["phases"]]
        assert names == READ_PHASES + ([] if names[-1] == "DATA_SENT" else ["RESP_SENT"]), q
    for q in writes:
        names = [p["phase"] for p in q["phases"]]
        assert names == ["PDU_RECV", "REQ_NEW", "BDEV_SUBMIT", "BDEV_DONE", "RESP_SENT"], q
        assert q["len"] > 0
    evs = _trace(d)
    names = {e["tpoint"] for e in evs}
    assert {"SCSI_TASK_START", "SCSI_TASK_DONE", "BDEV_IO_START", "BDEV_IO_DONE"} <= names
    assert {"ISCSI_CONN_FFP", "BDEV_CHANNEL_OPEN"} <= names, names
    # the bdev records name their bdev
    text = d.cli("trace", "-n", d.name, "--group", "bdev", "--last", "5").stdout
    assert "(Malloc1)" in text and "BDEV_IO_DONE" in text, text


def test_clean_stop_removes_the_trace(daemon_factory: Any) -> None:
    d = daemon_factory(mask="0x1", extra=["-e", "all"]).start()
    seg = f"/dev/shm/blockfabric.{d.name}.trace"
    assert os.path.exists(seg)
    d.stop()
    assert not os.path.exists(seg)


def test_bad_start_options_are_refused(daemon_factory: Any) -> None:
    for extra, why in (
        (["-e", "nosuch"], "unknown tpoint group"),
        (["--num-trace-entries", "1000"], "power of 2"),
    ):
        d = daemon_factory(mask="0x1", extra=extra)
        p = d.cli(
            "start", "--name", d.name, "-r", d.rpc_addr, "--empty", *extra, check=False,
            timeout=60,
        )  # fmt: skip
        assert p.returncode != 0 and why in p.stderr, (p.returncode, p.stderr)
        assert not os.path.exists(f"/dev/shm/blockfabric.{d.name}.trace")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))
