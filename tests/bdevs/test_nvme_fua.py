"""nvme bdev: FUA reaches the remote controller (Write CDW12 bit 30), flush is
an NVMe Flush, reads given ``into`` land in it."""

from __future__ import annotations

import struct
from typing import Any

from blockfabric.bdevs.base import IoStatus
from blockfabric.bdevs.nvme import NvmeBdev
from blockfabric.transports.nvmf import pdu as P
from blockfabric.transports.nvmf import spec as S
from blockfabric.transports.nvmf_host import queue as Q


def _cdw12_of_write(fua: bool) -> int:
    q = Q.HostQueue(qid=1, qsize=8)
    q.start()
    q.take_tx()
    q.feed(P.encode_icresp(0, False, False, 8192))
    q.icd_max = 8192
    q.write(1, 5, 1, memoryview(bytes(512)), None, fua=fua)
    tx = b"".join(bytes(b) for b in q.take_tx())
    hlen = tx[2]
    sqe = tx[8:hlen]
    assert sqe[0] == S.IO_WRITE
    return int(struct.unpack_from("<I", sqe, 48)[0])


def test_host_queue_sets_fua_bit() -> None:
    assert _cdw12_of_write(False) == 0
    assert _cdw12_of_write(True) == 1 << 30


class _FakeQ:
    can_submit = True
    max_outstanding = 8
    outstanding = 0

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_compare = False

    def submit_sqe(self, sqe, cb, ctx=None, write_from=None, **kw):  # noqa: ANN001
        opcode, flags = sqe[0], sqe[1]
        cdw12 = struct.unpack_from("<I", sqe, 48)[0]
        self.calls.append(("sqe", opcode, flags & 3, cdw12, bytes(write_from)))
        st = 0
        if self.fail_compare:
            st = S.ST_COMPARE_FAILURE if opcode == S.IO_COMPARE else S.ST_FUSED_FAIL
        cb(type("R", (), {"ctx": ctx})(), st, 0)

    def write(self, nsid, lba, nlb, data, cb, ctx=None, fua=False):  # noqa: ANN001
        self.calls.append(("write", lba, nlb, fua))
        cb(type("R", (), {"ctx": ctx})(), 0, 0)

    def read(self, nsid, lba, nlb, buf, cb, ctx=None):  # noqa: ANN001
        self.calls.append(("read", lba, nlb))
        buf[:] = b"r" * len(buf)
        cb(type("R", (), {"ctx": ctx})(), 0, 0)

    def submit(self, opcode, nsid=0, cdws=(0,) * 6, cb=None, ctx=None, **kw):  # noqa: ANN001
        self.calls.append(("submit", opcode))
        cb(type("R", (), {"ctx": ctx})(), 0, 0)


class _FakeLq:
    ready = True

    def __init__(self) -> None:
        self.q = _FakeQ()

    def kick(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_nvme_channel_passes_fua_flush_and_reads_into() -> None:
    b = NvmeBdev(name="N0n1", block_size=512, num_blocks=1024, ctrlr={"state": "enabled"})
    ch = b.open_channel(None)  # no loop: no connection attempt
    lq = _FakeLq()
    ch.lq = lq
    ch.connected_gen = 0
    out: list[Any] = []
    ch.write(3, memoryview(bytes(1024)), out.append, fua=True)
    ch.write(5, memoryview(bytes(512)), out.append)
    ch.write_through = True
    ch.write(6, memoryview(bytes(512)), out.append)
    ch.flush(out.append)
    into = memoryview(bytearray(1024))
    ch.read(0, 2, lambda st, v: out.append((st, v)), into)
    assert out[:4] == [IoStatus.SUCCESS] * 4
    st, v = out[4]
    assert st == IoStatus.SUCCESS and v.obj is into.obj and bytes(into) == b"r" * 1024
    assert lq.q.calls == [
        ("write", 3, 2, True),
        ("write", 5, 1, False),
        ("write", 6, 1, True),
        ("submit", S.IO_FLUSH),
        ("read", 0, 2),
    ]


def test_nvme_compare_and_write_is_a_fused_pair() -> None:
    b = NvmeBdev(name="N0n1", block_size=512, num_blocks=1024, ctrlr={"state": "enabled"})
    ch = b.open_channel(None)
    lq = _FakeLq()
    ch.lq = lq
    ch.connected_gen = 0
    out: list[Any] = []
    cmp, wr = memoryview(b"r" * 512), memoryview(b"w" * 512)
    ch.compare_and_write(9, cmp, wr, lambda st, d: out.append((st, d)), fua=True)
    assert out == [(IoStatus.SUCCESS, -1)]
    assert lq.q.calls == [
        ("sqe", S.IO_COMPARE, S.FUSE_FIRST, 0, b"r" * 512),
        ("sqe", S.IO_WRITE, S.FUSE_SECOND, 1 << 30, b"w" * 512),
    ]
    # the remote reports a compare failure: MISCOMPARE, offset found by a read
    lq.q.calls.clear()
    lq.q.fail_compare = True
    probe = bytearray(b"r" * 512)
    probe[100] = 0
    ch.compare_and_write(9, memoryview(bytes(probe)), wr, lambda st, d: out.append((st, d)))
    assert out[1] == (IoStatus.MISCOMPARE, 100)
    assert [c[0] for c in lq.q.calls] == ["sqe", "sqe", "read"]
    assert ch.in_flight == 0
