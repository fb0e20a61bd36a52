"""Acceptance: malformed input on raw sockets against a REAL daemon (2 reactors).

NVMe/TCP: each bad PDU gets a C2HTermReq with the right FES/FEI and the
connection closes, while an already connected controller keeps doing I/O and
a fresh connection works; a silent host with a short KATO is disconnected in
time and its cntlid is handed to the next controller.
iSCSI: each bad PDU / login gets a Reject, a login failure or a dropped
connection, never a crash: the daemon answers RPC, logs no traceback, and a
fresh session works.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import struct
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from blockfabric.transports.iscsi import pdu as IP
from blockfabric.transports.nvmf import pdu as P
from blockfabric.transports.nvmf import spec

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

NQN = "nqn.2016-06.io.blockfabric:malformed"
KA_NQN = "nqn.2016-06.io.blockfabric:kato"
BF_BASE = "iqn.2016-06.io.blockfabric"


def _load(name: str, path: Path) -> ModuleType:
    if name not in sys.modules:
        s = importlib.util.spec_from_file_location(name, path)
        assert s and s.loader
        mod = importlib.util.module_from_spec(s)
        sys.modules[name] = mod
        s.loader.exec_module(mod)
    return sys.modules[name]


HERE = Path(__file__).resolve().parent
raw = _load("bf_iscsi_raw", HERE / "bf_iscsi_raw.py")
# the raw NVMe/TCP host of the in-process tests (Client, TermReq)
nv = _load("bf_nvmf_raw_kit", HERE / "nvmf" / "conftest.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _daemon_clean(d: Any) -> None:
    log = d.log()
    assert "Traceback" not in log, f"traceback in the daemon log:\n{log[-4000:]}"
    assert d.rpc("spdk_get_version")


def _listener(d: Any, nqn: str, port: int) -> None:
    addr = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    d.rpc("nvmf_subsystem_add_listener", {"nqn": nqn, "listen_address": addr})


# ------------------------------------------------------------------ NVMe/TCP
_KA = spec.pack_sqe(spec.ADMIN_KEEP_ALIVE, 1)
NVME_CASES = [
    # (id, after ICReq, header digest, raw bytes, FES, FEI)
    ("bad_pdu_type", True, False, P.CH.pack(0x0B, 0, 24, 0, 24) + bytes(16),
     P.FES_INVALID_HEADER_FIELD, P.OFF_TYPE),
    ("bad_hlen", True, False, P.CH.pack(P.CAPSULE_CMD, 0, 80, 0, 80) + _KA + bytes(8),
     P.FES_INVALID_HEADER_FIELD, P.OFF_HLEN),
    ("bad_plen", True, False, P.CH.pack(P.CAPSULE_CMD, 0, 72, 0, 64) + _KA,
     P.FES_INVALID_HEADER_FIELD, P.OFF_PLEN),
    ("hdgst_mismatch", True, True,
     P.CH.pack(P.CAPSULE_CMD, P.FLAG_HDGSTF, 72, 0, 76) + _KA + b"\0\0\0\0",
     P.FES_HDGST_ERROR, 72),
    ("capsule_before_icreq", False, False, b"".join(P.encode_capsule_cmd(_KA)),
     P.FES_PDU_SEQUENCE_ERROR, P.OFF_TYPE),
    ("h2cdata_unknown_ttag", True, False,
     P.DATA_HDR.pack(P.H2C_DATA, 0, 24, 24, 28, 1, 0x55, 0, 4) + b"abcd",
     P.FES_INVALID_HEADER_FIELD, P.OFF_DATA_TTAG),
    ("oversized_incapsule", True, False,
     P.CH.pack(P.CAPSULE_CMD, 0, 72, 72, 72 + 9000) + _KA + bytes(9000),
     P.FES_DATA_LIMIT_EXCEEDED, P.OFF_PLEN),
]  # fmt: skip


def _nvmf_daemon(daemon_factory: Any, kas: int = 1) -> tuple[Any, int]:
    port = _free_port()
    d = daemon_factory(mask="0x3").start()
    d.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 8192, "block_size": 512})
    # kas=1: keep-alive granularity 100 ms, so a short KATO is honoured
    d.rpc("nvmf_create_transport", {"trtype": "TCP", "kas": kas})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True, "serial_number": "BFM1"})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}})
    _listener(d, NQN, port)
    return d, port


def _controller(addr: tuple[str, int], hostnqn: str, kato: int = 0, nqn: str = NQN) -> Any:
    a = nv.Client(addr)
    cntlid = a.admin_setup(subnqn=nqn, hostnqn=hostnqn, kato=kato)
    a.cntlid = cntlid
    return a


def _io_queue(addr: tuple[str, int], cntlid: int, hostnqn: str) -> Any:
    io = nv.Client(addr)
    io.icreq()
    cqe = io.connect(subnqn=NQN, hostnqn=hostnqn, qid=1, cntlid=cntlid, sqsize=31)
    assert cqe.status == 0, spec.split_status(cqe.status)
    return io


def test_nvmf_malformed_pdus(daemon_factory: Any) -> None:
    d, port = _nvmf_daemon(daemon_factory)
    addr = ("127.0.0.1", port)
    keeper_nqn = "nqn.2014-08.org.nvmexpress:uuid:11111111-0000-0000-0000-00000000aaaa"
    keeper = _controller(addr, keeper_nqn)
    kio = _io_queue(addr, keeper.cntlid, keeper_nqn)
    seen: dict[str, tuple[int, int]] = {}
    for i, (name, after_ic, hd, bad, fes, fei) in enumerate(NVME_CASES):
        c = nv.Client(addr, hdgst=hd)
        if after_ic:
            ic = c.icreq()
            assert ic[2] == int(hd), f"{name}: header digest not negotiated: {ic}"
        c.send(bad)
        with pytest.raises(nv.TermReq) as ei:
            c.recv_pdu()
        seen[name] = (ei.value.fes, ei.value.fei)
        assert c.is_closed(), f"{name}: the target did not close after the C2HTermReq"
        c.close()
        assert seen[name] == (fes, fei), f"{name}: FES/FEI {seen[name]} != {(fes, fei)}"
        # the other controller keeps working
        data = os.urandom(4096)
        assert kio.write(1, 8 * i, data).status == 0, name
        cqe, back = kio.read(1, 8 * i, 4096)
        assert cqe.status == 0 and back == data, f"{name}: keeper I/O broken"
        assert keeper.cmd(spec.ADMIN_KEEP_ALIVE)[0].status == 0, name
    # a fresh connection works
    fresh_nqn = "nqn.2014-08.org.nvmexpress:uuid:11111111-0000-0000-0000-00000000bbbb"
    fresh = _controller(addr, fresh_nqn)
    fio = _io_queue(addr, fresh.cntlid, fresh_nqn)
    assert fio.write(1, 100, bytes(512)).status == 0
    ctrls = d.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN})
    assert sorted(c["cntlid"] for c in ctrls) == sorted([keeper.cntlid, fresh.cntlid]), ctrls
    for c in (fio, fresh, kio, keeper):
        c.close()
    print(f"TermReq FES/FEI: {seen}")
    _daemon_clean(d)


def test_nvmf_kato_expiry_and_cntlid_reuse(daemon_factory: Any) -> None:
    d, port = _nvmf_daemon(daemon_factory, kas=1)
    # a one-id cntlid range: the next controller can only get the id back
    d.rpc(
        "nvmf_create_subsystem",
        {"nqn": KA_NQN, "allow_any_host": True, "min_cntlid": 7, "max_cntlid": 7},
    )
    d.rpc("nvmf_subsystem_add_ns", {"nqn": KA_NQN, "namespace": {"bdev_name": "Malloc0"}})
    _listener(d, KA_NQN, port)
    addr = ("127.0.0.1", port)
    kato_ms = 1000
    host_a = "nqn.2014-08.org.nvmexpress:uuid:22222222-0000-0000-0000-00000000000a"
    host_b = "nqn.2014-08.org.nvmexpress:uuid:22222222-0000-0000-0000-00000000000b"
    a = _controller(addr, host_a, kato=kato_ms, nqn=KA_NQN)
    assert a.cntlid == 7
    cqe, _ = a.cmd(spec.ADMIN_GET_FEATURES, cdws=(spec.FID_KATO,))
    assert cqe.result == kato_ms, f"KATO read back {cqe.result}"
    # keep-alives hold it past KATO
    for i in range(6):
        if i:
            time.sleep(kato_ms / 4000)
        assert a.cmd(spec.ADMIN_KEEP_ALIVE)[0].status == 0
    t0 = time.monotonic()  # the last command A sends
    # the id is taken while A lives: B's Connect fails
    b = nv.Client(addr)
    b.icreq()
    cqe = b.connect(subnqn=KA_NQN, hostnqn=host_b)
    assert cqe.status != 0, "a second controller got the only cntlid"
    b.close()
    # silence: A must be torn down within KATO + granularity (+ scheduling slack)
    closed = a.is_closed(timeout=kato_ms / 1000 + 0.1 + 1.5)
    took = time.monotonic() - t0
    a.close()
    assert closed, f"silent host still connected {took:.2f}s after its last command"
    assert took >= kato_ms / 1000 * 0.8, f"torn down too early ({took:.2f}s < KATO)"
    end = time.monotonic() + 3
    while d.rpc("nvmf_subsystem_get_controllers", {"nqn": KA_NQN}) and time.monotonic() < end:
        time.sleep(0.05)
    assert d.rpc("nvmf_subsystem_get_controllers", {"nqn": KA_NQN}) == []
    b = _controller(addr, host_b, nqn=KA_NQN)
    assert b.cntlid == 7, f"cntlid not reused: {b.cntlid}"
    ctrls = d.rpc("nvmf_subsystem_get_controllers", {"nqn": KA_NQN})
    assert [(c["cntlid"], c["hostnqn"]) for c in ctrls] == [(7, host_b)], ctrls
    b.close()
    print(f"KATO {kato_ms} ms: disconnected {took:.2f}s after the last command")
    _daemon_clean(d)


# ------------------------------------------------------------------ iSCSI
def _iscsi_daemon(daemon_factory: Any) -> tuple[Any, int]:
    port = _free_port()
    d = daemon_factory(mask="0x3").start()
    d.rpc(
        "iscsi_create_portal_group",
        {"tag": 1, "portals": [{"host": "127.0.0.1", "port": str(port)}]},
    )
    d.rpc(
        "iscsi_create_initiator_group",
        {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]},
    )
    for i, hd in ((0, False), (1, True)):
        d.rpc("bdev_malloc_create", {"name": f"Malloc{i}", "num_blocks": 8192, "block_size": 512})
        d.rpc(
            "iscsi_create_target_node",
            {
                "name": f"disk{i + 1}",
                "alias_name": f"disk{i + 1}",
                "luns": [{"bdev_name": f"Malloc{i}", "lun_id": 0}],
                "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
                "queue_depth": 16,
                "disable_chap": True,
                "header_digest": hd,
            },
        )
    return d, port


def _session(port: int, node: str = "disk1", hd: bool = False) -> Any:
    ini = raw.RawIscsi(port, f"{BF_BASE}:{node}", timeout=5)
    ini.login(header_digest=hd)
    assert ini.hd == hd, f"HeaderDigest negotiated {ini.keys.get('HeaderDigest')}"
    assert ini.clear_unit_attention().status == raw.GOOD
    return ini


def _outcome(ini: Any, itt: int | None = None, wait: float = 1.5) -> str:
    """What the target did with the last PDU: reject:<reason>, closed, answered, ignored."""
    ini.s.settimeout(wait)
    try:
        while True:
            r = ini.pump_one()
            if r.opcode == IP.OP_REJECT:
                return f"reject:{r.b2:#x}"
            if itt is not None and r.itt == itt:
                return "answered"
    except raw.Dropped:
        return "closed"
    except (ConnectionResetError, BrokenPipeError):
        return "closed"
    except TimeoutError:
        return "ignored"
    finally:
        ini.s.settimeout(ini.timeout)


def _still_usable(ini: Any, outcome: str) -> str:
    """The session after a bad PDU: still works, or the target dropped it (allowed)."""
    if outcome == "closed":
        return outcome
    try:
        r = ini.command(raw.TUR)
    except (raw.Dropped, ConnectionResetError, BrokenPipeError):
        return f"{outcome}+closed"
    assert r.status == raw.GOOD, f"session after {outcome}: TUR {r}"
    return f"{outcome}+session-ok"


def _bhs(
    ini: Any, opcode: int, itt: int, w: tuple[int, ...], dlen: int = 0, hd: bool = False
) -> bytes:
    b = bytearray(IP.encode_request(opcode, 0x80, 0, itt, w, immediate=False, header_digest=False))
    struct.pack_into(">I", b, 4, dlen & 0xFFFFFF)
    if hd:
        import crc32c

        b += struct.pack("<I", crc32c.crc32c(bytes(b)))
    return bytes(b)


def test_iscsi_malformed(daemon_factory: Any) -> None:
    d, port = _iscsi_daemon(daemon_factory)
    outcomes: dict[str, str] = {}

    def fresh_ok() -> None:
        _daemon_clean(d)
        s = _session(port, "disk1")
        data = os.urandom(4096)
        assert s.command(raw.write10(16, 8), data=data).status == raw.GOOD
        r = s.command(raw.read10(16, 8), 4096, read=True)
        assert r.status == raw.GOOD and bytes(r.data) == data
        s.logout()
        s.close()

    # 1. unknown opcode (0x1f is no initiator opcode)
    ini = _session(port)
    itt = ini.next_itt()
    ini.send(_bhs(ini, 0x1F, itt, (0, ini.cmdsn, ini.expstatsn, 0, 0, 0, 0)))
    outcomes["unknown_opcode"] = o = _outcome(ini)
    assert o.startswith("reject") or o == "closed", o
    outcomes["unknown_opcode"] = _still_usable(ini, o)
    ini.close()
    fresh_ok()

    # 2. data segment length beyond our MaxRecvDataSegmentLength (16 MiB - 1)
    ini = _session(port)
    itt = ini.next_itt()
    ini.send(
        _bhs(
            ini,
            IP.OP_NOP_OUT,
            itt,
            (IP.RSVD_TAG, ini.cmdsn, ini.expstatsn, 0, 0, 0, 0),
            dlen=0xFFFFFF,
        )
    )
    ini.send(bytes(65536))  # some of the announced data, never all of it
    outcomes["bad_dlen"] = o = _outcome(ini, itt)
    assert o.startswith("reject") or o == "closed", o
    ini.close()
    fresh_ok()

    # 3. header digest mismatch after negotiating CRC32C (disk2 requires it)
    ini = _session(port, "disk2", hd=True)
    itt = ini.next_itt()
    bhs = bytearray(
        IP.encode_request(IP.OP_SCSI_CMD, 0x81, 0, itt, (0, ini.cmdsn, ini.expstatsn, 0, 0, 0, 0))
    )
    ini.send(bytes(bhs) + b"\xde\xad\xbe\xef")  # wrong CRC32C
    outcomes["header_digest"] = o = _outcome(ini, itt)
    assert o != "answered", "a command with a bad header digest was executed"
    assert o in ("closed", "ignored") or o.startswith("reject"), o
    if o != "closed":
        # the CmdSN of the dropped PDU was never consumed: reuse it
        outcomes["header_digest"] = _still_usable(ini, o)
    ini.close()
    fresh_ok()

    # 4. CmdSN far outside the window: ignored (RFC 7143 3.2.2.1) or rejected
    ini = _session(port)
    itt = ini.next_itt()
    cdb = struct.unpack(">4I", bytes(16))
    ini.send(
        IP.encode_request(
            IP.OP_SCSI_CMD,
            0x81,
            0,
            itt,
            (0, (ini.cmdsn + 100000) & 0xFFFFFFFF, ini.expstatsn, *cdb),
        )
    )
    outcomes["cmdsn_out_of_window"] = o = _outcome(ini, itt)
    assert o != "answered", "a command outside the CmdSN window was executed"
    outcomes["cmdsn_out_of_window"] = _still_usable(ini, o)
    ini.close()
    fresh_ok()

    # 5. Data-Out for a TTT the target never gave out
    ini = _session(port)
    ini.send(
        IP.encode_request(
            IP.OP_DATA_OUT, 0x80, 0, 0x4242, (0x1234567, 0, ini.expstatsn, 0, 0, 0, 0), bytes(512)
        )
    )
    outcomes["dataout_unknown_ttt"] = o = _outcome(ini)
    assert o in ("closed", "ignored") or o.startswith("reject"), o
    outcomes["dataout_unknown_ttt"] = _still_usable(ini, o)
    ini.close()
    fresh_ok()

    # 6. login keys out of range: Reject (the default applies), a failed login or a close
    for key, val in (("MaxRecvDataSegmentLength", "1"), ("MaxBurstLength", "100"),
                     ("FirstBurstLength", "99999999999"), ("MaxConnections", "0")):  # fmt: skip
        ini = raw.RawIscsi(port, f"{BF_BASE}:disk1", timeout=5)
        try:
            # strict parse of the answer: a key twice in one PDU raises TextError
            keys = ini.login([(key, val)])
            o = f"login-ok {key}={keys.get(key)}"
            assert keys.get(key) == "Reject", o
            assert ini.clear_unit_attention().status == raw.GOOD, o
            r = ini.command(raw.read10(0, 128), 65536, read=True)
            assert r.status == raw.GOOD and len(r.data) == 65536, o
            if key == "MaxRecvDataSegmentLength":
                # our declaration was rejected: the target sends at most the default
                assert 0 < ini.max_data_in <= 8192, f"Data-In segments {ini.max_data_in}"
            ini.logout()
        except raw.LoginFailed as e:
            o = f"login-failed:{e.status:#06x}"
            assert e.status >> 8 == 2, o  # initiator error class
        except (raw.Dropped, ConnectionResetError):
            o = "closed"
        outcomes[f"login_{key}={val}"] = o
        ini.close()
        fresh_ok()
    print(f"iSCSI outcomes: {outcomes}")
    _daemon_clean(d)


def test_iscsi_login_reject_declares_no_key_twice() -> None:
    """Regression: MaxRecvDataSegmentLength=1 was answered "=Reject" AND with the
    target's own declaration in the same Login Response (a key twice in a PDU)."""
    kit = _load("bf_iscsi_unit_kit", HERE / "iscsi" / "conftest.py")
    from blockfabric.transports.iscsi import text

    h = kit.Harness()
    sec = [("InitiatorName", kit.INIT), ("TargetName", kit.TARGET), ("AuthMethod", "None")]
    r = h.feed(kit.login_req(sec, csg=0, nsg=1))
    assert r[0].w36 >> 16 == 0
    r = h.feed(kit.login_req([("MaxRecvDataSegmentLength", "1")], csg=1, nsg=3))
    pairs = text.parse(r[0].data)  # raises on a duplicate key
    assert dict(pairs)["MaxRecvDataSegmentLength"] == "Reject", pairs
    assert [k for k, _ in pairs].count("MaxRecvDataSegmentLength") == 1, pairs
