"""NVMe/RDMA host (transports/nvmf_host/rdma.py) with fake verbs.

`Wire` plays the RDMA NIC between our sans-I/O host queue and the target's
sans-I/O queue pair (rdma_qpair.py on a real NvmfTarget, FakeRpc harness):
a SEND of the host delivers the capsule into a target receive buffer, the
target's RDMA READ copies out of the host's arena (by the address and key of
the keyed SGL), its RDMA WRITE copies into it, its SEND lands the CQE in a
posted host receive slot. Nothing of the host is faked: Connect, properties,
Identify, I/O queue Connect with the CM CNTLID, in-capsule writes, keyed
writes/reads through staging buffers and through registered caller memory.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from blockfabric.transports.nvmf import rdma_proto as R
from blockfabric.transports.nvmf import spec
from blockfabric.transports.nvmf.core import target_for
from blockfabric.transports.nvmf.rdma import RDMA
from blockfabric.transports.nvmf.rdma_qpair import RdmaQpair
from blockfabric.transports.nvmf_host.queue import QueueFull, TransportError
from blockfabric.transports.nvmf_host.rdma import RdmaHostQueue, RdmaRejected, Send, layout

HOST_BASE = 0x7F0000000000
RKEY = 0x4321
USER_BASE = 0x7E0000000000  # a caller buffer "registered" apart from the arena
USER_RKEY = 0x777
ADDR = "10.0.2.15"


def make_queue(
    qid: int = 0,
    qsize: int = 32,
    cntlid: int = 0,
    icd_cap: int = 0,
    stage: int = 1 << 17,
    **kw: Any,
) -> tuple[RdmaHostQueue, bytearray]:
    mem = bytearray(layout(qsize, icd_cap, stage).size)
    return RdmaHostQueue(
        qid, qsize, memoryview(mem), HOST_BASE, RKEY, cntlid, icd_cap, stage, **kw
    ), mem


class Wire:
    """The fake NIC (and the target's `Verbs`) for one queue pair."""

    def __init__(self, rpc: Any, key: str, q: RdmaHostQueue, mem: bytearray, depth: int) -> None:
        self.rpc, self.q, self.mem = rpc, q, mem
        self.user = bytearray(1 << 16)  # memory the host's translate() knows
        target = target_for(rpc.reactors[0])
        creq = R.parse_connect(q.cm_private_data())
        self.depth = R.check_connect(creq, 32, 32, 127)
        self.qp = RdmaQpair(target, RDMA, self, self.depth, key, "10.0.2.15:50000", creq.qid)
        self.tbufs = [bytearray(64 + 4096) for _ in range(self.depth)]
        self.tfree = list(range(self.depth))
        self.hrecv = list(range(q.lay.nrecv))  # posted host receive slots
        self.reads: list[tuple[Any, list[memoryview], int, int]] = []
        self.tokens: list[Any] = []
        self.hcomp: list[int] = []
        self.disconnected = False
        self.events: list[str] = []
        self.registered = set()
        for ss in target.subsystems.values():
            for n in ss.namespaces.values():
                b = rpc.reactors[0].bdev(n.bdev_name)
                obj = getattr(b, "storage", None)
                if obj is not None:
                    self.registered.add(id(obj))
        q.established(R.pack_accept(self.depth))

    def _host_mem(self, addr: int, key: int, n: int) -> memoryview:
        if key == RKEY and HOST_BASE <= addr and addr - HOST_BASE + n <= len(self.mem):
            return memoryview(self.mem)[addr - HOST_BASE : addr - HOST_BASE + n]
        if key == USER_RKEY and USER_BASE <= addr and addr - USER_BASE + n <= len(self.user):
            return memoryview(self.user)[addr - USER_BASE : addr - USER_BASE + n]
        raise AssertionError(f"remote access {addr:#x}+{n} key {key:#x} outside registered memory")

    # ---- target Verbs
    def lkey(self, data: memoryview) -> int | None:
        return 7 if id(data.obj) in self.registered else None

    def post_read(self, req: Any, views: list[memoryview], addr: int, key: int) -> None:
        self.reads.append((req, views, addr, key))
        self.events.append("read")

    def post_response(
        self, data: memoryview | None, addr: int, key: int, cqe: bytes, token: Any
    ) -> None:
        if data is not None and data.nbytes:
            self._host_mem(addr, key, data.nbytes)[:] = data
            self.events.append("write")
        slot = self.hrecv.pop(0)  # an RNR error on real hardware if none is posted
        o = self.q.lay.recv_off + slot * R.CQE_SIZE
        self.mem[o : o + R.CQE_SIZE] = cqe
        self.hcomp.append(slot)
        self.tokens.append(token)
        self.events.append("send")

    def repost(self, slot: int) -> None:
        self.tfree.append(slot)

    def disconnect(self) -> None:
        self.disconnected = True

    # ---- the NIC
    def run(self, rounds: int = 20) -> None:
        q = self.q
        for _ in range(rounds):
            busy = False
            for s in q.take_tx():
                assert isinstance(s, Send)
                busy = True
                slot = self.tfree.pop(0)
                self.tbufs[slot][: s.length] = self.mem[s.off : s.off + s.length]
                q.on_send(s.cid, True)
                self.qp.capsule(slot, memoryview(self.tbufs[slot]), s.length)
            while self.reads:
                busy = True
                req, views, addr, key = self.reads.pop(0)
                for v in views:
                    v[:] = self._host_mem(addr, key, v.nbytes)
                    addr += v.nbytes
                self.qp.read_done(req, True)
            while self.tokens:
                busy = True
                self.qp.send_done(self.tokens.pop(0), True)
            while self.hcomp:
                busy = True
                slot = self.hcomp.pop(0)
                q.on_recv(slot, R.CQE_SIZE)
                self.hrecv.append(slot)  # the glue reposts it
            self.rpc.pump()
            if not busy and not q.tx:
                break

    def execute(self, submit: Any) -> tuple[int, int]:
        box: list[int] = []
        submit(lambda _r, st, res: box.extend((st, res)))
        self.run()
        assert box, "no completion"
        return box[0], box[1]


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
    yield rpc, key
    rpc.stop()


def _admin(h: Any, rpc: Any, key: str) -> tuple[Wire, int]:
    q, mem = make_queue(0, 32)
    w = Wire(rpc, key, q, mem, 32)
    st, res = w.execute(lambda cb: q.connect(h.SUBNQN, h.HOSTNQN, h.HOSTID, 0xFFFF, 0, cb))
    assert st == 0, hex(st)
    assert "read" in w.events  # the Connect data went by keyed SGL (RDMA READ)
    st, _ = w.execute(
        lambda cb: q.property_set(spec.PROP_CC, spec.CC_EN | (6 << 16) | (4 << 20), cb=cb)
    )
    assert st == 0
    return w, res & 0xFFFF


# ---------------------------------------------------------------- CM data
def test_cm_private_data_accept_and_reject() -> None:
    q, _ = make_queue(qid=3, qsize=64, cntlid=9)
    c = R.parse_connect(q.cm_private_data())
    assert (c.recfmt, c.qid, c.hrqsize, c.hsqsize, c.cntlid) == (0, 3, 64, 63, 9)
    assert R.check_connect(c, 128, 32, 127) == 64
    a, _ = make_queue(qid=0, qsize=32, cntlid=9)
    ca = R.parse_connect(a.cm_private_data())
    assert ca.cntlid == 0 and R.check_connect(ca, 128, 32, 127) == 32  # the admin queue fits AQ 32
    # CRQSIZE of the accept bounds the commands in flight
    q.established(R.pack_accept(16))
    assert q.ic_done and q.max_outstanding == 15 and q.crqsize == 16  # one receive spare
    got = [q.submit(spec.ADMIN_KEEP_ALIVE) for _ in range(15)]
    assert len({r.cid for r in got}) == 15 and not q.can_submit
    # by default half the queue is in flight (headroom for the target's reposts)
    assert make_queue(qid=1, qsize=64)[0].max_outstanding == 31
    assert make_queue(qid=1, qsize=64, inflight=40)[0].max_outstanding == 40
    r, _ = make_queue(qid=1)
    e = r.rejected(R.pack_reject(R.REJ_INVALID_HSQSIZE))
    assert isinstance(e, RdmaRejected) and e.sts == R.REJ_INVALID_HSQSIZE
    assert "invalid HSQSIZE" in str(e) and r.failed is e
    with pytest.raises(RdmaRejected):
        r.submit(spec.ADMIN_KEEP_ALIVE)


def test_capsule_forms_and_cid_reuse_waits_for_send_completion() -> None:
    q, mem = make_queue(qid=1, qsize=8, icd_cap=4096, stage=8192)
    q.established(R.pack_accept(8))
    q.icd_max = 4096
    small = memoryview(bytes(range(256)) * 2)
    q.write(1, 0, 1, small, None)
    (s,) = q.take_tx()
    assert s.length == 64 + 512
    cap = mem[s.off : s.off + s.length]
    assert cap[64:] == bytes(small) and cap[24 + 15] == R.SGL_INCAPSULE  # DPTR type byte
    # a write above the in-capsule size: keyed SGL at the CID's staging buffer, data copied in
    big = memoryview(bytes([0x5A]) * 8192)
    r2 = q.write(1, 8, 16, big, None)
    (s2,) = q.take_tx()
    k = R.unpack_keyed(mem[s2.off + 24 : s2.off + 40])
    assert s2.length == 64 and k.key == RKEY and k.length == 8192
    so = k.address - HOST_BASE
    assert mem[so : so + 8192] == bytes(big)
    # a read: keyed at staging, copied out at the response
    dst = memoryview(bytearray(4096))
    r3 = q.read(1, 0, 8, dst, None)
    (s3,) = q.take_tx()
    k3 = R.unpack_keyed(mem[s3.off + 24 : s3.off + 40])
    mem[k3.address - HOST_BASE : k3.address - HOST_BASE + 4096] = b"\x11" * 4096
    o = q.lay.recv_off
    mem[o : o + 16] = R.pack_cqe(r3.cid, 0, 0, 1, 1)
    assert q.on_recv(0, 16) == 1 and bytes(dst) == b"\x11" * 4096
    # completed before its SEND completion: the CID is not reused yet
    assert r3.cid not in q._free
    q.on_send(r3.cid, True)
    assert r3.cid in q._free
    # SEND completed first, then the response: freed at once
    q.on_send(r2.cid, True)
    mem[o + 16 : o + 32] = R.pack_cqe(r2.cid, 0, 0, 2, 1)
    q.on_recv(1, 16)
    assert r2.cid in q._free
    # broken streams fail the queue
    with pytest.raises(TransportError, match="16 expected"):
        q.on_recv(2, 8)
    q2, mem2 = make_queue(qid=1, qsize=8)
    q2.established(None)
    mem2[q2.lay.recv_off : q2.lay.recv_off + 16] = R.pack_cqe(5, 0, 0, 1, 1)
    with pytest.raises(TransportError, match="not outstanding"):
        q2.on_recv(0, 16)


def test_unregistered_buffer_above_staging_is_refused_and_slot_kept() -> None:
    q, _ = make_queue(qid=1, qsize=4, stage=4096)
    q.established(None)
    with pytest.raises(ValueError, match="staging"):
        q.read(1, 0, 16, memoryview(bytearray(8192)), None)
    assert q.outstanding == 0 and len(q._free) == len(q.slots) and not q.tx


# ---------------------------------------------------------------- end to end (fake NIC)
def test_admin_identify_and_io_against_the_target(h, rdma_target) -> None:  # type: ignore[no-untyped-def]
    rpc, key = rdma_target
    aw, cntlid = _admin(h, rpc, key)
    aq = aw.q
    ident = memoryview(bytearray(4096))
    st, _ = aw.execute(
        lambda cb: aq.submit(spec.ADMIN_IDENTIFY, 0, (1, 0, 0, 0, 0, 0), cb, read_into=ident)
    )
    assert st == 0
    ioccsz = struct.unpack_from("<I", ident, 1792)[0]
    icd = ioccsz * 16 - 64
    assert icd == 4096 and aq.stats["staged"] >= 2
    # I/O queue 1: the CM private data carries the CNTLID of the admin Connect
    q, mem = make_queue(1, 32, cntlid=cntlid, icd_cap=icd)
    assert R.parse_connect(q.cm_private_data()).cntlid == cntlid
    w = Wire(rpc, key, q, mem, 32)
    st, _ = w.execute(lambda cb: q.connect(h.SUBNQN, h.HOSTNQN, h.HOSTID, cntlid, 0, cb))
    assert st == 0, hex(st)
    q.icd_max = icd
    pat = memoryview(bytes((i * 13) & 0xFF for i in range(4096)))
    st, _ = w.execute(lambda cb: q.write(1, 0, 8, pat, cb))
    assert st == 0 and q.stats["incapsule"] == 1
    big = memoryview(bytes((i * 7 + 1) & 0xFF for i in range(16384)))
    st, _ = w.execute(lambda cb: q.write(1, 8, 32, big, cb))
    assert st == 0
    back = memoryview(bytearray(4096 + 16384))
    st, _ = w.execute(lambda cb: q.read(1, 0, 40, back, cb))
    assert st == 0 and bytes(back) == bytes(pat) + bytes(big)
    # caller memory the glue registered: used in place (no staging copy)
    staged = q.stats["staged"]
    user = memoryview(w.user)
    q.translate = lambda v: (USER_BASE + 4096, USER_RKEY) if v.obj is w.user else None
    st, _ = w.execute(lambda cb: q.read(1, 8, 8, user[4096:8192], cb))
    assert st == 0 and bytes(user[4096:8192]) == bytes(big[:4096])
    assert q.stats["staged"] == staged
    # many in flight: QD 15 of reads, each completes with its own data
    bufs = [memoryview(bytearray(512)) for _ in range(15)]
    done: list[int] = []
    for i, b in enumerate(bufs):
        q.read(1, i, 1, b, lambda _r, st, _res: done.append(st))
    w.run(60)
    assert done == [0] * 15
    whole = bytes(pat) + bytes(big)
    assert all(bytes(b) == whole[i * 512 : (i + 1) * 512] for i, b in enumerate(bufs))
    # an NVMe error status comes back as such (LBA out of range)
    st, _ = w.execute(lambda cb: q.read(1, 1 << 40, 1, bufs[0], cb))
    assert st != 0 and not w.disconnected


# ---------------------------------------------------------------- entry points
def test_perf_trid_rdma_parses_and_is_refused_without_pyverbs(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    from blockfabric.tools import perf

    t = perf.parse_trid("trtype:rdma adrfam:IPv4 traddr:10.0.2.15 trsvcid:4421 subnqn:nqn.x:y")
    assert (t["trtype"], t["traddr"], t["trsvcid"], t["subnqn"]) == (
        "RDMA",
        "10.0.2.15",
        "4421",
        "nqn.x:y",
    )
    for m in [m for m in sys.modules if m == "pyverbs" or m.startswith("pyverbs.")]:
        monkeypatch.delitem(sys.modules, m)
    monkeypatch.setitem(sys.modules, "pyverbs", None)
    with pytest.raises(perf.TridError, match="python3-pyverbs"):
        perf.parse_trid("trtype:RDMA traddr:10.0.2.15")
    from blockfabric.transports.nvmf_host.rdma_verbs import RdmaBlockingQueue

    with pytest.raises(TransportError, match="python3-pyverbs"):
        RdmaBlockingQueue("10.0.2.15", 4420, 0, 32, 1.0)


def test_perf_refuses_tcp_digests_over_rdma() -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "blockfabric.tools.cli", "perf", "-q", "1", "-o", "4096", "-w",
         "read", "-t", "1", "--hdgst", "-r", "trtype:RDMA traddr:10.0.2.15 trsvcid:4420"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "not with trtype RDMA" in r.stderr, r.stderr


def test_target_refuses_connect_qid_other_than_cm_private_data(h, rdma_target) -> None:  # type: ignore[no-untyped-def]
    rpc, key = rdma_target
    _aw, cntlid = _admin(h, rpc, key)
    # the CM private data says QID 1, the Fabrics Connect then asks for QID 2
    q, mem = make_queue(1, 32, cntlid=cntlid)
    w = Wire(rpc, key, q, mem, 32)
    assert w.qp.cm_qid == 1
    q.qid = 2
    st, res = w.execute(lambda cb: q.connect(h.SUBNQN, h.HOSTNQN, h.HOSTID, cntlid, 0, cb))
    assert (st >> 1) & 0xFF == spec.SC_CONNECT_INVALID_PARAM and (st >> 9) & 0x7 == 1, hex(st)
    assert res & 0xFFFF == spec.CONNECT_OFF_QID and not res >> 16 & 1  # in the SQE, at QID
    assert w.qp.qid < 0  # not connected
    # the same queue pair then takes the Connect for its own QID
    q.qid = 1
    st, _ = w.execute(lambda cb: q.connect(h.SUBNQN, h.HOSTNQN, h.HOSTID, cntlid, 0, cb))
    assert st == 0 and w.qp.qid == 1


def test_held_cids_do_not_block_submission_below_the_inflight_limit() -> None:
    # perf --verify submits the read-back from the write's completion, often
    # before that write's SEND completion: the CID is held, another is used
    q, mem = make_queue(qid=1, qsize=9, inflight=4)
    q.established(R.pack_accept(9))
    rs = [q.submit(spec.IO_FLUSH, 1) for _ in range(4)]
    with pytest.raises(QueueFull):
        q.submit(spec.IO_FLUSH, 1)
    sends = q.take_tx()
    for i, r in enumerate(rs):  # every response before any SEND completion
        o = q.lay.recv_off + i * R.CQE_SIZE
        mem[o : o + 16] = R.pack_cqe(r.cid, 0, 0, 1, 1)
        q.on_recv(i, 16)
    more = [q.submit(spec.IO_FLUSH, 1) for _ in range(4)]  # 4 held CIDs, 4 others
    assert {r.cid for r in more}.isdisjoint({r.cid for r in rs})
    for s in sends:
        q.on_send(s.cid, True)
    assert len(q._free) == len(q.slots) - 4


# ---------------------------------------------------------------- the glue, fake pyverbs
def test_glue_posts_every_send_of_a_batch_and_dispatches_completions(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sys
    import types

    from blockfabric.transports.nvmf_host import rdma_verbs as G

    e = types.SimpleNamespace(
        IBV_WR_SEND=0, IBV_SEND_SIGNALED=2, IBV_WC_SUCCESS=0, IBV_WC_WR_FLUSH_ERR=5
    )

    class SGE:
        def __init__(self, addr: int, length: int, lkey: int) -> None:
            self.addr, self.length, self.lkey = addr, length, lkey

    class SendWR:
        def __init__(
            self, wr_id: int, opcode: int, num_sge: int, sg: list[SGE], send_flags: int
        ) -> None:
            self.wr_id, self.sg, self.next_wr = wr_id, sg, None

    class RecvWR:
        def __init__(self, wr_id: int, num_sge: int, sg: list[SGE]) -> None:
            self.wr_id, self.sg = wr_id, sg

    wr = types.SimpleNamespace(SGE=SGE, SendWR=SendWR, RecvWR=RecvWR)
    pv = types.ModuleType("pyverbs")
    monkeypatch.setitem(sys.modules, "pyverbs", pv)
    monkeypatch.setitem(sys.modules, "pyverbs.enums", e)
    monkeypatch.setitem(sys.modules, "pyverbs.wr", wr)
    posted: list[SendWR] = []
    recvs: list[int] = []

    class QP:
        def post_send(self, w: SendWR) -> None:
            while w is not None:
                posted.append(w)
                w = w.next_wr

        def post_recv(self, w: RecvWR) -> None:
            recvs.append(w.wr_id)

    class WC:
        def __init__(self, wr_id: int, status: int = 0, byte_len: int = 16) -> None:
            self.wr_id, self.status, self.byte_len, self.vendor_err = wr_id, status, byte_len, 0

    class CQ:
        def __init__(self) -> None:
            self.wcs: list[WC] = []

        def poll(self, n: int) -> tuple[int, list[WC]]:
            out, self.wcs = self.wcs[:n], self.wcs[n:]
            return len(out), out

    q, mem = make_queue(qid=1, qsize=9, inflight=8)
    q.established(None)
    c = object.__new__(G.RdmaConn)
    c.q, c.closed, c.vqp, c.cq = q, False, QP(), CQ()
    c.arena_addr, c.lkey = HOST_BASE, 0x55
    rs = [q.submit(spec.IO_FLUSH, 1) for _ in range(5)]
    assert c.flush() == 5
    assert [w.wr_id for w in posted] == [r.cid for r in rs]  # the whole chain went out
    assert all(w.sg[0].lkey == 0x55 and w.sg[0].length == 64 for w in posted)
    # completions: two SENDs, one response (its receive slot is posted again)
    o = q.lay.recv_off
    mem[o : o + 16] = R.pack_cqe(rs[0].cid, 0, 0, 1, 1)
    c.cq.wcs = [WC(rs[0].cid), WC(rs[1].cid), WC(G.RECV_BIT | 0)]
    assert c.poll() == 3 and q.outstanding == 4 and recvs == [G.RECV_BIT | 0]
    # an error completion fails the queue, named by the first non-flush status
    c.cq.wcs = [WC(G.RECV_BIT | 1, status=5), WC(rs[2].cid, status=12)]
    with pytest.raises(TransportError, match="SEND completion status 12"):
        c.poll()
    assert q.failed is not None
