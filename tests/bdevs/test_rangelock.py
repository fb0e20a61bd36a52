"""Cross-process range locks: compare-and-write is a ticket lock that never
hands out a ticket twice, and overlapping writes never tear (malloc and aio).

Each worker process is what a reactor is: it rebuilds the bdev from its
description and opens its own channel."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import struct
import time

import pytest

from blockfabric.bdevs.aio import AioBdev
from blockfabric.bdevs.base import IoStatus
from blockfabric.bdevs.locks import NSTRIPES, REGION, StripeLocks, bdev_key
from blockfabric.bdevs.malloc import MallocBdev
from blockfabric.bdevs.registry import bdev_from_description
from blockfabric.bdevs.wcache import WcacheBdev
from blockfabric.shm import names

_seq = itertools.count()
BS = 512
WORKERS = 3
TICKETS_EACH = 500


def _inst() -> str:
    return f"rl{os.getpid()}x{next(_seq)}"


@pytest.fixture(params=["malloc", "aio"])
def bdev(request, tmp_path):
    inst = _inst()
    if request.param == "malloc":
        b = MallocBdev.create(inst, "M", 256, BS, hugepages="never")
    else:
        path = tmp_path / "disk.img"
        path.write_bytes(bytes(256 * BS))
        b = AioBdev.create("A", str(path), BS, instance=inst)
    yield b
    b.destroy()
    left = [p.name for p in names.SHM_DIR.iterdir() if f"blockfabric.{inst}." in p.name]
    assert left == []


@pytest.fixture(params=["malloc", "aio", "wcache"])
def cawdev(request, tmp_path):
    """The compare-and-write race also runs on a write cache over malloc."""
    inst = _inst()
    extra = []
    if request.param == "malloc":
        b = MallocBdev.create(inst, "M", 256, BS, hugepages="never")
    elif request.param == "aio":
        path = tmp_path / "disk.img"
        path.write_bytes(bytes(256 * BS))
        b = AioBdev.create("A", str(path), BS, instance=inst)
    else:
        base = MallocBdev.create(inst, "M", 256, BS, hugepages="never")
        extra.append(base)
        b = WcacheBdev.create(inst, "WC", base, max_dirty_mb=1)
    yield b
    b.destroy()
    for x in extra:
        x.destroy()
    left = [p.name for p in names.SHM_DIR.iterdir() if f"blockfabric.{inst}." in p.name]
    assert left == []


def _ticket_worker(desc, n, q, barrier) -> None:
    ch = bdev_from_description(desc).open_channel()
    barrier.wait(30)
    got = []
    misses = 0
    while len(got) < n:
        cur: list = []
        ch.read(7, 1, lambda st, v, cur=cur: cur.append(bytes(v)), memoryview(bytearray(BS)))
        t = struct.unpack_from("<Q", cur[0])[0]
        new = struct.pack("<Q", t + 1) + os.urandom(8) + bytes(BS - 16)
        out: list = []
        ch.compare_and_write(
            7, memoryview(cur[0]), memoryview(new), lambda s, d, out=out: out.append(s)
        )
        if out[0] == IoStatus.SUCCESS:
            got.append(t)
        else:
            assert out[0] == IoStatus.MISCOMPARE
            misses += 1
    ch.close()
    q.put((got, misses))


def test_compare_and_write_ticket_lock_across_processes(cawdev):
    bdev = cawdev
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    barrier = ctx.Barrier(WORKERS)
    procs = [
        ctx.Process(target=_ticket_worker, args=(bdev.describe(), TICKETS_EACH, q, barrier))
        for _ in range(WORKERS)
    ]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    tickets = [t for got, _ in results for t in got]
    # every ticket handed out exactly once, none skipped
    assert sorted(tickets) == list(range(WORKERS * TICKETS_EACH))
    ch = bdev.open_channel()
    out: list = []
    ch.read(7, 1, lambda st, v: out.append(bytes(v)))
    assert struct.unpack_from("<Q", out[0])[0] == WORKERS * TICKETS_EACH
    print("ticket races lost (miscompares):", sum(m for _, m in results))


NBLK = 64  # a 32 KiB write spanning one region boundary


def _writer(desc, fill, seconds, barrier) -> None:
    ch = bdev_from_description(desc).open_channel()
    bufs = [memoryview(bytes([fill + 2 * i]) * (NBLK * BS)) for i in range(100)]
    barrier.wait(30)
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        ch.write(64, bufs[i % 100], lambda st: None)
        i += 1
    ch.close()


def test_overlapping_writes_never_tear(bdev):
    """Two writers (odd and even fills) overwrite the same 64 blocks; a checker
    that holds the range lock must always see one whole write."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_writer, args=(bdev.describe(), f, 1.5, barrier)) for f in (1, 2)]
    for p in procs:
        p.start()
    barrier.wait(30)
    other = bdev_from_description(bdev.describe())
    locks = StripeLocks.get(bdev.instance if isinstance(bdev, AioBdev) else other_inst(bdev))
    key = bdev_key(bdev.name)
    start, end = 64 * BS, (64 + NBLK) * BS
    seen = set()
    checks = 0
    fd = os.open(bdev.filename, os.O_RDONLY) if isinstance(bdev, AioBdev) else -1
    ch = other.open_channel() if fd < 0 else None
    try:
        while any(p.is_alive() for p in procs) or checks < 5:
            held = locks.lock(key, start, end)
            try:
                if fd >= 0:
                    snap = os.pread(fd, end - start, start)
                else:
                    out: list = []
                    ch.read(64, NBLK, lambda st, v, out=out: out.append(bytes(v)))
                    snap = out[0]
            finally:
                locks.unlock(held)
            assert snap == bytes([snap[0]]) * len(snap), "a write tore"
            seen.add(snap[0] % 2)
            checks += 1
    finally:
        if fd >= 0:
            os.close(fd)
        if ch is not None:
            ch.close()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert checks >= 100 and seen == {0, 1}


def other_inst(b: MallocBdev) -> str:
    return names.parse_object_name(b.segment_name)[0]


def test_stripes_cover_ranges_in_order():
    assert StripeLocks.stripes(0, 0, 1) == (0,)
    s = StripeLocks.stripes(5, REGION - 512, REGION + 512)
    assert s == tuple(sorted(s)) and len(s) == 2
    assert StripeLocks.stripes(1, 0, REGION * (NSTRIPES + 3)) == tuple(range(NSTRIPES))


def test_dead_holder_is_taken_over(monkeypatch):
    import blockfabric.bdevs.locks as L

    monkeypatch.setattr(L, "STEAL_AFTER_S", 0.2)
    inst = _inst()
    StripeLocks.retain(inst)
    try:
        ctx = mp.get_context("fork")

        def die_holding() -> None:
            sl = StripeLocks.get(inst)
            sl.lock(1, 0, 512)
            os._exit(0)  # dies with the stripe held

        p = ctx.Process(target=die_holding)
        p.start()
        p.join(10)
        sl = StripeLocks.get(inst)
        t0 = time.monotonic()
        held = sl.lock(1, 0, 512)
        sl.unlock(held)
        assert sl.steals == 1 and time.monotonic() - t0 < 5
        held = sl.lock(1, 0, 512)  # and it works normally afterwards
        sl.unlock(held)
        assert sl.steals == 1
    finally:
        StripeLocks.unretain(inst)
    assert [p.name for p in names.SHM_DIR.iterdir() if f"blockfabric.{inst}." in p.name] == []
