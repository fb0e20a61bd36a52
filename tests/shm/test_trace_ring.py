"""The trace ring (shm/trace.py): layout, wrap-around, torn records,
a concurrent reader, restarts, masks; and the decoder's request grouping
(tools/trace_cmd.py)."""

from __future__ import annotations

import multiprocessing as mp
import os
import struct
import time
from typing import Any

import pytest

from blockfabric.shm import trace as tr
from blockfabric.shm.manifest import Manifest
from blockfabric.shm.segment import SharedSegment
from blockfabric.tools import trace_cmd as tc


@pytest.fixture
def seg(instance: str) -> Any:
    s = tr.create_segment(instance, 2, 16)
    yield s
    s.close()
    s.unlink()


def _writer(seg: SharedSegment, ring: int = 0) -> tr.Tracer:
    t = tr.Tracer()
    t.attach(seg, ring)
    return t


def test_segment_is_named_and_in_the_manifest(seg: SharedSegment, instance: str) -> None:
    assert seg.path == f"/dev/shm/blockfabric.{instance}.trace"
    assert Manifest.load(instance).entry(seg.name, "shm") is not None
    h = tr.Header.parse(seg.buf)
    assert (h.rings, h.entries, h.mask, h.instance) == (2, 16, 0, instance)
    assert seg.size == tr.segment_size(2, 16) == 4096 + 2 * 16 * 64


def test_wrap_around_keeps_the_last_entries_in_order(seg: SharedSegment) -> None:
    w = _writer(seg)
    for i in range(1, 41):
        w.rec(tr.TP_NVMF_TCP | tr.REQ_NEW, 7, i, i * 3, i * 5, i & 0xFF)
    recs, torn = tr.read_ring(seg.buf, tr.Header.parse(seg.buf), 0)
    assert [r.seq for r in recs] == list(range(25, 41))
    assert torn == 0
    assert all((r.a0, r.a1, r.a2, r.obj) == (r.seq, r.seq * 3, r.seq * 5, 7) for r in recs)
    assert recs == sorted(recs, key=lambda r: r.ts)
    # the other ring is empty; the snapshot merges by time
    snap = tr.snapshot(seg.buf)
    assert [r.seq for r in snap.records] == list(range(25, 41))
    assert snap.rings[0].widx == 40 and snap.rings[0].pid == os.getpid()


def test_torn_and_garbage_slots_are_skipped(seg: SharedSegment) -> None:
    w = _writer(seg)
    for i in range(1, 11):
        w.rec(tr.TP_BDEV_START, 1, 0, i, 4096, 1)
    h = tr.Header.parse(seg.buf)
    base = tr.ring_offset(h, 0)
    # the writer died inside record 11: its opening seq and some fields are
    # new, its closing seq is still the old one (struct writes in field order)
    slot = 11 & 15
    struct.pack_into("<QQ", seg.buf, base + slot * 64, 11, time.perf_counter_ns())
    # a slot holding a record that is not its own (memory corruption)
    struct.pack_into("<Q", seg.buf, base + 3 * 64, 100)
    struct.pack_into("<Q", seg.buf, base + 3 * 64 + 56, 100)
    recs, torn = tr.read_ring(seg.buf, h, 0, live=False)
    assert [r.seq for r in recs] == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert torn == 2
    # decoded from a copy, as `blockfabric trace -f` does after a SIGKILL
    snap = tr.snapshot(bytes(seg.buf), live=False)
    assert [r.seq for r in snap.records] == [1, 2, 4, 5, 6, 7, 8, 9, 10] and snap.torn == 2


def test_live_reader_drops_what_may_be_overwritten(seg: SharedSegment) -> None:
    w = _writer(seg)
    for i in range(1, 21):
        w.rec(tr.TP_BDEV_START, 1, 0, i)
    h = tr.Header.parse(seg.buf)
    # a record newer than the published index (being written now) is not taken
    struct.pack_into(
        "<QQHHIQQQQQ", seg.buf, tr.ring_offset(h, 0) + (21 & 15) * 64,
        21, 0, 0, 0, 0, 0, 0, 0, 0, 21,
    )  # fmt: skip
    recs, _ = tr.read_ring(seg.buf, h, 0, live=True)
    assert [r.seq for r in recs] == list(range(6, 21))  # 5 is in 21's slot
    recs, _ = tr.read_ring(seg.buf, h, 0, live=False)
    assert recs[-1].seq == 21


def _hammer(name: str, seconds: float) -> None:
    seg = SharedSegment.attach(name)
    t = tr.Tracer()
    t.attach(seg, 1)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(1000):
            n = t.seq + 1
            t.rec(tr.TP_BDEV_START, n ^ 0x5555, n & 0xFFFF, n * 3, n * 7, n ^ 0xDEADBEEF)
    seg.close()


def test_concurrent_reader_never_takes_a_torn_record(instance: str) -> None:
    seg = tr.create_segment(instance, 2, 64)
    try:
        p = mp.get_context("fork").Process(target=_hammer, args=(seg.name, 2.0))
        p.start()
        h = tr.Header.parse(seg.buf)
        snaps = taken = 0
        last = 0
        deadline = time.monotonic() + 30
        while p.is_alive() and time.monotonic() < deadline:
            recs, _torn = tr.read_ring(seg.buf, h, 1)
            snaps += 1
            for r in recs:
                n = r.seq
                assert (r.obj, r.a0, r.a1, r.a2, r.a3) == (
                    n ^ 0x5555, n & 0xFFFF, n * 3, n * 7, n ^ 0xDEADBEEF,
                ), r  # fmt: skip
            if recs:
                assert recs[-1].seq >= last
                last = recs[-1].seq
                taken += len(recs)
        p.join(30)
        assert p.exitcode == 0
        assert snaps > 10 and taken > 0 and last > 1000, (snaps, taken, last)
    finally:
        seg.close()
        seg.unlink()


def test_a_restarted_writer_continues_the_sequence(seg: SharedSegment) -> None:
    w = _writer(seg)
    for _ in range(20):
        w.rec(tr.TP_RPC_START, 1)
    w2 = _writer(seg)  # a new process on the same ring (reactor restart)
    assert w2.seq == 20
    w2.rec(tr.TP_RPC_DONE, 1)
    recs, _ = tr.read_ring(seg.buf, tr.Header.parse(seg.buf), 0)
    assert recs[-1].seq == 21 and recs[-1].tpoint == tr.TP_RPC_DONE


def test_mask_word_and_out_of_range_args(seg: SharedSegment) -> None:
    w = _writer(seg)
    assert w.mask == 0
    tr.set_mask(seg.buf, tr.G_NVMF_TCP | tr.G_BDEV)
    assert w.reload() == tr.G_NVMF_TCP | tr.G_BDEV == w.mask
    w.rec(tr.TP_BDEV_START, -1, 1 << 40, -5, 1 << 70)  # kept as their low bits, no crash
    r = tr.read_ring(seg.buf, tr.Header.parse(seg.buf), 0)[0][-1]
    assert (r.obj, r.a0, r.a1) == (2**64 - 1, 0, 2**64 - 5)
    w.detach()
    assert w.mask == 0
    w.rec(tr.TP_BDEV_START)  # detached: dropped, no crash
    assert w.drops == 1


def test_names_and_groups() -> None:
    assert tr.unpack_name(*tr.pack_name("bdev_malloc_create")) == "bdev_malloc_create"
    assert tr.unpack_name(*tr.pack_name("x" * 40)) == "x" * 24
    assert tr.parse_groups("nvmf_tcp,bdev") == tr.G_NVMF_TCP | tr.G_BDEV
    assert tr.parse_groups("iscsi:0xff") == tr.G_ISCSI  # SPDK's name:tpoint_mask form
    assert tr.parse_groups("20") == tr.G_NVMF_TCP  # a bare number is hex, as in SPDK
    assert tr.parse_groups("all") == tr.ALL_GROUPS_MASK
    assert tr.parse_groups("") == 0
    for bad in ("nosuch", "0x40000000"):
        with pytest.raises(ValueError):
            tr.parse_groups(bad)
    for bad in (1000, 8, 1 << 30):
        with pytest.raises(ValueError):
            tr.check_entries(bad)
    assert tr.transport_group("RDMA") == (tr.G_NVMF_RDMA, tr.TP_NVMF_RDMA)
    # every tpoint id sits in its group
    for tp, d in tr.TPOINTS.items():
        assert tp >> 6 == tr.GROUPS[d.group], d


def test_bad_headers_are_refused() -> None:
    with pytest.raises(ValueError, match="magic"):
        tr.Header.parse(bytes(4096))
    with pytest.raises(ValueError, match="short"):
        tr.Header.parse(b"BFTRACE1")


def _rec(seq: int, tp: int, obj: int, cid: int, ts: int, a3: int = 0) -> tr.Record:
    return tr.Record(0, seq, ts, tp, obj, cid, 0, 4096, a3)


def test_requests_are_grouped_and_phased() -> None:
    T = tr.TP_NVMF_TCP
    recs = [
        _rec(1, T | tr.REQ_PDU, 5, 1, 100),
        _rec(2, T | tr.REQ_NEW, 5, 1, 110, 2),
        _rec(3, T | tr.REQ_PDU, 5, 2, 115),  # another command interleaved
        _rec(4, T | tr.REQ_SUBMIT, 5, 1, 120),
        _rec(5, T | tr.REQ_DONE, 5, 1, 150),
        _rec(6, T | tr.REQ_DATA, 5, 1, 160, 1),  # data carried success: the end
        _rec(7, T | tr.QP_FLUSH, 5, 0, 170),  # not a request phase
        _rec(8, T | tr.REQ_NEW, 5, 2, 180, 1),
        _rec(9, T | tr.REQ_RESP, 5, 2, 200),
        _rec(10, T | tr.REQ_PDU, 5, 1, 300),  # CID 1 reused: a new request
        _rec(11, T | tr.REQ_NEW, 5, 1, 301, 2),
        _rec(12, T | tr.REQ_SUBMIT, 9, 3, 310),  # its start was overwritten
        _rec(13, T | tr.REQ_RESP, 9, 3, 320),
    ]
    reqs = tc.requests(recs)
    assert [(q.obj, q.tag, q.done, q.complete) for q in reqs] == [
        (5, 1, True, True),
        (5, 2, True, True),
        (5, 1, False, False),
        (9, 3, True, False),
    ]
    q = reqs[0]
    assert q.order == ["PDU_RECV", "REQ_NEW", "BDEV_SUBMIT", "BDEV_DONE", "DATA_SENT"]
    assert q.phase_deltas() == [
        ("PDU_RECV", 0), ("REQ_NEW", 10), ("BDEV_SUBMIT", 10), ("BDEV_DONE", 30),
        ("DATA_SENT", 10),
    ]  # fmt: skip
    assert q.latency_ns == 60 and q.opc == 2
    # a record of the ring lost inside a request's span (a recording that fell
    # behind, a torn slot): every request spanning it is no longer complete
    lossy = tc.requests([r for r in recs if r.seq != 4])
    assert [q.gap for q in lossy] == [True, True, False, False]
    assert not any(q.complete for q in lossy)
    assert tc.percentiles([1000, 2000, 3000, 4000])["p50"] == 2.0


def test_garbage_rings_and_files_decode_without_crashing(seg: SharedSegment, tmp_path: Any) -> None:
    h = tr.Header.parse(seg.buf)
    base = tr.ring_offset(h, 0)
    seg.buf[base:] = os.urandom(len(seg.buf) - base)
    snap = tr.snapshot(bytes(seg.buf), live=False)
    assert len(snap.records) <= 2 and snap.torn >= 28  # random slots are (nearly) never valid
    for r in snap.records:
        tc.describe(r)  # unknown tpoints and odd args print, never raise
    f = tmp_path / "t.bftrace"
    f.write_bytes(bytes(seg.buf[: tr.header_size(2) + 100]))
    with pytest.raises(ValueError, match="truncated"):
        tc.load_file(str(f))
    f.write_bytes(tc.REC_MAGIC + struct.pack("<I", 10) + b"x" * 10)
    with pytest.raises(ValueError, match="corrupt"):
        tc.load_file(str(f))
    # a recording whose recorder died inside a block: the blocks before it count
    hdr = bytes(seg.buf[: tr.header_size(2)])
    good = tr.REC.pack(1, 5, tr.TP_RPC_START, 0, 0, 1, 0, 0, 0, 1)
    blk = struct.pack("<4sIII", b"BLK1", 0, 1, 0) + good
    f.write_bytes(tc.REC_MAGIC + struct.pack("<I", len(hdr)) + hdr + blk + blk[:30])
    snap = tc.load_file(str(f))
    assert [r.seq for r in snap.records] == [1] and snap.torn == 1
