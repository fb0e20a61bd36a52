"""Hostile hosts (issue 8) and write semantics (issue 9) on the sans-I/O queue pair:
every bound, every timeout (fake clock), backpressure, containment, pool
buffers for R2T transfers, FUA / Volatile Write Cache / Flush / Compare-and-Write."""

from __future__ import annotations

import os
import struct
import uuid
from typing import Any

import pytest

from blockfabric.bdevs.base import IoStatus
from blockfabric.shm.iobuf import IoBufs
from blockfabric.shm.pool import BufferPool
from blockfabric.transports.nvmf import admin, spec
from blockfabric.transports.nvmf import pdu as P
from blockfabric.transports.nvmf.driver import DRIVER
from blockfabric.transports.nvmf.nqn import DISCOVERY_NQN
from blockfabric.transports.nvmf.tcp import FUA, TcpQpair

from .conftest import MemBdev, MemChannel


def _j(bufs: list[Any]) -> bytes:
    return b"".join(bytes(b) for b in bufs)


def _st(cqe: spec.Cqe) -> tuple[int, int]:
    sct, sc = spec.split_status(cqe.status)[:2]
    return sct, sc


# ------------------------------------------------------------ a recording bdev
class RecChannel(MemChannel):
    """MemChannel with the new channel contract: fua on writes, flush and
    compare_and_write(cb(status, first_diff)); records what it was asked."""

    def __init__(self, bdev: MemBdev) -> None:
        super().__init__(bdev)
        self.ops: list[tuple[str, int, bool]] = bdev.ops  # type: ignore[attr-defined]
        self.write_through = False

    def write(self, offset_blocks: int, data: memoryview, cb: Any, fua: bool = False) -> None:  # type: ignore[override]
        self.ops.append(("write", offset_blocks, fua))
        super().write(offset_blocks, data, cb)

    def write_zeroes(self, offset_blocks: int, num_blocks: int, cb: Any) -> None:
        self.ops.append(("write_zeroes", offset_blocks, False))
        super().write_zeroes(offset_blocks, num_blocks, cb)

    def flush(self, cb: Any) -> None:
        self.ops.append(("flush", 0, False))
        super().flush(cb)

    def compare_and_write(  # type: ignore[override]
        self, offset: int, cmp: memoryview, wr: memoryview, cb: Any, fua: bool = False
    ) -> None:
        self.ops.append(("caw", offset, fua))
        bs = self.bs
        cur = self.mem[offset * bs : offset * bs + len(cmp)]
        if cur != cmp:
            first = next(i for i in range(len(cmp)) if cur[i] != cmp[i])
            return cb(IoStatus.MISCOMPARE, first)
        self.mem[offset * bs : offset * bs + len(wr)] = wr
        cb(IoStatus.SUCCESS, -1)


class RecBdev(MemBdev):
    """Every reactor's channel records into the one ``ops`` list."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.ops: list[tuple[str, int, bool]] = []

    def open_channel(self) -> RecChannel:  # type: ignore[override]
        return RecChannel(self)


# ------------------------------------------------------------ scripted host
class Host:
    """Feeds bytes to one TcpQpair of reactor ``r`` and decodes the answers."""

    def __init__(self, h: Any, rpc: Any, key: str, r: int = 0) -> None:
        self.h, self.rpc = h, rpc
        self.qp = TcpQpair(DRIVER.target(rpc.reactors[r]), key, f"127.0.0.1:{1000 + r}")
        self.reader = P.PduReader(P.HOST)
        self.raw: list[Any] = []

    def send(self, raw: bytes) -> list[P.Pdu]:
        out = self.qp.feed(raw)
        self.rpc.pump()
        out += self.qp.take_output()
        self.raw += out
        return self.reader.feed(_j(out))

    def icreq(self) -> None:
        [p] = self.send(P.encode_icreq())
        assert p.type == P.ICRESP
        self.reader.ic_done = True

    def capsule(
        self,
        opcode: int,
        cid: int = 1,
        nsid: int = 0,
        cdws: tuple[int, ...] = (),
        data: bytes | None = None,
        incapsule: bool = True,
        sgl_len: int | None = None,
        fuse: int = 0,
    ) -> bytes:
        cd = tuple(cdws) + (0,) * (6 - len(cdws))
        if data is not None and incapsule:
            dptr = spec.pack_sgl(0, len(data), spec.SGL_TYPE_INCAPSULE)
        else:
            n = sgl_len if sgl_len is not None else (len(data) if data else 0)
            dptr = spec.pack_sgl(0, n, spec.SGL_TYPE_TRANSPORT)
        sqe = spec.pack_sqe(opcode, cid, nsid, cd, dptr, (spec.PSDT_SGL << 6) | fuse)  # type: ignore[arg-type]
        return _j(P.encode_capsule_cmd(sqe, data if incapsule else None))

    def cmd(self, opcode: int, **kw: Any) -> list[P.Pdu]:
        return self.send(self.capsule(opcode, **kw))

    def resp(self, pdus: list[P.Pdu]) -> spec.Cqe:
        [r] = [p for p in pdus if p.type == P.CAPSULE_RESP]
        return spec.unpack_cqe(r.hdr, 8)

    def connect(self, qid: int = 0, cntlid: int = 0xFFFF, subnqn: str | None = None) -> spec.Cqe:
        d = bytearray(1024)
        d[0:16] = self.h.HOSTID
        struct.pack_into("<H", d, 16, cntlid)
        s = (subnqn or self.h.SUBNQN).encode()
        d[256 : 256 + len(s)] = s
        d[512 : 512 + len(self.h.HOSTNQN)] = self.h.HOSTNQN.encode()
        return self.resp(self.cmd(0x7F, cid=100, nsid=1, cdws=(qid << 16, 31, 0), data=bytes(d)))

    def enable(self) -> None:
        cc = 1 | (6 << 16) | (4 << 20)
        pd = self.cmd(0x7F, cid=101, nsid=spec.FCTYPE_PROPERTY_SET, cdws=(0, spec.PROP_CC, cc))
        assert self.resp(pd).status == 0

    def term(self) -> tuple[int, int] | None:
        raw = _j(self.raw)
        i = 0
        while i + 8 <= len(raw):
            t, _f, _hl, _pdo, plen = P.CH.unpack_from(raw, i)
            if t == P.C2H_TERM_REQ:
                return P.parse_term(raw[i : i + 24])
            i += plen
        return None


def _admin(h: Any, rpc: Any, key: str, subnqn: str | None = None) -> tuple[Host, int]:
    a = Host(h, rpc, key)
    a.icreq()
    cqe = a.connect(subnqn=subnqn)
    assert cqe.status == 0, spec.split_status(cqe.status)
    a.enable()
    return a, cqe.result & 0xFFFF


def _io(h: Any, rpc: Any, key: str, cntlid: int, r: int = 0, qid: int = 1) -> Host:
    q = Host(h, rpc, key, r)
    q.icreq()
    cqe = q.connect(qid=qid, cntlid=cntlid)
    assert cqe.status == 0, spec.split_status(cqe.status)
    return q


def _rw(slba: int, nbytes: int, fua: bool = False) -> tuple[int, int, int]:
    return (slba & 0xFFFFFFFF, slba >> 32, (nbytes // 512 - 1) | (FUA if fua else 0))


@pytest.fixture
def tgt(h):  # type: ignore[no-untyped-def]
    rpc = h.FakeRpc(nreactors=2)
    key = h.setup_target(rpc)
    rpc.bdevs["Malloc0"] = RecBdev("Malloc0", 2048)
    yield rpc, key
    rpc.stop()


# ================================================================ 1. bounds
def _get_log(a: Host, lid: int, numd: int, sgl_len: int, offset: int = 0) -> list[P.Pdu]:
    numd -= 1
    cdw10 = lid | ((numd & 0xFFFF) << 16)
    return a.cmd(
        spec.ADMIN_GET_LOG_PAGE,
        cid=7,
        nsid=0xFFFFFFFF,
        cdws=(cdw10, numd >> 16, offset, 0),
        sgl_len=sgl_len,
    )


@pytest.mark.parametrize("subnqn", [DISCOVERY_NQN, None])
def test_get_log_page_numd_bomb_builds_nothing(h, tgt, subnqn) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    a, _ = _admin(h, rpc, key, subnqn)
    stats = a.qp.target.stats
    lid = spec.LID_DISCOVERY if subnqn else spec.LID_ERROR
    before = stats["admin_data_bytes"]
    # NUMD = 0xFFFFFFFF (16 GiB) with a 4 KiB and an MDTS-sized buffer
    for sgl in (4096, 131072):
        pdus = _get_log(a, lid, 0x1_0000_0000, sgl)
        assert _st(a.resp(pdus)) == (0, spec.SC_DATA_SGL_LENGTH_INVALID)
        assert not [p for p in pdus if p.type == P.C2H_DATA]
    assert stats["admin_data_bytes"] == before  # not one byte built
    # a transfer length above MDTS: its status, no R2T, no data
    pdus = _get_log(a, lid, 0x10000, 131072 + 4096)
    assert _st(a.resp(pdus)) == (0, spec.SC_DATA_SGL_LENGTH_INVALID)
    assert stats["admin_data_bytes"] == before
    # what is asked (within the buffer) is what is built, even past the log's end
    pdus = _get_log(a, lid, 32768 // 4, 32768)
    assert a.resp(pdus).status == 0
    assert stats["admin_data_bytes"] - before == 32768
    data = b"".join(bytes(p.data) for p in pdus if p.type == P.C2H_DATA)  # type: ignore[misc]
    assert len(data) == 32768
    # a short request gets exactly its bytes
    before = stats["admin_data_bytes"]
    pdus = _get_log(a, lid, 4, 4096)
    assert a.resp(pdus).status == 0
    assert stats["admin_data_bytes"] - before == 16


def test_identify_and_features_huge_lengths(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    a, _ = _admin(h, rpc, key)
    stats = a.qp.target.stats
    before = stats["admin_data_bytes"]
    pdus = a.cmd(spec.ADMIN_IDENTIFY, cid=3, cdws=(spec.CNS_CTRL,), sgl_len=131072)
    assert a.resp(pdus).status == 0
    assert stats["admin_data_bytes"] - before == 4096  # the structure, not the buffer
    for big in (131072 + 4096, 0xFFFFFFFF):
        pdus = a.cmd(spec.ADMIN_IDENTIFY, cid=4, cdws=(spec.CNS_CTRL,), sgl_len=big)
        assert _st(a.resp(pdus)) == (0, spec.SC_DATA_SGL_LENGTH_INVALID)
    before = stats["admin_data_bytes"]
    pdus = a.cmd(spec.ADMIN_GET_FEATURES, cid=5, cdws=(spec.FID_HOST_ID, 1), sgl_len=1 << 20)
    assert _st(a.resp(pdus)) == (0, spec.SC_DATA_SGL_LENGTH_INVALID)
    pdus = a.cmd(spec.ADMIN_GET_FEATURES, cid=5, cdws=(spec.FID_HOST_ID, 1), sgl_len=131072)
    assert a.resp(pdus).status == 0 and stats["admin_data_bytes"] - before == 16
    # in-capsule data above the admin limit: refused by the framer (TermReq), nothing kept
    a.cmd(spec.ADMIN_SET_FEATURES, cid=6, cdws=(spec.FID_ARBITRATION,), data=bytes(16384))
    assert a.term() == (P.FES_DATA_LIMIT_EXCEEDED, P.OFF_PLEN)
    assert not a.qp.reqs


def test_receive_buffer_small_until_icreq(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    x = Host(h, rpc, key)
    assert x.qp.reader.capacity <= 8192
    x.icreq()
    assert x.qp.reader.capacity >= 2 * 131072


# ================================================================ 2. timeouts
class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_connect_timeout_closes_idle_and_half_open(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    idle = Host(h, rpc, key)  # never sends ICReq
    half = Host(h, rpc, key)
    half.icreq()  # ICReq but no Connect
    done, _ = _admin(h, rpc, key)
    for x in (idle, half, done):
        assert x.qp._conn_timer is not None  # armed with the configured 10 s
    stats = idle.qp.target.stats
    n0 = stats["connect_timeouts"]
    for x in (idle, half, done):
        x.qp._connect_timeout()  # what the timer runs
    assert idle.qp.closed and half.qp.closed and not done.qp.closed
    assert stats["connect_timeouts"] - n0 == 2


def test_connect_timeout_on_the_loop(h) -> None:  # type: ignore[no-untyped-def]
    import time

    rpc = h.FakeRpc(nreactors=1)
    try:
        key = h.setup_target(rpc, connect_timeout_ms=50)
        x = Host(h, rpc, key)
        y = Host(h, rpc, key)
        y.icreq()
        assert y.connect().status == 0
        time.sleep(0.1)
        rpc.pump()
        assert x.qp.closed and not y.qp.closed
    finally:
        rpc.stop()


def test_h2c_data_timeout_fails_command_and_closes(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    a, cntlid = _admin(h, rpc, key)
    q = _io(h, rpc, key, cntlid)
    clock = Clock()
    q.qp.target.clock = clock
    pdus = q.cmd(spec.IO_WRITE, cid=9, nsid=1, cdws=_rw(0, 8192), data=bytes(8192), incapsule=False)
    [r2t] = pdus
    assert r2t.type == P.R2T
    assert q.qp._h2c_timer is not None
    clock.t += 9.9
    q.qp.check_h2c_timeouts()
    assert not q.qp.want_close and q.qp.ttags
    clock.t += 0.2
    q.qp.check_h2c_timeouts()
    out = q.reader.feed(_j(q.qp.take_output()))
    cqe = q.resp(out)
    assert cqe.cid == 9 and _st(cqe) == (0, spec.SC_TRANSIENT_TRANSPORT_ERROR)
    assert q.qp.want_close and not q.qp.ttags
    assert q.qp.target.stats["h2c_timeouts"] == 1
    # the admin queue of the same host is untouched
    assert not a.qp.want_close


def test_h2c_data_in_time_cancels_nothing(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    _a, cntlid = _admin(h, rpc, key)
    q = _io(h, rpc, key, cntlid)
    clock = Clock()
    q.qp.target.clock = clock
    [r2t] = q.cmd(
        spec.IO_WRITE, cid=9, nsid=1, cdws=_rw(0, 8192), data=bytes(8192), incapsule=False
    )
    _c, ttag, _o, _l = P.parse_data_hdr(r2t.hdr)
    pdus = q.send(_j(P.encode_data(P.H2C_DATA, 9, ttag, 0, b"\x5a" * 8192)))
    assert q.resp(pdus).status == 0
    clock.t += 100
    q.qp.check_h2c_timeouts()
    assert not q.qp.want_close


# ================================================================ 3. backpressure
def test_backpressure_pauses_parsing(h) -> None:  # type: ignore[no-untyped-def]
    rpc = h.FakeRpc(nreactors=1)
    try:
        key = h.setup_target(rpc, max_unsent_bytes=65536)
        _a, cntlid = _admin(h, rpc, key)
        q = _io(h, rpc, key, cntlid)
        qp = q.qp
        burst = b"".join(
            q.capsule(spec.IO_READ, cid=i, nsid=1, cdws=_rw(0, 4096), sgl_len=4096)
            for i in range(64)
        )
        qp.feed_input(burst)  # like the driver: nothing leaves until it flushes
        assert qp.paused
        held = sum(len(b) for b in qp.out)
        assert 65536 < held <= 65536 + 2 * (4096 + 48)  # the bound, plus one command
        assert qp.reader.buffered > 0  # the rest waits, unparsed
        got = q.reader.feed(_j(qp.take_output()))
        while qp.paused:
            qp.resume()
            got += q.reader.feed(_j(qp.take_output()))
        assert len([p for p in got if p.type == P.C2H_DATA]) == 64
    finally:
        rpc.stop()


# ================================================================ 4. containment
def test_exception_in_handler_closes_only_that_connection(h, tgt, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    a, cntlid = _admin(h, rpc, key)
    q = _io(h, rpc, key, cntlid, r=1)
    b, _ = _admin(h, rpc, key)

    def boom(req: Any, ctrl: Any) -> None:
        raise RuntimeError("injected")

    monkeypatch.setitem(admin.HANDLERS, spec.ADMIN_ABORT, boom)
    b.cmd(spec.ADMIN_ABORT, cid=5)
    assert b.term() is not None and b.qp.closed and not b.qp.reqs
    assert b.qp.target.stats["qpair_exceptions"] == 1
    assert "qpair_exceptions" in b.qp.target.get_stats()
    # the other host keeps working, admin and I/O
    assert a.resp(a.cmd(spec.ADMIN_KEEP_ALIVE, cid=6)).status == 0
    pdus = q.cmd(spec.IO_WRITE, cid=3, nsid=1, cdws=_rw(8, 512), data=b"\x11" * 512)
    assert q.resp(pdus).status == 0


def test_exception_in_completion_is_contained(h, tgt, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    _a, cntlid = _admin(h, rpc, key)
    q = _io(h, rpc, key, cntlid)
    q.cmd(spec.IO_READ, cid=1, nsid=1, cdws=_rw(0, 512), sgl_len=512)  # fast path opened
    monkeypatch.setattr(q.qp, "send_response", lambda *a: 1 / 0)
    q.cmd(spec.IO_WRITE, cid=2, nsid=1, cdws=_rw(0, 512), data=bytes(512))
    assert q.qp.closed and q.term() is not None
    assert q.qp.target.stats["qpair_exceptions"] == 1


# ================================================================ 5. pool buffers
@pytest.fixture
def pooled(h):  # type: ignore[no-untyped-def]
    name = f"tnv{os.getpid()}-{uuid.uuid4().hex[:6]}"
    pool = BufferPool.create(
        name, 1, small_count=4, large_count=2, reserve_fraction=0.0, hugepages="never", reactor_id=0
    )
    rpc = h.FakeRpc(nreactors=1)
    iob = IoBufs(pool)
    rpc.reactors[0].iobufs = iob  # type: ignore[attr-defined]
    key = h.setup_target(rpc)
    try:
        yield rpc, key, iob
    finally:
        rpc.stop()
        pool.destroy()


def test_r2t_buffers_from_pool_fifo_and_released(h, pooled) -> None:  # type: ignore[no-untyped-def]
    rpc, key, iob = pooled
    _a, cntlid = _admin(h, rpc, key)
    q = _io(h, rpc, key, cntlid)
    n = 65536
    r2ts = []
    for cid in (1, 2, 3):
        pdus = q.cmd(
            spec.IO_WRITE, cid=cid, nsid=1, cdws=_rw(cid * 256, n), data=bytes(n), incapsule=False
        )
        r2ts += [p for p in pdus if p.type == P.R2T]
    # two large buffers: two R2Ts, the third command waits for a buffer
    assert len(r2ts) == 2 and iob.in_use == 2 and iob.queued == 1
    assert q.qp.target.stats["iobuf_waits"] == 1
    _c, ttag, _o, _l = P.parse_data_hdr(r2ts[0].hdr)
    pdus = q.send(_j(P.encode_data(P.H2C_DATA, 1, ttag, 0, b"\x42" * n)))
    # cid 1 done (buffer back), which hands the waiter its buffer and R2T
    assert q.resp(pdus).cid == 1
    [r2t3] = [p for p in pdus if p.type == P.R2T]
    assert P.parse_data_hdr(r2t3.hdr)[0] == 3
    assert rpc.bdevs["Malloc0"].storage[256 * 512 : 256 * 512 + n] == b"\x42" * n
    # the connection dies with one transfer waiting for data and none queued
    q.cmd(spec.IO_WRITE, cid=4, nsid=1, cdws=_rw(0, n), data=bytes(n), incapsule=False)
    assert iob.queued == 1
    q.qp.close("test")
    assert iob.in_use == 0 and iob.queued == 0


def test_pool_buffer_kept_until_async_write_completes(h, pooled) -> None:  # type: ignore[no-untyped-def]
    rpc, key, iob = pooled
    rpc.bdevs["Malloc0"].loop = rpc.loop  # asynchronous completions
    _a, cntlid = _admin(h, rpc, key)
    q = _io(h, rpc, key, cntlid)
    n = 65536
    [r2t] = q.cmd(spec.IO_WRITE, cid=1, nsid=1, cdws=_rw(0, n), data=bytes(n), incapsule=False)
    _c, ttag, _o, _l = P.parse_data_hdr(r2t.hdr)
    q.qp.feed(_j(P.encode_data(P.H2C_DATA, 1, ttag, 0, b"\x33" * n)))
    assert iob.in_use == 1
    q.qp.close("host gone")  # the bdev is still writing from the buffer
    assert iob.in_use == 1
    rpc.pump()
    assert iob.in_use == 0
    assert rpc.bdevs["Malloc0"].storage[:n] == b"\x33" * n


# ================================================================ 6. FUA / VWC / Flush / CAW
class _Ops:
    def __init__(self, ops: list[tuple[str, int, bool]]) -> None:
        self.ops = ops


def _chan(rpc: Any) -> _Ops:
    return _Ops(rpc.bdevs["Malloc0"].ops)


@pytest.mark.parametrize("fast", [True, False])
def test_fua_reaches_the_channel(h, tgt, monkeypatch, fast) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    if not fast:
        monkeypatch.setattr(TcpQpair, "fast_ok", property(lambda self: False))
    _a, cntlid = _admin(h, rpc, key)
    q = _io(h, rpc, key, cntlid)
    statuses = []
    for cid, fua in ((1, False), (2, True)):
        pdus = q.cmd(spec.IO_WRITE, cid=cid, nsid=1, cdws=_rw(cid, 512, fua), data=bytes(512))
        statuses.append(q.resp(pdus).status)
    # R2T (general path) with FUA
    [r2t] = q.cmd(
        spec.IO_WRITE, cid=3, nsid=1, cdws=_rw(16, 8192, True), data=bytes(8192), incapsule=False
    )
    _c, ttag, _o, _l = P.parse_data_hdr(r2t.hdr)
    statuses.append(q.resp(q.send(_j(P.encode_data(P.H2C_DATA, 3, ttag, 0, bytes(8192))))).status)
    writes = [op for op in _chan(rpc).ops if op[0] == "write"]
    assert [w[2] for w in writes] == [False, True, True]
    assert statuses == [0, 0, 0]
    # out of range with FUA: same status on both paths
    pdus = q.cmd(spec.IO_WRITE, cid=4, nsid=1, cdws=_rw(2048, 512, True), data=bytes(512))
    assert _st(q.resp(pdus)) == (0, spec.SC_LBA_OUT_OF_RANGE)


def test_write_zeroes_fua_flushes_and_flush_flushes(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    _a, cntlid = _admin(h, rpc, key)
    q = _io(h, rpc, key, cntlid)
    assert q.resp(q.cmd(spec.IO_WRITE_ZEROES, cid=1, nsid=1, cdws=_rw(0, 4096))).status == 0
    assert [o[0] for o in _chan(rpc).ops] == ["write_zeroes"]
    assert q.resp(q.cmd(spec.IO_WRITE_ZEROES, cid=2, nsid=1, cdws=_rw(0, 4096, True))).status == 0
    assert [o[0] for o in _chan(rpc).ops][1:] == ["write_zeroes", "flush"]
    assert q.resp(q.cmd(spec.IO_FLUSH, cid=3, nsid=1)).status == 0
    assert _chan(rpc).ops[-1][0] == "flush"


def test_volatile_write_cache_off_makes_every_io_queue_write_through(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    a, cntlid = _admin(h, rpc, key)
    q0 = _io(h, rpc, key, cntlid, r=0)
    q1 = Host(h, rpc, key, 1)  # an I/O queue on the other reactor
    q1.icreq()
    d = bytearray(1024)
    d[0:16] = h.HOSTID
    struct.pack_into("<H", d, 16, cntlid)
    d[256 : 256 + len(h.SUBNQN)] = h.SUBNQN.encode()
    d[512 : 512 + len(h.HOSTNQN)] = h.HOSTNQN.encode()
    assert q1.resp(q1.cmd(0x7F, cid=100, nsid=1, cdws=(2 << 16, 31, 0), data=bytes(d))).status == 0

    def vwc() -> int:
        return a.resp(a.cmd(spec.ADMIN_GET_FEATURES, cid=8, cdws=(spec.FID_VOLATILE_WC,))).result

    assert vwc() == 1
    assert a.resp(a.cmd(spec.ADMIN_SET_FEATURES, cid=9, cdws=(spec.FID_VOLATILE_WC, 0))).status == 0
    assert vwc() == 0
    assert q0.qp.write_through and q1.qp.write_through
    for q in (q0, q1):
        assert (
            q.resp(q.cmd(spec.IO_WRITE, cid=1, nsid=1, cdws=_rw(0, 512), data=bytes(512))).status
            == 0
        )
    # both reactors' channels: write-through writes reach them as FUA
    writes = [o for o in _chan(rpc).ops if o[0] == "write"]
    assert writes and all(w[2] for w in writes)
    # an I/O queue connected after the change inherits it
    q2 = _io(h, rpc, key, cntlid, r=1, qid=3)
    assert q2.qp.write_through
    assert a.resp(a.cmd(spec.ADMIN_SET_FEATURES, cid=9, cdws=(spec.FID_VOLATILE_WC, 1))).status == 0
    assert vwc() == 1
    assert not (q0.qp.write_through or q1.qp.write_through or q2.qp.write_through)
    # Identify still says a volatile write cache is present (it is: VWC = 1 possible)
    pdus = a.cmd(spec.ADMIN_IDENTIFY, cid=10, cdws=(spec.CNS_CTRL,), sgl_len=4096)
    idc = b"".join(bytes(p.data) for p in pdus if p.type == P.C2H_DATA)  # type: ignore[misc]
    assert idc[525] & 1


def _caw(
    q: Host, slba: int, cmp: bytes, new: bytes, fua: bool = False
) -> tuple[spec.Cqe, spec.Cqe]:
    out = q.send(
        q.capsule(spec.IO_COMPARE, cid=1, nsid=1, cdws=_rw(slba, len(cmp)), data=cmp, fuse=1)
        + q.capsule(spec.IO_WRITE, cid=2, nsid=1, cdws=_rw(slba, len(new), fua), data=new, fuse=2)
    )
    got = {c.cid: c for c in (spec.unpack_cqe(p.hdr, 8) for p in out if p.type == P.CAPSULE_RESP)}
    return got[1], got[2]


def test_compare_and_write_atomic_api_and_fua(h, tgt) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    _a, cntlid = _admin(h, rpc, key)
    q = _io(h, rpc, key, cntlid)
    storage = rpc.bdevs["Malloc0"].storage
    c, w = _caw(q, 4, bytes(512), b"\x01" * 512, fua=True)
    assert c.status == 0 and w.status == 0
    assert storage[4 * 512 : 5 * 512] == b"\x01" * 512
    assert _chan(rpc).ops[-1] == ("caw", 4, True)
    c, w = _caw(q, 4, bytes(512), b"\x02" * 512)  # miscompare: nothing written
    assert _st(c) == (spec.SCT_MEDIA, spec.SC_COMPARE_FAILURE)
    assert _st(w) == (0, spec.SC_FUSED_FAIL)
    assert storage[4 * 512 : 5 * 512] == b"\x01" * 512
    assert _chan(rpc).ops[-1] == ("caw", 4, False)


# ================================================================ 7. pool through the driver
class IntoChannel(MemChannel):
    """A bdev that copies (like aio): ``read(..., into=)`` fills our buffer, asynchronously."""

    zero_copy_reads = False

    def read(self, offset_blocks: int, num_blocks: int, cb: Any, into: Any = None) -> None:  # type: ignore[override]
        bs = self.bs
        src = self.mem[offset_blocks * bs : (offset_blocks + num_blocks) * bs]
        self.mbdev.intos.append(into is not None)  # type: ignore[attr-defined]

        def run() -> None:
            if into is not None:
                into[: len(src)] = src
                cb(IoStatus.SUCCESS, into[: len(src)])
            else:
                cb(IoStatus.SUCCESS, memoryview(bytes(src)))

        self.mbdev.loop.call_soon(run)  # type: ignore[union-attr]


class IntoBdev(MemBdev):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.intos: list[bool] = []

    def open_channel(self) -> IntoChannel:  # type: ignore[override]
        return IntoChannel(self)


def test_pool_buffers_over_real_sockets_all_come_back(h) -> None:  # type: ignore[no-untyped-def]
    name = f"tnv{os.getpid()}-{uuid.uuid4().hex[:6]}"
    pool = BufferPool.create(
        name, 1, small_count=8, large_count=4, reserve_fraction=0.0, hugepages="never", reactor_id=0
    )
    rpc = h.FakeRpc(nreactors=1)
    iob = IoBufs(pool)
    rpc.reactors[0].iobufs = iob  # type: ignore[attr-defined]
    try:
        key = h.setup_target(rpc)
        rpc.bdevs["Malloc0"] = IntoBdev("Malloc0", 2048, async_loop=rpc.loop)
        rpc.start()
        host, _, port = key.rpartition(":")
        addr = (host, int(port))
        a = h.Client(addr)
        cntlid = a.admin_setup()
        q = h.Client(addr)
        q.icreq()
        assert q.connect(qid=1, cntlid=cntlid).status == 0
        for i in range(12):  # more than the pool holds at once, R2T writes and reads
            data = os.urandom(65536)
            assert q.write(1, 128 * i, data, incapsule=False).status == 0
            cqe, back = q.read(1, 128 * i, 65536)
            assert cqe.status == 0 and back == data
        # in-capsule writes to an asynchronous bdev are moved to the pool first
        n0 = rpc.run(lambda: iob.acquires)
        for i in range(4):
            assert q.write(1, 2000 + i, b"\x77" * 512, incapsule=True).status == 0
        assert rpc.run(lambda: iob.acquires) - n0 == 4
        assert rpc.bdevs["Malloc0"].storage[2000 * 512 : 2004 * 512] == b"\x77" * 2048
        bdev = rpc.bdevs["Malloc0"]
        assert bdev.intos and all(bdev.intos)  # copying bdev: always into our buffer
        cqe, log = a.get_log(spec.LID_ERROR, 32768)  # 8 KiB log, padded in the pool
        assert cqe.status == 0 and len(log) == 32768 and not any(log[8192:])
        assert h.wait_for(lambda: rpc.run(lambda: iob.in_use) == 0)
        # a pipeline of reads, then the host goes away before reading them
        for i in range(16):
            q.submit(spec.IO_READ, nsid=1, cdws=(128 * i, 0, 127), read_len=65536)
        q.close()
        a.close()
        assert h.wait_for(lambda: rpc.run(lambda: iob.in_use == 0 and iob.queued == 0))
        assert rpc.run(lambda: iob.acquires) > 24
    finally:
        rpc.stop()
        pool.destroy()


def test_r2t_transfer_in_several_pool_chunks(h) -> None:  # type: ignore[no-untyped-def]
    """max_io_size 256 KiB: an R2T write spans two 128 KiB pool chunks; H2CData
    PDUs cut across the chunk boundary land in order; one bdev write per chunk."""
    name = f"tnv{os.getpid()}-{uuid.uuid4().hex[:6]}"
    pool = BufferPool.create(
        name, 1, small_count=4, large_count=4, reserve_fraction=0.0, hugepages="never", reactor_id=0
    )
    rpc = h.FakeRpc(nreactors=1)
    iob = IoBufs(pool)
    rpc.reactors[0].iobufs = iob  # type: ignore[attr-defined]
    try:
        key = h.setup_target(rpc, max_io_size=262144, io_unit_size=262144)
        rpc.bdevs["Malloc0"] = RecBdev("Malloc0", 2048)
        _a, cntlid = _admin(h, rpc, key)
        q = _io(h, rpc, key, cntlid)
        n = 262144
        data = os.urandom(n)
        [r2t] = q.cmd(
            spec.IO_WRITE, cid=1, nsid=1, cdws=_rw(64, n, True), data=data, incapsule=False
        )
        _c, ttag, _o, ln = P.parse_data_hdr(r2t.hdr)
        assert ln == n and iob.in_use == 2
        cuts = [0, 100_000, 131072 + 4000, n]
        out: list[P.Pdu] = []
        for a, b in zip(cuts, cuts[1:], strict=False):
            out += q.send(_j(P.encode_data(P.H2C_DATA, 1, ttag, a, data[a:b], last=b == n)))
        assert q.resp(out).status == 0
        assert rpc.bdevs["Malloc0"].storage[64 * 512 : 64 * 512 + n] == data
        writes = [o for o in rpc.bdevs["Malloc0"].ops if o[0] == "write"]
        assert writes == [("write", 64, True), ("write", 64 + 256, True)]
        assert iob.in_use == 0
    finally:
        rpc.stop()
        pool.destroy()


def test_exception_in_a_pool_grant_stays_with_its_connection(h, pooled, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """B's completion frees the buffer A waits for; A's grant fails: only A closes."""
    rpc, key, iob = pooled
    _a, cntlid = _admin(h, rpc, key)
    b = _io(h, rpc, key, cntlid, qid=1)
    a = _io(h, rpc, key, cntlid, qid=2)
    n = 65536
    r2ts = []
    for cid in (1, 2):
        r2ts += b.cmd(
            spec.IO_WRITE, cid=cid, nsid=1, cdws=_rw(cid * 128, n), data=bytes(n), incapsule=False
        )
    a.cmd(spec.IO_WRITE, cid=7, nsid=1, cdws=_rw(0, n), data=bytes(n), incapsule=False)
    assert iob.queued == 1
    monkeypatch.setattr(a.qp, "fetch_data", lambda req: 1 / 0)
    _c, ttag, _o, _l = P.parse_data_hdr(r2ts[0].hdr)
    pdus = b.send(_j(P.encode_data(P.H2C_DATA, 1, ttag, 0, bytes(n))))
    assert b.resp(pdus).status == 0 and not b.qp.closed
    a.raw += a.qp.take_output()
    assert a.qp.closed and a.term() is not None
    assert iob.in_use == 1  # B's second transfer only: A's grant went back


def test_exception_in_a_timer_is_contained(h, tgt, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rpc, key = tgt
    a, cntlid = _admin(h, rpc, key)
    q = _io(h, rpc, key, cntlid)
    clock = Clock()
    q.qp.target.clock = clock
    q.cmd(spec.IO_WRITE, cid=9, nsid=1, cdws=_rw(0, 8192), data=bytes(8192), incapsule=False)
    clock.t += 11
    monkeypatch.setattr(q.qp, "_clock", lambda: 1 / 0)
    q.qp.check_h2c_timeouts()  # must not raise into the loop
    assert q.qp.closed and not q.qp.ttags
    assert q.qp.target.stats["qpair_exceptions"] == 1
    assert a.resp(a.cmd(spec.ADMIN_KEEP_ALIVE, cid=3)).status == 0


def test_ttag_never_zero_after_wrap(h, tgt) -> None:  # type: ignore[no-untyped-def]
    """TTAG 0 marks "no R2T": after 65535 R2Ts the tag wraps to 1, so a failed
    transfer is always removed from the tag table."""
    rpc, key = tgt
    _a, cntlid = _admin(h, rpc, key)
    q = _io(h, rpc, key, cntlid)
    q.qp._next_ttag = 0xFFFF
    clock = Clock()
    q.qp.target.clock = clock
    [r2t] = q.cmd(
        spec.IO_WRITE, cid=9, nsid=1, cdws=_rw(0, 8192), data=bytes(8192), incapsule=False
    )
    assert P.parse_data_hdr(r2t.hdr)[1] == 1
    clock.t += 11
    q.qp.check_h2c_timeouts()
    assert not q.qp.ttags and not q.qp.reqs


def test_incapsule_data_for_async_bdev_never_pins_the_receive_buffer(h, pooled) -> None:  # type: ignore[no-untyped-def]
    rpc, key, iob = pooled
    rpc.bdevs["Malloc0"] = IntoBdev("Malloc0", 2048, async_loop=rpc.loop)
    _a, cntlid = _admin(h, rpc, key)
    q = _io(h, rpc, key, cntlid)
    qp = q.qp
    # a Write, a Compare and a fused Compare-and-Write, all in-capsule, all in flight
    raw = (
        q.capsule(spec.IO_WRITE, cid=1, nsid=1, cdws=_rw(0, 512), data=b"\x01" * 512)
        + q.capsule(spec.IO_COMPARE, cid=2, nsid=1, cdws=_rw(8, 512), data=bytes(512))
        + q.capsule(spec.IO_COMPARE, cid=3, nsid=1, cdws=_rw(16, 512), data=bytes(512), fuse=1)
        + q.capsule(spec.IO_WRITE, cid=4, nsid=1, cdws=_rw(16, 512), data=b"\x04" * 512, fuse=2)
    )
    qp.feed_input(raw)
    assert len(qp.reqs) == 4 and iob.in_use == 4
    assert not qp.reader._exported()  # no view of the receive buffer is alive
    rpc.pump()
    got = q.reader.feed(_j(qp.take_output()))
    st = {c.cid: c.status for c in (spec.unpack_cqe(p.hdr, 8) for p in got)}
    assert st == {1: 0, 2: 0, 3: 0, 4: 0}
    storage = rpc.bdevs["Malloc0"].storage
    assert storage[:512] == b"\x01" * 512 and storage[16 * 512 : 17 * 512] == b"\x04" * 512
    assert iob.in_use == 0
