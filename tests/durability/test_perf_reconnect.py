"""`blockfabric perf --ctrlr-loss-timeout-sec` against a fake target that drops
its connections (as a killed reactor does), forgets its controllers (the
controller died with its admin queue), holds writes without answering them,
or loses acknowledged data (so the audit can fail).

The fake target (tests/transports/nvmf_host/nvmf_fake_target.py) keeps one
RAM namespace shared by every connection, so data survives a drop exactly
like a malloc bdev survives a reactor restart.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transports" / "nvmf_host"))
from nvmf_fake_target import SUBNQN, FakeTarget  # noqa: E402

from blockfabric.transports.nvmf import pdu as P  # noqa: E402
from blockfabric.transports.nvmf import spec as S  # noqa: E402

pytestmark = pytest.mark.timeout(120)


class DroppingTarget(FakeTarget):
    """FakeTarget plus faults: drop every connection, forget controllers,
    stop answering writes (``hold_writes``: applied or not, never answered)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.hold_writes = False
        self.apply_held = True
        self.held = 0

    def drop_all(self, forget: bool = False) -> int:
        with self.lock:
            conns, self.conns = list(self.conns), []
            if forget:
                self.ctrls.clear()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()
        return len(conns)

    def _io(self, st: dict[str, Any], sqe: S.Sqe, pdu: P.Pdu) -> list[Any]:
        if self.hold_writes and sqe.opcode == S.IO_WRITE and pdu.data is not None:
            self.held += 1
            if self.apply_held:
                slba = sqe.cdw10 | (sqe.cdw11 << 32)
                self.mem[slba * self.bs : slba * self.bs + len(pdu.data)] = pdu.data
            return []
        return super()._io(st, sqe, pdu)

    def _write_done(self, st: dict[str, Any], cid: int, slba: int, data: Any) -> list[Any]:
        if self.hold_writes:
            self.held += 1
            if self.apply_held:
                self.mem[slba * self.bs : slba * self.bs + len(data)] = data
            return []
        return super()._write_done(st, cid, slba, data)


def _perf(port: int, out: Path, seconds: float, *extra: str) -> subprocess.Popen[str]:
    trid = f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{SUBNQN}"
    args = ["-r", trid, "-q", "4", "-o", "4096", "-w", "randwrite", "-t", str(seconds)]
    args += ["-P", "2", "--verify", "--json", str(out), "--quiet", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "blockfabric.tools.cli", "perf", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(p: subprocess.Popen[str], out: Path) -> tuple[int, dict[str, Any], str]:
    try:
        so, se = p.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        p.kill()
        so, se = p.communicate()
    why = f"rc={p.returncode}\n{so[-3000:]}\n{se[-3000:]}"
    doc = json.loads(out.read_text()) if out.exists() else {}
    return p.returncode, doc, why


def _wait_ios(t: FakeTarget, n: int, timeout: float = 20.0, op: int | None = None) -> None:
    """N more commands (of opcode OP) reached the target."""

    def count() -> int:
        return len(t.commands) if op is None else t.commands.count(op)

    end = time.monotonic() + timeout
    start = count()
    while count() - start < n:
        assert time.monotonic() < end, "perf does no I/O"
        time.sleep(0.05)


def _wait_conns(t: FakeTarget, n: int, timeout: float = 20.0) -> None:
    """N connections are open (perf connects its workers' I/O queues one by
    one: on a loaded machine one worker can do hundreds of I/Os before the
    other has connected)."""
    end = time.monotonic() + timeout
    while True:
        with t.lock:
            if len(t.conns) >= n:
                return
        assert time.monotonic() < end, f"fewer than {n} connections"
        time.sleep(0.05)


RECONNECT = ["--ctrlr-loss-timeout-sec", "15", "--reconnect-delay-sec", "0.1"]


def test_reconnect_after_drops_and_lost_controller(tmp_path: Path) -> None:
    t = DroppingTarget(num_blocks=8192, block_size=512)
    try:
        out = tmp_path / "perf.json"
        p = _perf(t.port, out, 6, *RECONNECT)
        _wait_conns(t, 3)
        _wait_ios(t, 400)
        assert t.drop_all() >= 3  # admin + 2 I/O queues; the controller survives
        _wait_conns(t, 3)
        _wait_ios(t, 400, op=S.IO_WRITE)  # past the read-back audits: writing again
        assert t.drop_all(forget=True) >= 3  # the controller is gone: a new one
        _wait_ios(t, 400, op=S.IO_WRITE)
        rc, doc, why = _finish(p, out)
    finally:
        t.close()
    assert rc == 0, why
    tot = doc["total"]
    assert tot["miscompares"] == 0 and tot["errors"] == 0, why
    # a drop that hits a worker still recovering from the first one is part of
    # that recovery (on a loaded machine a worker may see the two as one)
    recs = [(w["reconnects"], len(w["recoveries"])) for w in doc["workers"]]
    assert all(1 <= n <= 2 and r == n for n, r in recs), recs
    assert doc["ctrlr_resets"] >= 1, why
    # every acknowledged write was read back after each reconnect
    assert tot["audited_units"] > 0, why
    assert f"reconnect: {tot['reconnects']} I/O queue reconnect(s)" in why, why


@pytest.mark.parametrize("applied", [True, False], ids=["landed", "lost"])
def test_writes_lost_in_flight_are_not_acknowledged(tmp_path: Path, applied: bool) -> None:
    """Writes the target never answered: the block holds the old or the new
    data; the audit accepts both and the run passes."""
    t = DroppingTarget(num_blocks=8192, block_size=512)
    try:
        out = tmp_path / "perf.json"
        p = _perf(t.port, out, 4, *RECONNECT)
        _wait_ios(t, 400)
        t.apply_held = applied
        t.hold_writes = True
        end = time.monotonic() + 10
        while t.held < 8 and time.monotonic() < end:  # both workers' queues full
            time.sleep(0.05)
        t.drop_all()
        t.hold_writes = False
        rc, doc, why = _finish(p, out)
    finally:
        t.close()
    assert rc == 0, why
    tot = doc["total"]
    assert tot["unacked_writes"] >= 8, why
    assert tot["miscompares"] == 0 and tot["errors"] == 0, why


def test_lost_acknowledged_writes_are_caught(tmp_path: Path) -> None:
    """The target loses data it acknowledged (its memory goes back to an old
    snapshot while the connections drop): the read-back after the reconnect
    reports miscompares and perf fails - the audit can fail."""
    t = DroppingTarget(num_blocks=8192, block_size=512)
    try:
        out = tmp_path / "perf.json"
        p = _perf(t.port, out, 4, *RECONNECT)
        _wait_ios(t, 200)
        snap = bytes(t.mem)
        _wait_ios(t, 2000)
        with t.lock:
            t.mem[:] = snap
        t.drop_all()
        rc, doc, why = _finish(p, out)
    finally:
        t.close()
    assert rc == 1, why
    assert doc["total"]["audit_miscompares"] > 0, why
    assert "miscompare at LBA" in why, why


def test_without_reconnect_a_drop_ends_the_run(tmp_path: Path) -> None:
    t = DroppingTarget(num_blocks=8192, block_size=512)
    try:
        out = tmp_path / "perf.json"
        p = _perf(t.port, out, 4)
        _wait_ios(t, 200)
        t.drop_all()
        rc, _doc, why = _finish(p, out)
    finally:
        t.close()
    assert rc == 1, why
    assert "connection closed by the target" in why or "Error" in why, why


def test_loss_timeout_gives_up(tmp_path: Path) -> None:
    """The target goes away for good: perf gives up after the loss timeout."""
    t = DroppingTarget(num_blocks=8192, block_size=512)
    out = tmp_path / "perf.json"
    p = _perf(t.port, out, 30, "--ctrlr-loss-timeout-sec", "1.5", "--reconnect-delay-sec", "0.2")
    try:
        _wait_ios(t, 200)
    finally:
        t.close()
    t.drop_all()
    t0 = time.monotonic()
    rc, _doc, why = _finish(p, out)
    assert rc == 1, why
    assert time.monotonic() - t0 < 20, why
    assert "ctrlr_loss_timeout_sec" in why or "no reconnect" in why, why


def test_recovery_bench_render() -> None:
    """bench/recovery.py's table from canned samples (nothing is started)."""
    root = Path(__file__).resolve().parents[2]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench import recovery

    res = {
        "machine": "m",
        "cpus": 2,
        "kills": 3,
        "delay_s": 0.02,
        "protocols": {
            "nvme": {"kills": 3, "median_ms": 900.4, "min_ms": 850, "max_ms": 1000,
                     "restart_median_ms": 880},
            "iscsi": {"kills": 3, "median_ms": 1010, "min_ms": 700, "max_ms": 1400,
                      "restart_median_ms": 990},
        },
    }  # fmt: skip
    md = recovery.render(res)
    assert "| NVMe/TCP (host library) | 3 | 900 | 850 | 1000 | 880 |" in md, md
    assert "| iSCSI (raw initiator) | 3 | 1010 | 700 | 1400 | 990 |" in md, md
