"""NVMe/RDMA target: the sans-I/O codec and queue pair with fake verbs.

`FakeVerbs` plays the RDMA NIC and the host's memory: RDMA READ copies from
the host buffer a keyed SGL names into the target's buffers, RDMA WRITE
copies the target's data there, SEND delivers the CQE. The queue pair runs
on the transport-neutral core with a real NvmfTarget (FakeRpc harness):
Connect (data fetched by RDMA READ), Identify (keyed SGL bits), I/O by
in-capsule data, RDMA READ and RDMA WRITE, and the error paths.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from blockfabric.transports.nvmf import rdma_proto as R
from blockfabric.transports.nvmf import spec
from blockfabric.transports.nvmf.core import target_for
from blockfabric.transports.nvmf.rdma import RDMA, RDMA_OPTIONS, listener_key
from blockfabric.transports.nvmf.rdma_qpair import RdmaQpair

HOST_BASE = 0x7F0000000000
RKEY = 0x1234
ADDR = "10.0.2.15"


# ---------------------------------------------------------------- codec
def test_connect_private_data_roundtrip_and_rejects() -> None:
    raw = R.pack_connect(qid=1, hrqsize=32, hsqsize=31, cntlid=5)
    assert len(raw) == 32
    req = R.parse_connect(raw)
    assert (req.recfmt, req.qid, req.hrqsize, req.hsqsize, req.cntlid) == (0, 1, 32, 31, 5)
    assert R.check_connect(req, 128, 128, 127) == 32
    with pytest.raises(R.CmError) as e:
        R.parse_connect(b"\0" * 4)
    assert e.value.sts == R.REJ_INVALID_LEN
    with pytest.raises(R.CmError) as e:
        R.parse_connect(struct.pack("<HHHHH", 1, 0, 32, 31, 0))
    assert e.value.sts == R.REJ_INVALID_RECFMT
    with pytest.raises(R.CmError) as e:
        R.check_connect(R.parse_connect(R.pack_connect(1, 300, 299)), 128, 128, 127)
    assert e.value.sts == R.REJ_INVALID_HSQSIZE
    with pytest.raises(R.CmError) as e:
        R.check_connect(R.parse_connect(R.pack_connect(1, 0, 31)), 128, 128, 127)
    assert e.value.sts == R.REJ_INVALID_HRQSIZE
    with pytest.raises(R.CmError) as e:
        R.check_connect(R.parse_connect(R.pack_connect(200, 32, 31)), 128, 128, 127)
    assert e.value.sts == R.REJ_INVALID_QID
    assert R.parse_accept(R.pack_accept(32)) == 32
    assert R.parse_reject(R.pack_reject(R.REJ_NO_RESOURCES)) == R.REJ_NO_RESOURCES


def test_keyed_sgl_and_identify_fields() -> None:
    d = R.pack_keyed(0xDEADBEEF000, 0x12345, 0xABCD, invalidate=True)
    assert len(d) == 16 and d[15] == 0x4F
    k = R.unpack_keyed(d)
    assert (k.address, k.length, k.key, k.invalidate) == (0xDEADBEEF000, 0x12345, 0xABCD, True)
    f = RDMA.identify(RDMA_OPTS(), admin=False)
    assert f.sgls & (1 << 2) and f.sgls & (1 << 20) and f.sgls & 1  # keyed + offsets
    assert (f.ioccsz, f.iorcsz, f.icdoff, f.msdbd) == ((64 + 4096) // 16, 1, 0, 1)
    assert RDMA.tsas({})[:3] == bytes((1, 1, 1))  # RC, prtype not specified, RDMA_CM


class RDMA_OPTS:
    in_capsule_data_size = 4096


def test_options_spdk_names_and_bounds() -> None:
    d = RDMA.defaults()
    assert d["trtype"] == "RDMA" and d["io_unit_size"] == 8192 and d["num_cqe"] == 4096
    assert d["max_srq_depth"] == 4096 and d["no_srq"] is False
    assert RDMA_OPTIONS["num_cqe"].short == "-d" and RDMA_OPTIONS["no_srq"].short == "-r"
    assert RDMA_OPTIONS["max_srq_depth"].short == "-s"
    with pytest.raises(ValueError, match="multiple of 16"):
        RDMA.validate({"in_capsule_data_size": 100})
    with pytest.raises(ValueError, match="max_srq_depth"):
        RDMA.validate({"max_srq_depth": 1})
    assert RDMA.validate({"zcopy": True})["trtype"] == "RDMA"  # a TCP option: ignored
    with pytest.raises(ValueError, match="wildcard"):
        RDMA.check_address({"traddr": "0.0.0.0", "trsvcid": "4420"})
    assert listener_key(ADDR, "4420") == "RDMA:10.0.2.15:4420"


# ---------------------------------------------------------------- fake verbs
class FakeVerbs:
    def __init__(self) -> None:
        self.host = bytearray(1 << 20)  # the host's memory, at HOST_BASE
        self.reads: list[tuple[Any, list[memoryview], int, int]] = []
        self.responses: list[
            tuple[int, int, int, int, bytes | None]
        ] = []  # cid status result sqhd data
        self.tokens: list[Any] = []
        self.reposted: list[int] = []
        self.events: list[str] = []
        self.disconnected = False
        self.qp: RdmaQpair | None = None
        self.registered_objs: set[int] = set()

    def lkey(self, data: memoryview) -> int | None:
        return 7 if id(data.obj) in self.registered_objs else None

    def post_read(self, req: Any, views: list[memoryview], addr: int, key: int) -> None:
        assert key == RKEY
        self.reads.append((req, views, addr, key))
        self.events.append("read")

    def post_response(
        self, data: memoryview | None, addr: int, key: int, cqe: bytes, token: Any
    ) -> None:
        self.events.append("write+send" if data is not None else "send")
        if data is not None:
            assert key == RKEY and addr >= HOST_BASE
            off = addr - HOST_BASE
            self.host[off : off + data.nbytes] = data
        dw0, dw1, sqhd, sqid, cid, status = R.CQE.unpack(cqe)
        self.responses.append((cid, status, dw0 | (dw1 << 32), sqhd, bytes(data) if data else None))
        self.tokens.append(token)

    def repost(self, slot: int) -> None:
        self.reposted.append(slot)
        self.events.append(f"repost{slot}")

    def disconnect(self) -> None:
        self.disconnected = True

    # the NIC finishes what was posted
    def run(self) -> None:
        assert self.qp is not None
        while self.reads or self.tokens:
            while self.reads:
                req, views, addr, _k = self.reads.pop(0)
                off = addr - HOST_BASE
                for v in views:
                    v[:] = self.host[off : off + len(v)]
                    off += len(v)
                self.qp.read_done(req, True)
            while self.tokens:
                self.qp.send_done(self.tokens.pop(0), True)


class Host:
    """Builds command capsules the way the Linux nvme-rdma host does."""

    def __init__(self, qp: RdmaQpair, fv: FakeVerbs, rpc: Any) -> None:
        self.qp, self.fv, self.rpc = qp, fv, rpc
        self.slot = 0
        self.cid = 0

    def send(
        self,
        opcode: int,
        nsid: int = 0,
        cdws: tuple[int, ...] = (),
        keyed: tuple[int, int] | None = None,
        inline: bytes | None = None,
        dptr: bytes | None = None,
        cid: int | None = None,
        fctype: int | None = None,
    ) -> tuple[int, int, int, int, bytes | None]:
        if cid is None:
            self.cid += 1
            cid = self.cid
        c = (*cdws, 0, 0, 0, 0, 0, 0)
        if dptr is None:
            if keyed is not None:
                dptr = R.pack_keyed(HOST_BASE + keyed[0], keyed[1], RKEY, invalidate=True)
            elif inline is not None:
                dptr = R.pack_incapsule(0, len(inline))
            else:
                dptr = bytes(16)
        sqe = bytearray(
            spec.pack_sqe(
                opcode, cid, nsid, (c[0], c[1], c[2], c[3], c[4], c[5]), dptr, spec.PSDT_SGL << 6
            )
        )
        if fctype is not None:
            sqe[4] = fctype
        buf = bytearray(64 + 4096)
        buf[:64] = sqe
        n = 64
        if inline is not None:
            buf[64 : 64 + len(inline)] = inline
            n += len(inline)
        before = len(self.fv.responses)
        self.slot = (self.slot + 1) % 32
        self.qp.capsule(self.slot, memoryview(buf), n)
        for _ in range(10):
            self.fv.run()
            self.rpc.pump()
        assert len(self.fv.responses) > before, "no response"
        return self.fv.responses[-1]


def _connect_data(h: Any, cntlid: int = 0xFFFF) -> bytes:
    d = bytearray(1024)
    d[0:16] = h.HOSTID
    struct.pack_into("<H", d, 16, cntlid)
    s = h.SUBNQN.encode()
    d[256 : 256 + len(s)] = s
    d[512 : 512 + len(h.HOSTNQN)] = h.HOSTNQN.encode()
    return bytes(d)


@pytest.fixture
def rdma_target(h):  # type: ignore[no-untyped-def]
    rpc = h.FakeRpc(nreactors=1)
    h.setup_target(rpc, port_listener=False)
    assert rpc.rpc("nvmf_create_transport", {"trtype": "RDMA", "max_queue_depth": 32})
    assert rpc.rpc(
        "nvmf_subsystem_add_listener",
        {"nqn": h.SUBNQN, "listen_address": {"trtype": "RDMA", "traddr": ADDR, "trsvcid": "4420"}},
    )
    key = rpc.nvmf.subsystems[h.SUBNQN]["listeners"][0]["key"]
    assert key == "RDMA:10.0.2.15:4420"
    yield rpc, key
    rpc.stop()


def _qpair(rpc: Any, key: str, depth: int = 32, qid: int = 0) -> tuple[RdmaQpair, FakeVerbs, Host]:
    fv = FakeVerbs()
    target = target_for(rpc.reactors[0])
    qp = RdmaQpair(target, RDMA, fv, depth, key, "10.0.2.15:50000", qid)
    fv.qp = qp
    # the MemBdev storage counts as registered memory (malloc segments are)
    ns = target.subsystems
    for ss in ns.values():
        for n in ss.namespaces.values():
            b = rpc.reactors[0].bdev(n.bdev_name)
            for attr in ("data", "mem", "storage", "buf"):
                obj = getattr(b, attr, None)
                if obj is not None:
                    fv.registered_objs.add(id(obj))
    return qp, fv, Host(qp, fv, rpc)


def _connect(h: Any, host: Host, qid: int, sqsize: int, cntlid: int = 0xFFFF) -> int:
    host.fv.host[0:1024] = _connect_data(h, cntlid)
    cid, st, res, _sqhd, _ = host.send(
        spec.FABRICS_OPCODE, spec.FCTYPE_CONNECT, (qid << 16, sqsize, 0), keyed=(0, 1024),
        fctype=spec.FCTYPE_CONNECT,
    )  # fmt: skip
    assert st == 0, hex(st)
    return res & 0xFFFF


def _admin(h: Any, rpc: Any, key: str) -> tuple[RdmaQpair, FakeVerbs, Host, int]:
    qp, fv, host = _qpair(rpc, key)
    cntlid = _connect(h, host, 0, 31)
    _c, st, *_ = host.send(
        spec.FABRICS_OPCODE, spec.FCTYPE_PROPERTY_SET,
        (0, spec.PROP_CC, spec.CC_EN | (6 << 16) | (4 << 20)), fctype=spec.FCTYPE_PROPERTY_SET,
    )  # fmt: skip
    assert st == 0
    return qp, fv, host, cntlid


def test_connect_by_rdma_read_and_identify_reports_keyed_sgls(h, rdma_target) -> None:  # type: ignore[no-untyped-def]
    rpc, key = rdma_target
    qp, fv, host, cntlid = _admin(h, rpc, key)
    assert cntlid >= 1 and qp.qid == 0
    assert "read" in fv.events  # the Connect data came by RDMA READ
    # Identify Controller into the host's buffer at offset 8192 (RDMA WRITE)
    _c, st, _r, _sqhd, data = host.send(spec.ADMIN_IDENTIFY, 0, (1,), keyed=(8192, 4096))
    assert st == 0 and data is not None and len(data) == 4096
    ident = bytes(fv.host[8192 : 8192 + 4096])
    assert ident == data
    sgls = struct.unpack_from("<I", ident, 536)[0]
    assert sgls & (1 << 2) and sgls & (1 << 20)
    ioccsz, iorcsz = struct.unpack_from("<II", ident, 1792)
    assert (ioccsz, iorcsz) == ((64 + 4096) // 16, 1)
    assert qp.stats["bounce"] >= 1  # admin data is built in Python: copied once
    d = qp.describe()
    assert d["listen_address"]["trtype"] == "RDMA"  # type: ignore[index]
    assert d["listen_address"]["traddr"] == ADDR  # type: ignore[index]


def test_io_inline_write_keyed_read_write_and_repost_order(h, rdma_target) -> None:  # type: ignore[no-untyped-def]
    rpc, key = rdma_target
    _aq, _afv, _ah, cntlid = _admin(h, rpc, key)
    qp, fv, host = _qpair(rpc, key, depth=32, qid=1)
    _connect(h, host, 1, 31, cntlid)
    assert qp.qid == 1
    pat = bytes(range(256)) * 16  # 4 KiB
    # Write LBA 0..7 with in-capsule data
    _c, st, *_ = host.send(spec.IO_WRITE, 1, (0, 0, 7), inline=pat)
    assert st == 0
    # the receive buffer went back before the response was sent
    i = len(fv.events) - 1
    assert fv.events[i] == "send" and fv.events[i - 1].startswith("repost")
    # Read it back by RDMA WRITE into host offset 65536
    _c, st, _r, _s, data = host.send(spec.IO_READ, 1, (0, 0, 7), keyed=(65536, 4096))
    assert st == 0 and bytes(fv.host[65536 : 65536 + 4096]) == pat
    # an 8 KiB Write by RDMA READ from host offset 131072, read back
    big = bytes((i * 7) & 0xFF for i in range(8192))
    fv.host[131072 : 131072 + 8192] = big
    _c, st, *_ = host.send(spec.IO_WRITE, 1, (16, 0, 15), keyed=(131072, 8192))
    assert st == 0
    _c, st, *_ = host.send(spec.IO_READ, 1, (16, 0, 15), keyed=(262144, 8192))
    assert st == 0 and bytes(fv.host[262144 : 262144 + 8192]) == big
    assert qp.stats["rdma_read"] >= 2 and qp.stats["rdma_write"] >= 2


def test_bad_descriptors_get_nvme_errors(h, rdma_target) -> None:  # type: ignore[no-untyped-def]
    rpc, key = rdma_target
    _aq, _afv, _ah, cntlid = _admin(h, rpc, key)
    qp, fv, host = _qpair(rpc, key, depth=32, qid=1)
    _connect(h, host, 1, 31, cntlid)
    sc = lambda st: (st >> 1) & 0xFF  # noqa: E731
    # transport SGL data block (TCP's): not for RDMA
    _c, st, *_ = host.send(
        spec.IO_READ, 1, (0, 0, 7), dptr=spec.pack_sgl(0, 4096, spec.SGL_TYPE_TRANSPORT)
    )
    assert sc(st) == spec.SC_SGL_INVALID_TYPE
    # a keyed length beyond max_io_size
    _c, st, *_ = host.send(spec.IO_READ, 1, (0, 0, 7), keyed=(0, 1 << 20))
    assert sc(st) == spec.SC_DATA_SGL_LENGTH_INVALID
    # in-capsule data longer than the capsule carries
    _c, st, *_ = host.send(
        spec.IO_WRITE, 1, (0, 0, 7), dptr=R.pack_incapsule(0, 4096), inline=b"x" * 512
    )
    assert sc(st) == spec.SC_DATA_SGL_LENGTH_INVALID
    # a segment descriptor (MSDBD is 1)
    _c, st, *_ = host.send(
        spec.IO_READ, 1, (0, 0, 7), dptr=spec.pack_sgl(0, 32, spec.SGL_LAST_SEGMENT << 4)
    )
    assert sc(st) == spec.SC_SGL_INVALID_TYPE
    assert not fv.disconnected


def test_short_capsule_and_overrun_disconnect(h, rdma_target) -> None:  # type: ignore[no-untyped-def]
    rpc, key = rdma_target
    qp, fv, _host = _qpair(rpc, key, depth=2)
    qp.capsule(0, memoryview(bytearray(64)), 20)
    assert fv.disconnected and qp.closed and 0 in fv.reposted
    qp2, fv2, host2 = _qpair(rpc, key, depth=2)
    # two commands that wait for the supervisor (Connect), then a third: overrun
    fv2.host[0:1024] = _connect_data(h)
    for slot in range(3):
        sqe = spec.pack_sqe(
            spec.FABRICS_OPCODE, 10 + slot, spec.FCTYPE_CONNECT, (0, 31, 0, 0, 0, 0),
            R.pack_keyed(HOST_BASE, 1024, RKEY), spec.PSDT_SGL << 6,
        )  # fmt: skip
        b = bytearray(sqe)
        b[4] = spec.FCTYPE_CONNECT
        qp2.capsule(slot, memoryview(b), 64)  # READs stay posted: the commands stay outstanding
    assert fv2.disconnected and qp2.closed


def test_without_pyverbs_rdma_is_refused_naming_the_package(h, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    for m in [m for m in sys.modules if m == "pyverbs" or m.startswith("pyverbs.")]:
        monkeypatch.delitem(sys.modules, m)
    monkeypatch.setitem(sys.modules, "pyverbs", None)  # import pyverbs now raises ImportError
    why = RDMA.unavailable()
    assert why is not None and "python3-pyverbs" in why
    rpc = h.FakeRpc(nreactors=1)
    try:
        with pytest.raises(Exception, match="python3-pyverbs"):
            rpc.rpc("nvmf_create_transport", {"trtype": "RDMA"})
        assert "RDMA" not in rpc.nvmf.transports
    finally:
        rpc.stop()
