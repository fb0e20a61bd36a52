"""NVMe reservations end to end (issue 12 item 2): our host library over
NVMe/TCP against a running daemon with 2 reactors, three host identities
whose I/O queues sit on both reactors; every reservation type and every row
of the command-behaviour table on every reactor, notifications, preempt and
abort (waiting commands aborted, running ones drained first), Set Features
Host Identifier (64-bit form and EDS), PTPL across a restart."""

from __future__ import annotations

import os
import socket
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from blockfabric.transports.nvmf import spec
from blockfabric.transports.nvmf_host.controller import Controller
from blockfabric.transports.nvmf_host.queue import NvmeStatusError

pytestmark = pytest.mark.e2e
NQN = "nqn.2016-06.io.blockfabric:resv"
BS = 512
CONFLICT = 0x83
ABORTED_PREEMPT = 0x1B
WE, EA, WERO, EARO, WEAR, EAAR = 1, 2, 3, 4, 5, 6
# the spec's table (see test_nvmf_reservation.py): (read group, write group)
TABLE = {
    WE: {"holder": "AA", "registrant": "AC", "other": "AC"},
    EA: {"holder": "AA", "registrant": "CC", "other": "CC"},
    WERO: {"holder": "AA", "registrant": "AA", "other": "AC"},
    EARO: {"holder": "AA", "registrant": "AA", "other": "CC"},
    WEAR: {"holder": "AA", "registrant": "AA", "other": "AC"},
    EAAR: {"holder": "AA", "registrant": "AA", "other": "CC"},
}
KEYS = {"holder": 0x1111, "registrant": 0x2222, "other": 0x3333}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _export(d: Any, ptpl_dir: Path, port: int | None = None) -> int:
    d.rpc("bdev_malloc_create", {"name": "M0", "num_blocks": 4096, "block_size": BS})
    d.rpc("bdev_malloc_create", {"name": "M1", "num_blocks": 4096, "block_size": BS})
    d.rpc(
        "bdev_delay_create",
        {
            "base_bdev_name": "M1",
            "name": "Slow",
            "avg_read_latency": 0,
            "p99_read_latency": 0,
            "avg_write_latency": 600_000,
            "p99_write_latency": 600_000,
        },
    )
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    ns1 = {"bdev_name": "M0", "nsid": 1, "ptpl_file": str(ptpl_dir / "ns1.ptpl")}
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": ns1})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Slow", "nsid": 2}})
    port = port or _free_port()
    la = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    d.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": la})
    return port


def _host(port: int, n: int) -> Controller:
    hid = uuid.UUID(int=0x5E5E0000 + n).bytes
    c = Controller(
        "127.0.0.1",
        port,
        NQN,
        hostnqn=f"nqn.2014-08.org.nvmexpress:uuid:{uuid.UUID(bytes=hid)}",
        hostid=hid,
        nr_io_queues=2,
        timeout=30.0,
    )
    return c.connect()


def _queues_by_reactor(d: Any, c: Controller) -> dict[str, int]:
    """reactor thread name -> index of this host's I/O queue there."""
    out = {}
    for q in d.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN}):
        if q["cntlid"] == c.cntlid and q["qid"] > 0:
            out[q["thread"]] = q["qid"] - 1
    return out


def _status(fn: Any) -> int:
    try:
        fn()
    except NvmeStatusError as e:
        return int(e.sc) if e.sct == 0 else 0x100 | e.sc
    return 0


def _compare(c: Controller, nsid: int, slba: int, data: bytes, q: int) -> None:
    bq = c._ioq(q)
    cd = (slba & 0xFFFFFFFF, slba >> 32, len(data) // BS - 1, 0, 0, 0)
    bq.execute(lambda cb: bq.q.submit(spec.IO_COMPARE, nsid, cd, cb, write_from=data), "Compare")


def _commands(c: Controller, q: int) -> dict[str, tuple[bool, Any]]:
    """name -> (write group, call) for every command of the two groups we serve."""
    blk = bytes(BS)
    return {
        "read": (False, lambda: c.read(1, 10, 1, BS, q=q)),
        "compare": (False, lambda: _compare(c, 1, 3000, blk, q)),
        "write": (True, lambda: c.write(1, 3000, blk, BS, q=q)),
        "write_zeroes": (True, lambda: c.write_zeroes(1, 3000, 1, q=q)),
        "dsm": (True, lambda: c.deallocate(1, [(3000, 1)], q=q)),
        "flush": (True, lambda: c.flush(1, q=q)),
    }


@pytest.fixture
def target(daemon_factory: Any, tmp_path: Path) -> Any:
    d = daemon_factory(mask="0x3").start()
    port = _export(d, tmp_path)
    hosts = {role: _host(port, i) for i, role in enumerate(("holder", "registrant", "other"))}
    try:
        yield d, port, hosts
    finally:
        for c in hosts.values():
            c.close()


def test_identify_advertises_reservations(target: Any) -> None:
    d, _port, hosts = target
    c = hosts["holder"]
    idc = c.identify(spec.CNS_CTRL)
    oncs = struct.unpack_from("<H", idc, 520)[0]
    assert oncs & 0x20  # Reservations
    assert c.identify(spec.CNS_NS, 1)[31] == 0xFF  # RESCAP: PTPL (file), 6 types, IEKEY
    assert c.identify(spec.CNS_NS, 2)[31] == 0xFE  # no PTPL file
    logs = c.get_log_page(spec.LID_SUPPORTED_LOGS, 1024, nsid=0)
    assert struct.unpack_from("<I", logs, 0x80 * 4)[0] & 1


def test_every_type_and_conflict_row_on_both_reactors(target: Any) -> None:
    d, _port, hosts = target
    qmaps = {r: _queues_by_reactor(d, c) for r, c in hosts.items()}
    threads = sorted(qmaps["holder"])
    assert len(threads) == 2 and all(sorted(m) == threads for m in qmaps.values()), qmaps
    h, g = hosts["holder"], hosts["registrant"]
    for i, rtype in enumerate(TABLE):
        # the reservation is taken through a queue on one reactor ...
        t_cmd = threads[i % 2]
        qh, qg = qmaps["holder"][t_cmd], qmaps["registrant"][t_cmd]
        h.resv_register(1, 0, nrkey=KEYS["holder"], q=qh)
        g.resv_register(1, 0, nrkey=KEYS["registrant"], q=qg)
        h.resv_acquire(1, 0, rtype, KEYS["holder"], q=qh)
        rep = g.resv_report(1, q=qg)
        assert rep.rtype == rtype and len(rep.regs) == 2
        assert {hid: hold for _c, hold, hid, _k in rep.regs} == {
            h.hostid: True,
            g.hostid: rtype in (WEAR, EAAR),
        }
        # ... and every command of every role is checked on both reactors
        for role, c in hosts.items():
            for t in threads:
                for name, (writes, call) in _commands(c, qmaps[role][t]).items():
                    want = TABLE[rtype][role][1 if writes else 0]
                    got = _status(call)
                    assert got == (0 if want == "A" else CONFLICT), (rtype, role, t, name, got)
            # reservation commands: report never conflicts, acquire of a
            # non-registrant does
            assert _status(lambda c=c: c.resv_report(1)) == 0
        o = hosts["other"]
        t_ = rtype
        assert _status(lambda o=o, t_=t_: o.resv_acquire(1, 0, t_, KEYS["other"])) == CONFLICT
        assert _status(lambda o=o, t_=t_: o.resv_release(1, 0, t_, KEYS["other"])) == CONFLICT
        assert _status(lambda t_=t_: g.resv_acquire(1, 0, t_, KEYS["holder"])) == CONFLICT
        # clear: everything goes, the others are told (reservation preempted)
        h.resv_release(1, 1, 0, KEYS["holder"], q=qmaps["holder"][threads[(i + 1) % 2]])
        assert g.resv_notification()[1] == 3
        assert g.resv_notification()[1] == 0  # read: gone
        for role, c in hosts.items():
            assert _status(lambda c=c: c.write(1, 3000, bytes(BS), BS)) == 0, role
    assert "Traceback" not in d.log()


def test_release_notice_and_mask(target: Any) -> None:
    d, _port, hosts = target
    h, g = hosts["holder"], hosts["registrant"]
    h.resv_register(1, 0, nrkey=1)
    g.resv_register(1, 0, nrkey=2)
    h.resv_acquire(1, 0, WERO, 1)
    h.resv_release(1, 0, WERO, 1)
    count, ntype, avail, nsid = g.resv_notification()
    assert (ntype, avail, nsid) == (2, 0, 1) and count >= 1  # reservation released
    # masked (feature 82h, bit 2): no entry
    g.set_features(0x82, 1 << 2, nsid=1)
    assert g.get_features(0x82, nsid=1) == 1 << 2
    h.resv_acquire(1, 0, WERO, 1)
    h.resv_release(1, 0, WERO, 1)
    assert g.resv_notification()[1] == 0
    # the wrong release type: Invalid Field
    h.resv_acquire(1, 0, WE, 1)
    assert _status(lambda: h.resv_release(1, 0, EA, 1)) == spec.SC_INVALID_FIELD


def test_preempt_and_abort(target: Any) -> None:
    """B preempts A with abort: A's write waiting for its data completes with
    Command Aborted due to Preempt and Abort and writes nothing; A's write
    already in the (600 ms) bdev finishes before B's command completes; A's
    next write is in conflict; A is told its registration was preempted."""
    d, _port, hosts = target
    a, b = hosts["holder"], hosts["registrant"]
    a.resv_register(2, 0, nrkey=0xA)
    b.resv_register(2, 0, nrkey=0xB)
    a.resv_acquire(2, 0, WE, 0xA)
    before = b.read(2, 0, 256, BS)
    # A: a 128 KiB write (above the in-capsule size: it waits for R2T + data)
    bq = a._ioq(0)
    box: list[int] = []
    big = os.urandom(256 * BS)
    bq.q.write(2, 0, 256, memoryview(big), lambda _r, st, _res: box.append(st))
    bq._flush()  # the command goes out; its R2T is left unanswered for now
    # A: a small write on its other queue that reaches the slow bdev
    bq2 = a._ioq(1)
    box2: list[tuple[int, float]] = []
    small = os.urandom(BS)
    bq2.q.write(
        2, 300, 1, memoryview(small), lambda _r, st, _res: box2.append((st, time.monotonic()))
    )
    bq2._flush()
    time.sleep(0.2)  # both are at the target now
    t0 = time.monotonic()
    b.resv_acquire(2, 2, WE, 0xB, prkey=0xA)  # preempt and abort
    took = time.monotonic() - t0
    # the preemption waited for the running write (600 ms in the bdev) ...
    assert took >= 0.25, took
    # ... whose completion was on its way before the preemption completed
    with bq2.lock:
        bq2._run(lambda: bool(box2), time.monotonic() + 5, "write")
    assert box2[0][0] == 0, box2
    # the waiting one is aborted now that its data comes
    with bq.lock:
        bq._run(lambda: bool(box), time.monotonic() + 30, "write")
    assert spec.split_status(box[0])[:2] == (0, ABORTED_PREEMPT), hex(box[0])
    assert b.read(2, 0, 256, BS) == before  # nothing of it landed
    assert _status(lambda: a.write(2, 0, bytes(BS), BS)) == CONFLICT
    assert a.resv_notification()[1] == 1  # registration preempted
    rep = b.resv_report(2)
    assert rep.rtype == WE and [r[2] for r in rep.regs] == [b.hostid]


def test_host_identifier_64bit_and_eds(target: Any) -> None:
    d, _port, hosts = target
    c = hosts["other"]
    assert c.get_host_id() == c.hostid
    hid64 = bytes.fromhex("0123456789abcdef")
    c.set_host_id(hid64)
    assert c.get_host_id(extended=False) == hid64
    assert _status(lambda: c.get_host_id(extended=True)) == spec.SC_INVALID_FIELD
    c.resv_register(1, 0, nrkey=0x64)
    # the extended report needs a 128-bit identifier, the other a 64-bit one
    assert _status(lambda: c.resv_report(1, eds=True)) == 0x18
    rep = c.resv_report(1, eds=False)
    assert [(r[2], r[3]) for r in rep.regs] == [(hid64, 0x64)]
    # registered: the identifier may not change now
    assert _status(lambda: c.set_host_id(os.urandom(16))) == spec.SC_CMD_SEQ_ERROR
    # the 64-bit identity is what I/O queues on both reactors are checked as
    c.resv_acquire(1, 0, EA, 0x64)
    g = hosts["registrant"]
    assert _status(lambda: g.read(1, 0, 1, BS)) == CONFLICT
    for q in (0, 1):
        c.write(1, 5, bytes(BS), BS, q=q)


def test_ptpl_survives_restart(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory(mask="0x3").start()
    port = _export(d, tmp_path)
    a, b = _host(port, 7), _host(port, 8)
    try:
        a.resv_register(1, 0, nrkey=0x77, cptpl=3)  # register, PTPL on
        b.resv_register(1, 0, nrkey=0x88)
        a.resv_acquire(1, 0, EARO, 0x77)
        assert a.get_features(0x83, nsid=1) == 1
        gen = a.resv_report(1).gen
    finally:
        a.close(), b.close()
    d.stop()
    assert (tmp_path / "ns1.ptpl").exists()
    d2 = daemon_factory(mask="0x3").start()
    _export(d2, tmp_path, port)
    a, c = _host(port, 7), _host(port, 9)
    try:
        rep = a.resv_report(1)
        assert rep.rtype == EARO and rep.ptpls and rep.gen == gen
        assert {r[2]: r[3] for r in rep.regs} == {a.hostid: 0x77, _hid(8): 0x88}
        assert _status(lambda: c.read(1, 0, 1, BS)) == CONFLICT  # survives, on every reactor
        a.write(1, 0, bytes(BS), BS, q=0)
        a.write(1, 0, bytes(BS), BS, q=1)
        # PTPL off (Set Features 83h): the next start has nothing
        a.set_features(0x83, 0, nsid=1)
        assert a.get_features(0x83, nsid=1) == 0
    finally:
        a.close(), c.close()
    d2.stop()
    d3 = daemon_factory(mask="0x3").start()
    _export(d3, tmp_path, port)
    a = _host(port, 7)
    try:
        rep = a.resv_report(1)
        assert rep.rtype == 0 and not rep.regs and not rep.ptpls
    finally:
        a.close()


def _hid(n: int) -> bytes:
    return uuid.UUID(int=0x5E5E0000 + n).bytes


def test_notification_aen(target: Any) -> None:
    """A notice for a host completes its outstanding Asynchronous Event
    Request (type I/O command specific, Reservation Log Page Available,
    LID 80h); reading the page re-arms it."""
    d, _port, hosts = target
    h, g = hosts["holder"], hosts["registrant"]
    aq = g._admin()
    box: list[tuple[int, int]] = []
    with aq.lock:
        aq.q.submit(spec.ADMIN_ASYNC_EVENT, 0, cb=lambda _r, st, res: box.append((st, res)))
        aq._flush()
    h.resv_register(1, 0, nrkey=1)
    g.resv_register(1, 0, nrkey=2)
    h.resv_acquire(1, 0, EARO, 1)
    assert not box
    h.resv_release(1, 0, EARO, 1)  # registrants-only: the others are told
    with aq.lock:
        aq._run(lambda: bool(box), time.monotonic() + 10, "AER")
    st, res = box[0]
    assert st == 0 and res & 0x7 == 6 and (res >> 8) & 0xFF == 0 and (res >> 16) & 0xFF == 0x80
    assert g.resv_notification()[1] == 2


def test_restarted_reactor_enforces_the_reservation(daemon_factory: Any, tmp_path: Path) -> None:
    """A reactor killed and restarted gets the reservation with its
    configuration: the conflict holds on its queues too."""
    import signal

    d = daemon_factory(mask="0x3").start()
    port = _export(d, tmp_path)
    h = _host(port, 20)
    try:
        h.resv_register(1, 0, nrkey=5)
        h.resv_acquire(1, 0, EA, 5)
    finally:
        h.close()
    st = d.rpc("blockfabric_get_status")["reactors"]
    victim = st[1]
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        r = d.rpc("blockfabric_get_status")["reactors"][1]
        if r["pid"] != victim["pid"] and r["state"] == "running":
            break
        assert time.monotonic() < deadline, r
        time.sleep(0.2)
    o = _host(port, 21)
    try:
        qm = _queues_by_reactor(d, o)
        assert len(qm) == 2, qm
        for q in qm.values():
            assert _status(lambda q=q: o.read(1, 0, 1, BS, q=q)) == CONFLICT
            assert _status(lambda q=q: o.write(1, 0, bytes(BS), BS, q=q)) == CONFLICT
    finally:
        o.close()


def test_add_ns_ptpl_file_rpc(daemon_factory: Any, tmp_path: Path) -> None:
    from blockfabric.control.client import RpcClientError

    d = daemon_factory().start()
    _export(d, tmp_path)
    cfg = d.rpc("save_config")
    nvmf = next(s for s in cfg["subsystems"] if s["subsystem"] == "nvmf")
    add = [c["params"] for c in nvmf["config"] if c["method"] == "nvmf_subsystem_add_ns"]
    assert add[0]["namespace"]["ptpl_file"] == str(tmp_path / "ns1.ptpl")
    assert "ptpl_file" not in add[1]["namespace"]
    d.rpc("bdev_malloc_create", {"name": "M9", "num_blocks": 64, "block_size": BS})
    with pytest.raises(RpcClientError, match="folder"):
        d.rpc(
            "nvmf_subsystem_add_ns",
            {"nqn": NQN, "namespace": {"bdev_name": "M9", "ptpl_file": "/nonexistent/x.ptpl"}},
        )
    nss = next(s for s in d.rpc("nvmf_get_subsystems") if s["nqn"] == NQN)["namespaces"]
    assert [n["nsid"] for n in nss] == [1, 2]  # the refused one was not added


def test_malformed_reservation_commands(target: Any) -> None:
    """Short data, a report longer than the host's buffer, reserved actions,
    an unknown namespace: the right status, and the target keeps serving."""
    d, _port, hosts = target
    c = hosts["holder"]
    bq = c._ioq(0)

    def raw(op: int, nsid: int, cdw10: int, cdw11: int = 0, **kw: Any) -> int:
        cd = (cdw10, cdw11, 0, 0, 0, 0)
        return _status(lambda: bq.execute(lambda cb: bq.q.submit(op, nsid, cd, cb, **kw), "raw"))

    sgl_len_invalid = spec.SC_DATA_SGL_LENGTH_INVALID
    assert raw(spec.IO_RESV_REGISTER, 1, 0, write_from=bytes(8)) == sgl_len_invalid
    assert raw(spec.IO_RESV_ACQUIRE, 1, 0, write_from=bytes(4)) == sgl_len_invalid
    assert raw(spec.IO_RESV_RELEASE, 1, 0) == sgl_len_invalid  # no data at all
    # NUMD asks for 4 KiB, the buffer has 64 bytes: refused before building
    assert raw(spec.IO_RESV_REPORT, 1, 1023, 1, read_into=bytearray(64)) == sgl_len_invalid
    assert raw(spec.IO_RESV_REPORT, 1, 0xFFFFFFFF, 1, read_into=bytearray(64)) == sgl_len_invalid
    assert raw(spec.IO_RESV_REGISTER, 9, 0, write_from=bytes(16)) == spec.SC_INVALID_NS
    assert raw(spec.IO_RESV_REGISTER, 1, 7, write_from=struct.pack("<QQ", 0, 1)) == 2
    assert raw(spec.IO_RESV_ACQUIRE, 1, 0x0700, write_from=bytes(16)) == 2  # no type 7
    assert raw(spec.IO_RESV_ACQUIRE, 1, 0x0100, write_from=bytes(16)) == CONFLICT  # unregistered
    # a short report (8 bytes asked): just the start of the header
    buf = bytearray(8)
    assert raw(spec.IO_RESV_REPORT, 1, 1, 1, read_into=buf) == 0
    c.resv_register(1, 0, nrkey=3)
    assert c.resv_report(1).regs[0][3] == 3
    assert "Traceback" not in d.log()
