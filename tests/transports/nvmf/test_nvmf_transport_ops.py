"""The transport ops table and the transport-neutral core (issue 10 item 1).

A second, in-memory transport ("LOOPT", defined here, not TCP) is plugged in
through the ops table and a QueuePair subclass; the core's command path
(Connect, Property Set, Identify, Get Log Page, Read/Write with host data
fetched by the transport, CID conflicts, queue depth) runs on it unchanged,
and everything that names a transport (Identify fields, error log, discovery
log, qpair descriptions, nvmf_get_stats, listener RPCs) carries LOOPT's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping

import pytest

from blockfabric.shm.iobuf import IoVec
from blockfabric.transports.nvmf import discovery, spec
from blockfabric.transports.nvmf import transport as T
from blockfabric.transports.nvmf.core import NvmfTarget, target_for
from blockfabric.transports.nvmf.qpair import QueuePair
from blockfabric.transports.nvmf.request import XFER_H2C, Request
from blockfabric.transports.nvmf.tcp_ops import TCP

LOOP_CODE = spec.TRTYPE_LOOP


class LoopOps(T.NvmfTransportOps):
    trtype = "LOOPT"
    trtype_code = LOOP_CODE
    proto = "nvmf-loopt"
    adrfams = ("INTRA_HOST",)
    options = {
        "max_queue_depth": T.OptSpec(int, 8, 2, 64),
        "max_io_qpairs_per_ctrlr": T.OptSpec(int, 4, 1, 16),
        "in_capsule_data_size": T.OptSpec(int, 512, 0, 8192),
        "max_io_size": T.OptSpec(int, 65536, 4096, 1 << 20),
        "io_unit_size": T.OptSpec(int, 65536, 512, 1 << 20),
        "max_aq_depth": T.OptSpec(int, 16, 2, 64),
        "loop_flag": T.OptSpec(bool, False),
    }
    ignored_options = ("num_cqe",)

    def __init__(self) -> None:
        self.listening: dict[str, T.ListenAddress] = {}

    def check_address(self, la: Mapping[str, object]) -> T.ListenAddress:
        traddr = la.get("traddr")
        if not isinstance(traddr, str) or not traddr.startswith("loop"):
            raise ValueError("LOOPT addresses are loopN")
        return T.ListenAddress(self.trtype, "INTRA_HOST", traddr, str(la.get("trsvcid", "1")))

    def identify(self, opts: T.TransportOptsLike, admin: bool) -> T.IdentifyFields:
        return T.IdentifyFields(
            ioccsz=4 + opts.in_capsule_data_size // 16, iorcsz=2, icdoff=1, sgls=0x5, msdbd=3
        )

    def listen(self, host: T.ListenHost, addr: T.ListenAddress) -> tuple[str, str]:
        key = f"LOOPT:{addr.traddr}:{addr.trsvcid}"
        self.listening[key] = addr
        return key, addr.trsvcid

    def stop_listen(self, host: T.ListenHost, addr: T.ListenAddress, key: str) -> None:
        del self.listening[key]

    def tsas(self, listener: Mapping[str, object]) -> bytes:
        return b"\x07" + bytes(255)

    def poll_group_stats(self, target: NvmfTarget) -> dict[str, object]:
        return {
            "trtype": self.trtype,
            "loop_qpairs": sum(1 for q in target.qpairs if q.transport is self),
        }


LOOP = LoopOps()


class LoopQpair(QueuePair):
    """An in-memory transport: commands are submitted as SQEs, host data for
    H2C commands sits in ``host_data`` (the transport "fetches" it), and
    what the core sends back is recorded."""

    def __init__(self, target: NvmfTarget, key: str) -> None:
        super().__init__(target, LOOP, key, "loop-host:7", adrfam="INTRA_HOST")
        self.sent: list[tuple[str, int, int, int, bytes]] = []  # (kind, cid, status, result, data)
        self.host_data: dict[int, bytes] = {}
        self.fetching: list[Request] = []
        self.overflows = 0
        self.closed_by_transport = False
        self.woken = 0

    # the transport hooks
    def send_response(self, req: Request, status: int, result: int) -> None:
        self.sent.append(("resp", req.cid, status, result, struct.pack("<H", self.sqhd)))

    def send_data(self, req: Request, data: memoryview, status: int, result: int) -> bool:
        self.sent.append(("data", req.cid, status, result, bytes(data)))
        return False

    def fetch_data(self, req: Request) -> None:
        self.fetching.append(req)

    def pending_transfers(self) -> list[Request]:
        return list(self.fetching)

    def queue_full(self, req: Request) -> None:
        self.overflows += 1

    def transport_close(self) -> None:
        self.closed_by_transport = True

    def wake(self) -> None:
        self.woken += 1

    # the host side of the loop
    def deliver(self, req: Request) -> None:
        """Finish a fetch: copy host data in and run the command."""
        self.fetching.remove(req)
        data = self.host_data.pop(req.cid)
        iov: IoVec | None = req.iov
        if iov is not None:
            v = iov.views[0]
            v[: len(data)] = data
            req.data = v[: len(data)]
        else:
            req.data = memoryview(bytearray(data))
        self.execute(req)

    def submit_cmd(
        self,
        opcode: int,
        cid: int,
        nsid: int = 0,
        cdws: tuple[int, ...] = (),
        data: bytes | None = None,
        length: int = 0,
        fuse: int = 0,
    ) -> Request | None:
        c = (*cdws, 0, 0, 0, 0, 0, 0)
        cd = (c[0], c[1], c[2], c[3], c[4], c[5])
        dptr = spec.pack_sgl(0, len(data) if data is not None else length, spec.SGL_TYPE_TRANSPORT)
        sqe = spec.unpack_sqe(
            spec.pack_sqe(opcode, cid, nsid, cd, dptr, (spec.PSDT_SGL << 6) | fuse)
        )
        req = Request(self, sqe)
        if not self.submit(req):
            return None
        # a Fabrics command's FCTYPE (byte 4, where nsid is) gives its direction
        op = nsid & 0xFF if opcode == spec.FABRICS_OPCODE else opcode
        req.xfer = op & 3
        req.sgl_len = len(data) if data is not None else length
        if req.xfer & XFER_H2C and req.sgl_len:
            if data is not None:
                self.host_data[cid] = data
            self.start_h2c(req)
        else:
            self.execute(req)
        return req

    def last(self) -> tuple[str, int, int, int, bytes]:
        return self.sent[-1]


@pytest.fixture
def loop_ops() -> Iterator[LoopOps]:
    T.register_transport(LOOP)
    LOOP.listening.clear()
    yield LOOP
    T.unregister_transport(LOOP.trtype)


@pytest.fixture
def loop_target(h, loop_ops):  # type: ignore[no-untyped-def]
    rpc = h.FakeRpc(nreactors=1)
    h.setup_target(rpc, port_listener=False)
    assert rpc.rpc("nvmf_create_transport", {"trtype": "loopt", "max_queue_depth": 4, "num_cqe": 9})
    assert rpc.rpc(
        "nvmf_subsystem_add_listener",
        {"nqn": h.SUBNQN, "listen_address": {"trtype": "LOOPT", "traddr": "loop0", "trsvcid": "3"}},
    )
    key = rpc.nvmf.subsystems[h.SUBNQN]["listeners"][0]["key"]
    assert key == "LOOPT:loop0:3" and key in loop_ops.listening
    yield rpc, key
    rpc.stop()


def _connect_data(h, cntlid: int = 0xFFFF) -> bytes:  # type: ignore[no-untyped-def]
    d = bytearray(1024)
    d[0:16] = h.HOSTID
    struct.pack_into("<H", d, 16, cntlid)
    s = h.SUBNQN.encode()
    d[256 : 256 + len(s)] = s
    d[512 : 512 + len(h.HOSTNQN)] = h.HOSTNQN.encode()
    return bytes(d)


def _connect(h, rpc, qp: LoopQpair, qid: int, sqsize: int, cntlid: int = 0xFFFF) -> int:  # type: ignore[no-untyped-def]
    req = qp.submit_cmd(
        0x7F, 100, spec.FCTYPE_CONNECT, (qid << 16, sqsize, 0), _connect_data(h, cntlid)
    )
    assert req is not None
    qp.deliver(req)
    rpc.pump()
    kind, cid, status, result, _ = qp.last()
    assert (kind, cid, status) == ("resp", 100, 0), qp.sent
    return result & 0xFFFF


def _enable(rpc, qp: LoopQpair) -> None:  # type: ignore[no-untyped-def]
    qp.submit_cmd(
        0x7F, 101, spec.FCTYPE_PROPERTY_SET, (0, spec.PROP_CC, spec.CC_EN | (6 << 16) | (4 << 20))
    )
    rpc.pump()
    assert qp.last()[:3] == ("resp", 101, 0)


def _admin(h, rpc, key) -> tuple[LoopQpair, int]:  # type: ignore[no-untyped-def]
    qp = LoopQpair(target_for(rpc.reactors[0]), key)
    cntlid = _connect(h, rpc, qp, 0, 15)
    _enable(rpc, qp)
    return qp, cntlid


# ------------------------------------------------------------------ the ops table
def test_tcp_options_keep_spdk_defaults_and_bounds() -> None:
    d = TCP.defaults()
    assert d["trtype"] == "TCP"
    assert (d["max_queue_depth"], d["max_io_qpairs_per_ctrlr"], d["in_capsule_data_size"]) == (
        128,
        127,
        4096,
    )
    assert (d["max_io_size"], d["io_unit_size"], d["max_aq_depth"], d["c2h_success"]) == (
        131072,
        131072,
        128,
        True,
    )
    with pytest.raises(ValueError, match=r"max_queue_depth.*\[2, 65535\]"):
        TCP.validate({"max_queue_depth": 1})
    with pytest.raises(ValueError, match="must be an integer"):
        TCP.validate({"max_queue_depth": True})
    with pytest.raises(ValueError, match="must be a boolean"):
        TCP.validate({"zcopy": 1})
    with pytest.raises(ValueError, match="multiple of 16"):
        TCP.validate({"in_capsule_data_size": 4100})
    with pytest.raises(ValueError, match="not an option of transport TCP"):
        TCP.validate({"loop_flag": True})
    assert TCP.validate({"num_cqe": 5})["max_queue_depth"] == 128  # an RDMA option: ignored
    f = TCP.identify(TCP_OPTS(8192), admin=False)
    assert (f.ioccsz, f.iorcsz, f.icdoff, f.msdbd, f.sgls) == (
        (64 + 8192) // 16,
        1,
        0,
        1,
        0x1 | (1 << 20),
    )


class TCP_OPTS:
    def __init__(self, icd: int) -> None:
        self.in_capsule_data_size = icd


def test_registry_by_trtype(loop_ops) -> None:  # type: ignore[no-untyped-def]
    assert T.get_transport("tcp") is TCP and T.get_transport("LoopT") is loop_ops
    with pytest.raises(T.UnknownTransport, match="not supported"):
        T.get_transport("VFIOUSER")
    assert T.find_transport("nope") is None


def test_unavailable_transport_is_refused_with_its_reason(h, loop_ops, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rpc = h.FakeRpc(nreactors=1)
    try:
        monkeypatch.setattr(
            LoopOps, "unavailable", lambda self: "python3-loopverbs is not installed"
        )
        with pytest.raises(Exception, match="not available: python3-loopverbs is not installed"):
            rpc.rpc("nvmf_create_transport", {"trtype": "LOOPT"})
        assert rpc.nvmf.transports == {}
    finally:
        rpc.stop()


def test_create_transport_options_per_transport(h, loop_target) -> None:  # type: ignore[no-untyped-def]
    rpc, _key = loop_target
    got = {t["trtype"]: t for t in rpc.rpc("nvmf_get_transports")}
    assert set(got) == {"TCP", "LOOPT"}
    assert got["LOOPT"] == {**LOOP.defaults(), "max_queue_depth": 4}  # num_cqe ignored
    assert got["TCP"]["max_queue_depth"] == 128
    assert rpc.rpc("nvmf_get_transports", {"trtype": "loopt"}) == [got["LOOPT"]]
    with pytest.raises(Exception, match="already exists"):
        rpc.rpc("nvmf_create_transport", {"trtype": "LOOPT"})
    saved = rpc.nvmf.transports.pop("LOOPT")
    with pytest.raises(Exception, match=r"max_queue_depth.*\[2, 64\]"):  # LOOPT's own bounds
        rpc.rpc("nvmf_create_transport", {"trtype": "LOOPT", "max_queue_depth": 100})
    rpc.nvmf.transports["LOOPT"] = saved
    snap = rpc.reactors[0].nvmf_config
    assert set(snap["transports"]) == {"TCP", "LOOPT"}
    t = target_for(rpc.reactors[0])
    assert t.opts_for("LOOPT").max_queue_depth == 4 and t.opts_for("TCP").max_queue_depth == 128


def test_listener_rpcs_carry_the_transport(h, loop_target) -> None:  # type: ignore[no-untyped-def]
    rpc, key = loop_target
    [li] = rpc.rpc("nvmf_subsystem_get_listeners", {"nqn": h.SUBNQN})
    assert li["address"] == {
        "trtype": "LOOPT",
        "adrfam": "INTRA_HOST",
        "traddr": "loop0",
        "trsvcid": "3",
    }
    with pytest.raises(Exception, match="LOOPT addresses are loopN"):
        rpc.rpc(
            "nvmf_subsystem_add_listener",
            {"nqn": h.SUBNQN, "listen_address": {"trtype": "LOOPT", "traddr": "x", "trsvcid": "3"}},
        )
    # a transport must be created before it listens
    rpc.nvmf.transports.pop("LOOPT")
    with pytest.raises(Exception, match="Unable to find transport LOOPT"):
        rpc.rpc(
            "nvmf_subsystem_add_listener",
            {
                "nqn": h.SUBNQN,
                "listen_address": {"trtype": "LOOPT", "traddr": "loop1", "trsvcid": "3"},
            },
        )
    rpc.nvmf.transports["LOOPT"] = LOOP.defaults()
    assert rpc.rpc(
        "nvmf_subsystem_remove_listener",
        {"nqn": h.SUBNQN, "listen_address": {"trtype": "LOOPT", "traddr": "loop0", "trsvcid": "3"}},
    )
    assert key not in LOOP.listening  # stop_listen ran


# ------------------------------------------------------------------ the core on LOOPT
def test_core_runs_on_another_transport(h, loop_target) -> None:  # type: ignore[no-untyped-def]
    rpc, key = loop_target
    qp, cntlid = _admin(h, rpc, key)
    assert qp.qid == 0 and qp.opts.max_queue_depth == 4
    # Identify: the transport's capsule and SGL fields, MAXCMD from its options
    qp.submit_cmd(spec.ADMIN_IDENTIFY, 1, 0, (spec.CNS_CTRL,), length=4096)
    rpc.pump()
    kind, cid, _st, _r, b = qp.sent[-2]
    assert (kind, cid) == ("data", 1) and qp.last()[:3] == ("resp", 1, 0)
    assert struct.unpack_from("<IIHBB", b, 1792) == (4 + 512 // 16, 2, 1, 0, 3)
    assert struct.unpack_from("<I", b, 536)[0] == 0x5
    assert struct.unpack_from("<H", b, 514)[0] == 4  # MAXCMD
    # an error goes to the error log with the transport's TRTYPE
    qp.submit_cmd(0xC1, 2)  # a vendor opcode: Invalid Opcode
    rpc.pump()
    assert qp.last()[:3] == ("resp", 2, spec.ST_INVALID_OPCODE)
    qp.submit_cmd(spec.ADMIN_GET_LOG_PAGE, 3, 0, (spec.LID_ERROR | (15 << 16),), length=64)
    rpc.pump()
    entry = qp.sent[-2][4]
    assert struct.unpack_from("<QHH", entry, 0)[2] == 2 and entry[29] == LOOP_CODE
    # an I/O queue on it: write data the transport fetches, read it back
    io = LoopQpair(target_for(rpc.reactors[0]), key)
    _connect(h, rpc, io, 1, 3, cntlid)
    payload = bytes(range(256)) * 4
    w = io.submit_cmd(spec.IO_WRITE, 7, 1, (10, 0, 1), payload)
    assert w is not None and io.fetching == [w] and io.sent[-1][1] == 100  # no answer yet
    io.deliver(w)
    rpc.pump()
    assert io.last()[:3] == ("resp", 7, 0)
    io.submit_cmd(spec.IO_READ, 8, 1, (10, 0, 1), length=1024)
    rpc.pump()
    assert io.sent[-2][:2] == ("data", 8) and io.sent[-2][4] == payload
    assert io.last()[:3] == ("resp", 8, 0)
    assert io.counters.write_bytes == 1024 and io.counters.read_bytes == 1024


def test_core_admission_sqhd_cid_and_queue_depth(h, loop_target) -> None:  # type: ignore[no-untyped-def]
    rpc, key = loop_target
    _qp, cntlid = _admin(h, rpc, key)
    io = LoopQpair(target_for(rpc.reactors[0]), key)
    _connect(h, rpc, io, 1, 3, cntlid)  # SQ size 4
    sqhd0 = struct.unpack("<H", io.last()[4])[0]
    # writes held waiting for host data occupy the queue
    held = [io.submit_cmd(spec.IO_WRITE, c, 1, (c, 0, 0), bytes(512)) for c in (20, 21, 22)]
    assert all(r is not None for r in held) and len(io.reqs) == 3
    # a CID in use: answered with Command ID Conflict, the first untouched
    assert io.submit_cmd(spec.IO_WRITE, 21, 1, (0, 0, 0), bytes(512)) is None
    kind, cid, status, _r, sqhd = io.last()
    assert (kind, cid, status) == (
        "resp",
        21,
        spec.status_field(0, spec.SC_CMDID_CONFLICT, dnr=True),
    )
    assert struct.unpack("<H", sqhd)[0] == (sqhd0 + 4) % 4  # every admitted capsule moved SQHD
    assert io.reqs[21] is held[1]
    io.submit_cmd(spec.IO_WRITE, 23, 1, (0, 0, 0), bytes(512))
    assert len(io.reqs) == 4 and io.overflows == 0
    assert io.submit_cmd(spec.IO_WRITE, 24, 1, (0, 0, 0), bytes(512)) is None
    assert io.overflows == 1  # the transport's queue_full hook
    # close frees the requests waiting for data and tells the transport
    io.close("test")
    assert io.closed_by_transport and io.reqs == {}


def test_descriptions_stats_and_discovery_carry_the_transport(h, loop_target) -> None:  # type: ignore[no-untyped-def]
    rpc, key = loop_target
    qp, _cntlid = _admin(h, rpc, key)
    [d] = rpc.rpc("nvmf_subsystem_get_qpairs", {"nqn": h.SUBNQN})
    assert d["listen_address"] == {
        "trtype": "LOOPT",
        "adrfam": "INTRA_HOST",
        "traddr": "loop0",
        "trsvcid": "3",
    }
    assert d["peer_address"]["trtype"] == "LOOPT" and d["peer_address"]["traddr"] == "loop-host"
    st = rpc.rpc("nvmf_get_stats")
    [pg] = st["poll_groups"]
    trs = {t["trtype"]: t for t in pg["transports"]}
    assert trs["LOOPT"] == {"trtype": "LOOPT", "loop_qpairs": 1}
    assert trs["TCP"]["trtype"] == "TCP" and "h2c_timeouts" in trs["TCP"]
    # the discovery log: the listener's TRTYPE, ADRFAM, TREQ and TSAS from its ops
    t = target_for(rpc.reactors[0])
    page = discovery.log_page(t, h.HOSTNQN, key, LOOP)
    log = discovery.parse_log_page(page)
    cur, ent = log["entries"]
    assert cur["subtype"] == spec.SUBTYPE_CURRENT_DISCOVERY and cur["traddr"] == "loop0"
    assert (ent["trtype"], ent["adrfam"], ent["subnqn"], ent["sectype"]) == (
        LOOP_CODE,
        0xFE,
        h.SUBNQN,
        7,
    )
    assert all(e["trtype"] == LOOP_CODE for e in log["entries"])
    assert qp.describe()["thread"] == "nvmf_tgt_poll_group_0"


def test_save_config_recreates_both_transports(h, loop_target) -> None:  # type: ignore[no-untyped-def]
    rpc, _key = loop_target
    cfg = [e for e in rpc.nvmf.save_config() if e["method"] == "nvmf_create_transport"]
    assert {e["params"]["trtype"] for e in cfg} == {"TCP", "LOOPT"}
    lis = [e for e in rpc.nvmf.save_config() if e["method"] == "nvmf_subsystem_add_listener"]
    assert lis[0]["params"]["listen_address"]["trtype"] == "LOOPT"


def test_unexpected_exception_is_contained_to_the_queue(h, loop_target, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rpc, key = loop_target
    qp, _ = _admin(h, rpc, key)
    t = target_for(rpc.reactors[0])
    before = t.stats["qpair_exceptions"]
    monkeypatch.setattr(qp, "send_response", lambda *a: 1 / 0)
    qp.submit_cmd(spec.ADMIN_KEEP_ALIVE, 9)
    rpc.pump()
    assert qp.closed and qp.closed_by_transport and t.stats["qpair_exceptions"] == before + 1


def test_one_target_per_reactor_shared_by_drivers(h, loop_target) -> None:  # type: ignore[no-untyped-def]
    rpc, key = loop_target
    r = rpc.reactors[0]
    t = target_for(r)
    assert target_for(r) is t  # every NVMe-oF driver of the reactor gets this one
    qp, _ = _admin(h, rpc, key)
    ctrl = qp.ctrl
    assert ctrl is not None
    applied: list[object] = []
    orig = t.apply_config
    t.apply_config = lambda snap: (applied.append(snap), orig(snap))  # type: ignore[method-assign]
    t.on_config()
    t.on_config()  # a second driver's on_config for the same snapshot: applied once
    assert applied == []  # this snapshot was applied when it arrived
    r.nvmf_config = rpc.nvmf.snapshot()
    t.on_config()
    t.on_config()
    assert len(applied) == 1
    # a snapshot naming a transport this reactor cannot load keeps the others
    r.nvmf_config = {**rpc.nvmf.snapshot(), "transports": {"TCP": TCP.defaults(), "NOPE": {}}}
    t.on_config()
    assert set(t.transport_opts) == {"TCP"} and not qp.closed
