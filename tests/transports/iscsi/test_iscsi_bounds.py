"""Hostile-host bounds of the iSCSI core (issue 8): write data in pool
buffers region by region, burst limits, pool exhaustion stalls the input,
Data-Out timeout, MAXIMUM TRANSFER LENGTH, TMF ordering against a slow
bdev, containment of exceptions, negotiation caps."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from blockfabric.bdevs.base import Bdev, IoChannel, IoStatus
from blockfabric.shm.iobuf import CHUNK, IoBufs
from blockfabric.shm.pool import BufferPool
from blockfabric.transports.iscsi import pdu as P
from blockfabric.transports.iscsi import text
from blockfabric.transports.scsi.device import ScsiDevice
from blockfabric.transports.scsi.lun import ScsiLun
from blockfabric.transports.scsi.pr import PrStore

BS = 512
NB = 16384  # 8 MiB
MBL = 262144
OPS = [
    ("MaxBurstLength", str(MBL)),
    ("FirstBurstLength", "65536"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
]


class Chan(IoChannel):
    """RAM channel with the new interface; `deferred` holds completions."""

    def __init__(self, bdev: Bdev) -> None:
        super().__init__(bdev)
        self.mem = bytearray(NB * BS)
        self.deferred = False
        self.pending: list[Any] = []
        self.writes: list[tuple[int, int, bool]] = []
        self.copies = False

    def _later(self, fn: Any) -> None:
        if self.deferred:
            self.pending.append(fn)
        else:
            fn()

    def run(self) -> None:
        while self.pending:
            self.pending.pop(0)()

    def read(self, off, n, cb, into=None):  # type: ignore[override]
        src = memoryview(self.mem)[off * BS : (off + n) * BS]
        if self.copies and into is not None:
            into[: len(src)] = src
            src = into[: len(src)]
        self._later(lambda: cb(IoStatus.SUCCESS, src))

    def write(self, off, data, cb, fua=False):  # type: ignore[override]
        assert len(data) <= CHUNK and len(data) % BS == 0
        self.writes.append((off, len(data) // BS, fua))
        self.mem[off * BS : off * BS + len(data)] = data
        self._later(lambda: cb(IoStatus.SUCCESS))


@pytest.fixture
def pool() -> Iterator[IoBufs]:
    p = BufferPool.create(
        f"iscsi-bounds-{os.getpid()}", 1, mem_mb=16, reactor_id=0, hugepages="never"
    )
    try:
        yield IoBufs(p)
    finally:
        p.destroy()


def _setup(
    kit: Any, iob: IoBufs | None, power_on_ua: bool = False, initial_r2t: bool = True
) -> tuple[Any, Chan, ScsiDevice]:
    env = kit.Env(kit.make_state())
    env.view.options["initial_r2t"] = initial_r2t
    if iob is not None:
        env.iobufs = iob
    bdev = Bdev(
        name="Malloc0", block_size=BS, num_blocks=NB, uuid="12345678-1234-5678-9abc-def012345678"
    )
    ch = Chan(bdev)
    dev = ScsiDevice("disk1", PrStore(None), power_on_ua=power_on_ua)
    dev.add_lun(ScsiLun(0, bdev, lambda: ch, dev, iobufs=iob))
    env.dev = dev
    h = kit.Harness(env=env)
    h.login(OPS)
    return h, ch, dev


def write10(lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, flags, lba, 0, n, 0)


def _answer_r2ts(
    h: Any, itt: int, payload: bytes, out: list[P.Pdu], iob: IoBufs, peak: list[int]
) -> P.Pdu:
    """Answer every R2T with Data-Out until the SCSI Response comes."""
    pending = list(out)
    while pending:
        p = pending.pop(0)
        if p.opcode == P.OP_SCSI_RESP:
            return p
        assert p.opcode == P.OP_R2T, p.opcode
        off, n = p.w40, p.w44
        assert n <= MBL
        assert not [x for x in pending if x.opcode == P.OP_R2T]  # one R2T sequence at a time
        for i, o in enumerate(range(off, off + n, 65536)):
            k = min(65536, off + n - o)
            pending += h.data_out(itt, p.w20, i, o, payload[o : o + k], o + k == off + n)
            peak[0] = max(peak[0], iob.in_use_bytes)
    raise AssertionError("no SCSI Response")


def test_large_write_streams_through_bounded_pool_buffers(kit: Any, pool: IoBufs) -> None:
    h, ch, _ = _setup(kit, pool)
    edtl = 4 * 1024 * 1024
    payload = os.urandom(edtl)
    itt = 0x500
    out = h.cmd(write10(8, edtl // BS, 0x08), edtl, write=True, data=payload[:8192], itt=itt)
    peak = [pool.in_use_bytes]
    r = _answer_r2ts(h, itt, payload, out, pool, peak)
    assert r.b3 == 0 and r.b2 == 0
    assert ch.mem[8 * BS : 8 * BS + edtl] == payload
    # never the whole EDTL: at most two regions of MaxBurstLength (+ a carried block)
    assert 0 < peak[0] <= 2 * (MBL + BS), peak
    assert pool.in_use == 0 and pool.in_use_bytes == 0  # every buffer back
    # written chunk by chunk (<= 128 KiB per bdev call), every one with FUA
    assert sum(n for _, n, _ in ch.writes) == edtl // BS
    assert all(fua for _, _, fua in ch.writes)


def test_unaligned_first_burst_carries_the_partial_block(kit: Any, pool: IoBufs) -> None:
    h, ch, _ = _setup(kit, pool)
    edtl = 1024 * 1024
    payload = os.urandom(edtl)
    itt = 0x501
    # 1000 bytes of immediate data: every later region starts mid-block
    out = h.cmd(write10(0, edtl // BS), edtl, write=True, data=payload[:1000], itt=itt)
    r = _answer_r2ts(h, itt, payload, out, pool, [0])
    assert r.b3 == 0 and bytes(ch.mem[:edtl]) == payload
    assert pool.in_use == 0


def test_slow_bdev_limits_regions_in_flight(kit: Any, pool: IoBufs) -> None:
    h, ch, _ = _setup(kit, pool)
    ch.deferred = True
    edtl = 4 * MBL
    payload = os.urandom(edtl)
    itt = 0x502
    out = h.cmd(write10(0, edtl // BS), edtl, write=True, itt=itt)
    r2ts = 0
    while out and out[0].opcode == P.OP_R2T:
        p = out[0]
        r2ts += 1
        out = []
        for i, o in enumerate(range(p.w40, p.w40 + p.w44, 65536)):
            out += h.data_out(itt, p.w20, i, o, payload[o : o + 65536], o + 65536 == p.w40 + p.w44)
    # nothing written yet: one region being written, one received, no third R2T
    assert r2ts == 2 and out == []
    assert pool.in_use_bytes <= 2 * MBL
    ch.run()
    n = len(h.out)
    assert kit.decode(h.out[n - 1]).opcode == P.OP_R2T


def test_pool_exhaustion_stalls_input_in_order(kit: Any, pool: IoBufs) -> None:
    h, ch, _ = _setup(kit, pool)
    held = []
    for size in (CHUNK, 8192):
        while (v := pool.try_acquire(size)) is not None:
            held.append(v)
    c = h.conn
    itt = 0x600
    data = b"\x11" * 4096
    cmd = P.encode_request(
        P.OP_SCSI_CMD,
        0xA1,
        0,
        itt,
        (4096, h.cmdsn, 0, *struct.unpack(">4I", write10(0, 8).ljust(16, b"\0"))),
        data,
    )
    h.cmdsn += 1
    nop = P.encode_request(
        P.OP_NOP_OUT, 0x80, 0, 0x601, (P.RSVD_TAG, h.cmdsn, 0, 0, 0, 0, 0), b"", immediate=True
    )
    out = h.feed(cmd + nop)
    assert out == [] and c.input_stalled  # no buffer: the NOP waits behind the WRITE
    for v in held:
        pool.release(v)
    assert not c.input_stalled
    ops = [kit.decode(b).opcode for b in h.out[-2:]]
    assert ops == [P.OP_SCSI_RESP, P.OP_NOP_IN]  # in order
    assert bytes(ch.mem[:4096]) == data and pool.in_use == 0


def test_whole_data_commands_are_capped(kit: Any, pool: IoBufs) -> None:
    h, _, _ = _setup(kit, pool)
    unmap = bytes([0x42, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0])
    r = h.cmd(unmap, 2 * CHUNK, write=True)
    assert r[0].opcode == P.OP_SCSI_RESP and r[0].b3 == 2
    assert bytes(r[0].data)[2 + 12] == 0x24 and pool.in_use == 0


def test_data_out_timeout_fails_and_closes(kit: Any, pool: IoBufs) -> None:
    h, _, _ = _setup(kit, pool)
    out = h.cmd(write10(0, 8), 4096, write=True, itt=0x700)
    assert out[0].opcode == P.OP_R2T
    h.conn.check_timeouts(time.monotonic() + 1, 30)
    assert h.conn.state == "ffp"
    h.conn.check_timeouts(time.monotonic() + 31, 30)
    assert h.closed == ["Data-Out timeout"] and pool.in_use == 0


def test_max_transfer_length_over_iscsi(kit: Any, pool: IoBufs) -> None:
    h, _, dev = _setup(kit, pool)
    dev.luns[0].max_transfer_blocks = 16
    r = h.cmd(bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 17, 0]), 17 * BS, read=True)
    assert r[0].opcode == P.OP_SCSI_RESP and r[0].b3 == 2
    assert bytes(r[0].data)[2 + 12] == 0x24
    r = h.cmd(write10(0, 17), 17 * BS, write=True, data=b"\0" * 8192, itt=0x900)
    assert [p.opcode for p in r] == [P.OP_R2T]
    r = h.data_out(0x900, r[0].w20, 0, 8192, b"\0" * (17 * BS - 8192), True)
    assert r[0].opcode == P.OP_SCSI_RESP and r[0].b3 == 2
    assert bytes(r[0].data)[2 + 12] == 0x24


def test_tmf_answers_after_the_write_landed(kit: Any, pool: IoBufs) -> None:
    h, ch, _ = _setup(kit, pool)
    ch.deferred = True
    h.cmd(write10(3, 1), BS, write=True, data=b"\x77" * BS, itt=0x800)
    assert len(ch.writes) == 1 and ch.pending  # submitted, not completed
    n = len(h.out)
    w = (0x800, h.cmdsn, 0, 0, 0, 0, 0)
    h.feed(P.encode_request(P.OP_TMF_REQ, 0x81, 0, 0x801, w, immediate=True))
    assert len(h.out) == n  # not before the write finished
    ch.run()
    assert len(h.out) == n + 1
    r = kit.decode(h.out[-1])
    assert r.opcode == P.OP_TMF_RESP and r.b2 == 0 and r.itt == 0x801
    # LUN RESET waits the same way
    h.cmd(write10(4, 1), BS, write=True, data=b"\x78" * BS, itt=0x802)
    n = len(h.out)
    h.feed(
        P.encode_request(P.OP_TMF_REQ, 0x85, 0, 0x803, (0, h.cmdsn, 0, 0, 0, 0, 0), immediate=True)
    )
    assert len(h.out) == n
    ch.run()
    assert kit.decode(h.out[-1]).opcode == P.OP_TMF_RESP and pool.in_use == 0


def test_staged_read_buffers_go_back_after_send(kit: Any, pool: IoBufs) -> None:
    h, ch, dev = _setup(kit, pool)
    ch.copies = True
    dev.luns[0].stage_reads = True  # as for aio / nvme
    ch.mem[: 64 * BS] = b"\x42" * 64 * BS
    sent: list[Any] = []
    h.conn.after_sent = sent.append  # the driver runs these once the socket took the data
    r = h.cmd(bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 64, 0]), 64 * BS, read=True)
    assert r[-1].opcode == P.OP_DATA_IN and b"".join(bytes(p.data) for p in r) == b"\x42" * 64 * BS
    assert pool.in_use == 1 and len(sent) == 1
    sent[0]()
    assert pool.in_use == 0


class _Boom:
    def __init__(self, dev: Any) -> None:
        self.dev = dev
        self.luns = dev.luns
        self.armed = True

    def execute(self, task: Any, done: Any) -> None:
        if self.armed:
            self.armed = False
            raise RuntimeError("injected")
        self.dev.execute(task, done)

    def nexus_lost(self, *a: Any) -> None:
        pass

    def get_lun(self, lun_id: int) -> Any:
        return self.dev.get_lun(lun_id)

    def fast_lun(self, lun_id: int, nexus: Any) -> Any:
        return None

    def target_reset(self, on_done: Any = None) -> None:
        self.dev.target_reset(on_done)


def test_exception_closes_only_its_connection(kit: Any, caplog: Any) -> None:
    env = kit.Env(kit.make_state())
    env.stats = {}
    boom = _Boom(env.dev)
    env.dev = boom
    a = kit.Harness(env=env)
    a.login()
    b = kit.Harness(env=env)
    b.login(isid=0x23D000000002)
    a.cmd(bytes(6), 0)
    assert a.closed == ["internal error"] and a.conn.stats["errors"] == 1
    assert env.stats["exceptions"] == 1
    assert (
        "internal error handling a PDU" in caplog.text and "RuntimeError: injected" in caplog.text
    )
    r = b.cmd(bytes(6), 0)
    assert r[0].opcode == P.OP_SCSI_RESP and r[0].b3 == 0 and b.conn.state == "ffp"


def test_negotiation_caps(kit: Any) -> None:
    with pytest.raises(text.TextError):
        text.parse(b"".join(b"X-k%d=v\0" % i for i in range(text.MAX_PAIRS + 1)))
    with pytest.raises(text.TextError):
        text.parse(b"K" * 64 + b"=v\0")
    with pytest.raises(text.TextError):
        text.parse(b"TargetAlias=" + b"v" * 256 + b"\0")
    h = kit.Harness()
    keys = [("InitiatorName", kit.INIT), ("TargetName", kit.TARGET), ("X-" + "a" * 80, "1")]
    r = h.feed(kit.login_req(keys, csg=0, nsg=1))
    assert r[0].opcode == P.OP_LOGIN_RESP and r[0].w36 >> 24 == 2  # initiator error
    assert h.closed


def test_burst_limits_are_enforced(kit: Any, pool: IoBufs) -> None:
    # immediate data above FirstBurstLength (8 KiB with SPDK's default): Reject
    h, _, _ = _setup(kit, pool)
    r = h.cmd(write10(0, 64), 64 * BS, write=True, data=b"\0" * 16384)
    assert r[0].opcode == P.OP_REJECT and r[0].b2 == P.REJ_PROTOCOL and pool.in_use == 0
    # unsolicited Data-Out beyond FirstBurstLength: protocol error, connection closed
    h, _, _ = _setup(kit, pool, initial_r2t=False)
    h.cmd(write10(0, 64), 64 * BS, write=True, data=b"\0" * 4096, final=False, itt=0xA00)
    r = h.data_out(0xA00, P.RSVD_TAG, 0, 4096, b"\0" * 8192, True)
    assert r[0].opcode == P.OP_REJECT and h.closed and pool.in_use == 0
    # R2T data beyond the burst the target asked for (MaxBurstLength)
    h, _, _ = _setup(kit, pool)
    edtl = 2 * MBL
    r = h.cmd(write10(0, edtl // BS), edtl, write=True, itt=0xA01)
    assert [p.opcode for p in r] == [P.OP_R2T] and r[0].w44 == MBL  # one sequence, MaxBurstLength
    ttt = r[0].w20
    k = MBL // 32768 - 1
    for i in range(k):
        assert h.data_out(0xA01, ttt, i, i * 32768, b"\0" * 32768, False) == []
    # within MaxRecvDataSegmentLength, but past the end of the R2T's burst
    r = h.data_out(0xA01, ttt, k, k * 32768, b"\0" * (32768 + 512), True)
    assert r[0].opcode == P.OP_REJECT and r[0].b2 == P.REJ_PROTOCOL
    assert h.closed and "unexpected" in h.conn.close_reason and pool.in_use == 0


def test_r2t_phase_is_capped_per_connection(kit: Any, pool: IoBufs) -> None:
    h, ch, _ = _setup(kit, pool)
    limit = h.conn.dataout.r2t_limit
    assert limit == 4  # max_r2t_per_connection (SPDK's default)
    r2ts = []
    for i in range(10):
        out = h.cmd(write10(i * 1024, 512), 512 * BS, write=True, itt=0xB00 + i)
        r2ts += [p for p in out if p.opcode == P.OP_R2T]
    # only `limit` commands hold burst buffers; the others ask the pool nothing
    assert len(r2ts) == limit and pool.in_use_bytes <= limit * (MBL + BS)
    first = r2ts[0]
    n = len(h.out)
    for i, o in enumerate(range(0, first.w44, 65536)):
        h.data_out(first.itt, first.w20, i, o, b"\x01" * 65536, o + 65536 == first.w44)
    new = [kit.decode(b) for b in h.out[n:]]
    # the first finished (its response) or moved on; either way a waiting one got its R2T
    assert any(p.opcode == P.OP_R2T and p.itt == 0xB00 + limit for p in new)


def test_staged_reads_share_a_per_connection_budget(kit: Any, pool: IoBufs) -> None:
    from blockfabric.transports.iscsi.connection import STAGED_READ_BUDGET

    h, ch, dev = _setup(kit, pool)
    ch.copies = True
    ch.deferred = True
    dev.luns[0].stage_reads = True  # as for aio / nvme
    n = 4 * MIB_BLOCKS  # 4 MiB per READ(10)
    for _ in range(4):
        h.cmd(bytes([0x28, 0, 0, 0, 0, 0, 0]) + n.to_bytes(2, "big") + b"\0", n * BS, read=True)
    # 8 MiB budget: two run (their pool buffers held), two wait without any
    assert (
        len(ch.pending) == 2 * (4 * 1024 * 1024 // CHUNK) or pool.in_use_bytes <= STAGED_READ_BUDGET
    )
    assert pool.in_use_bytes == STAGED_READ_BUDGET
    assert len(h.conn._staged_waiting) == 2
    while ch.pending:
        ch.run()
    responses = [kit.decode(b) for b in h.out if kit.decode(b).opcode == P.OP_DATA_IN]
    assert sum(1 for p in responses if p.f1 & P.F_STATUS) == 4
    assert pool.in_use == 0 and not h.conn._staged_waiting


MIB_BLOCKS = 1024 * 1024 // BS


def test_text_sequence_is_capped(kit: Any) -> None:
    h = kit.Harness()
    h.login()
    ttt = P.RSVD_TAG
    chunk = b"X-a=" + b"b" * 250 + b"\0"
    sent = 0
    for _ in range(400):
        w = (ttt, h.cmdsn, 0, 0, 0, 0, 0)
        sent += len(chunk) * 32
        out = h.feed(P.encode_request(P.OP_TEXT_REQ, 0x40, 0, 0x77, w, chunk * 32, immediate=True))
        if out[0].opcode == P.OP_REJECT:
            break
        assert out[0].opcode == P.OP_TEXT_RESP
        ttt = out[0].w20
    else:
        raise AssertionError("an endless Text sequence was accepted")
    assert sent <= 96 * 1024 and len(h.conn.text.pending) == 0
