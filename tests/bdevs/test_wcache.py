"""The write-cache bdev: what survives a power failure, and what does not."""

from __future__ import annotations

import itertools
import os
import time

import pytest

from blockfabric.actors.loop import EventLoop
from blockfabric.bdevs.aio import AioBdev
from blockfabric.bdevs.base import IoStatus
from blockfabric.bdevs.malloc import MallocBdev
from blockfabric.bdevs.registry import bdev_from_description
from blockfabric.bdevs.wcache import WcacheBdev
from blockfabric.shm import names

_seq = itertools.count()
BS = 512


def _inst() -> str:
    return f"wc{os.getpid()}x{next(_seq)}"


def _leftovers(inst: str) -> list[str]:
    return sorted(p.name for p in names.SHM_DIR.iterdir() if f"blockfabric.{inst}." in p.name)


@pytest.fixture
def env():
    inst = _inst()
    base = MallocBdev.create(inst, "Base", 1024, BS, hugepages="never")
    made: list[WcacheBdev] = []

    def make(**kw):
        wc = WcacheBdev.create(inst, f"WC{len(made)}", base, **kw)
        made.append(wc)
        return wc

    yield base, make
    for wc in made:
        wc.destroy()
    base.destroy()
    assert _leftovers(inst) == []


def W(ch, lba, data, fua=False):
    out = []
    ch.write(lba, memoryview(data), out.append, fua=fua)
    assert out, "synchronous base: completes inline"
    return out[0]


def R(ch, lba, n):
    out = []
    ch.read(lba, n, lambda st, v: out.append((st, None if v is None else bytes(v))))
    assert out and out[0][0] == IoStatus.SUCCESS
    return out[0][1]


def F(ch):
    out = []
    ch.flush(out.append)
    return out[0]


def pat(c: int, n: int = 1) -> bytes:
    return bytes([c]) * (BS * n)


def test_unflushed_lost_flushed_and_fua_survive(env):
    base, make = env
    wc = make()
    ch = wc.open_channel()
    assert W(ch, 0, pat(1)) == IoStatus.SUCCESS
    assert R(ch, 0, 1) == pat(1)  # the cache serves it
    assert R(base.open_channel(), 0, 1) == pat(0)  # not on the medium yet
    assert F(ch) == IoStatus.SUCCESS
    assert R(base.open_channel(), 0, 1) == pat(1)
    assert W(ch, 1, pat(2), fua=True) == IoStatus.SUCCESS  # durable by itself
    assert W(ch, 2, pat(3)) == IoStatus.SUCCESS  # acknowledged, never flushed
    assert W(ch, 0, pat(4)) == IoStatus.SUCCESS  # overwrite of a flushed block, not flushed
    assert R(ch, 0, 3) == pat(4) + pat(2) + pat(3)
    res = wc.power_fail()
    assert res["dropped"] >= 2 and res["persisted"] == 0
    assert R(ch, 0, 3) == pat(1) + pat(2) + pat(0)
    # and then it is a fresh device: caching again
    assert W(ch, 5, pat(9)) == IoStatus.SUCCESS and R(ch, 5, 1) == pat(9)
    assert wc.stats()["power_fails"] == 1 and wc.stats()["dirty_writes"] == 1
    ch.close()


def test_write_through_channel_survives(env):
    _base, make = env
    wc = make()
    ch = wc.open_channel()
    ch.write_through = True
    for i in range(8):
        assert W(ch, i, pat(10 + i)) == IoStatus.SUCCESS
    wc.power_fail()
    assert R(ch, 0, 8) == b"".join(pat(10 + i) for i in range(8))
    ch.close()


def test_ignore_fua_loses_flushed_and_fua_data(env):
    """The deliberately broken double: the same test does lose data."""
    _base, make = env
    wc = make(ignore_fua=True)
    ch = wc.open_channel()
    W(ch, 0, pat(1))
    assert F(ch) == IoStatus.SUCCESS
    assert W(ch, 1, pat(2), fua=True) == IoStatus.SUCCESS
    wc.power_fail()
    assert R(ch, 0, 2) == pat(0, 2)
    ch.close()


def test_reorder_persists_a_subset_every_block_old_or_new(env):
    _base, make = env
    wc = make()
    ch = wc.open_channel()
    for i in range(64):
        W(ch, i, pat(1 + i))
    res = wc.power_fail(reorder=True, seed=7)
    assert res["persisted"] + res["dropped"] == 64
    assert 0 < res["persisted"] < 64
    data = R(ch, 0, 64)
    kept = 0
    for i in range(64):
        blk = data[i * BS : (i + 1) * BS]
        assert blk in (pat(0), pat(1 + i))
        kept += blk == pat(1 + i)
    assert kept == res["persisted"]
    ch.close()


def test_full_cache_destages_and_reads_stay_right(env):
    _base, make = env
    wc = make(max_dirty_mb=1)
    ch = wc.open_channel()
    # 2 MiB of 64 KiB writes through a 1 MiB cache, 4 times over the same range
    n = 128
    for rnd in range(4):
        for k in range(0, 1024, n):
            assert W(ch, k, bytes([rnd * 16 + k // n]) * (n * BS)) == IoStatus.SUCCESS
    for k in range(0, 1024, n):
        assert R(ch, k, n) == bytes([48 + k // n]) * (n * BS)
    assert wc.stats()["destaged_writes"] > 0
    F(ch)
    wc.power_fail()
    for k in range(0, 1024, n):
        assert R(ch, k, n) == bytes([48 + k // n]) * (n * BS)
    ch.close()


def test_second_reactor_sees_the_same_cache(env):
    _base, make = env
    wc = make()
    ch1 = wc.open_channel()
    other = bdev_from_description(wc.describe())  # what another reactor builds
    ch2 = other.open_channel()
    W(ch1, 3, pat(5))
    assert R(ch2, 3, 1) == pat(5)
    W(ch2, 3, pat(6))
    assert R(ch1, 3, 1) == pat(6)
    assert F(ch2) == IoStatus.SUCCESS  # flushes the first channel's writes too
    wc.power_fail()
    assert R(ch1, 3, 1) == pat(6)
    ch1.close()
    ch2.close()


def test_compare_and_write_sees_cached_data(env):
    _base, make = env
    wc = make()
    ch = wc.open_channel()
    W(ch, 0, pat(1))
    out = []
    cmp = bytearray(pat(1))
    cmp[77] = 9
    ch.compare_and_write(
        0, memoryview(bytes(cmp)), memoryview(pat(2)), lambda s, d: out.append((s, d))
    )
    assert out == [(IoStatus.MISCOMPARE, 77)]
    assert R(ch, 0, 1) == pat(1)  # a miscompare writes nothing
    out.clear()
    ch.compare_and_write(
        0, memoryview(pat(1)), memoryview(pat(2)), lambda s, d: out.append((s, d)), fua=True
    )
    assert out == [(IoStatus.SUCCESS, -1)]
    wc.power_fail()
    assert R(ch, 0, 1) == pat(2)  # FUA: durable
    ch.close()


def test_write_zeroes_and_out_of_range(env):
    _base, make = env
    wc = make()
    ch = wc.open_channel()
    W(ch, 10, pat(7, 4))
    out = []
    ch.write_zeroes(11, 2, out.append)
    assert out == [IoStatus.SUCCESS]
    assert R(ch, 10, 4) == pat(7) + pat(0, 2) + pat(7)
    assert W(ch, 1024, pat(1)) == IoStatus.OUT_OF_RANGE
    ch.close()


def test_async_base_on_a_loop(tmp_path):
    """aio base, completions on a loop: FUA and flush wait for the disk."""
    inst = _inst()
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(1 << 20))
    base = AioBdev.create("A", str(path), BS, instance=inst)
    wc = WcacheBdev.create(inst, "WCA", base)
    loop = EventLoop("blocking")
    ch = wc.open_channel(loop)
    got: list = []

    def run_until(pred, t=5.0):
        end = time.monotonic() + t
        while not pred() and time.monotonic() < end:
            loop.run_once(0.01)
        assert pred()

    ch.write(0, memoryview(pat(1)), got.append)
    assert got == [IoStatus.SUCCESS]  # cached: acknowledged at once
    ch.write(1, memoryview(pat(2)), got.append, fua=True)
    assert len(got) == 1  # FUA waits for the base
    run_until(lambda: len(got) == 2)
    assert got[1] == IoStatus.SUCCESS
    ch.write(2, memoryview(pat(3)), got.append)
    rd: list = []
    ch.read(0, 3, lambda st, v: rd.append((st, bytes(v) if v is not None else None)))
    run_until(lambda: bool(rd))
    assert rd[0] == (IoStatus.SUCCESS, pat(1) + pat(2) + pat(3))
    wc.power_fail()
    on_disk = path.read_bytes()
    # block 0 went down with the FUA destage (the whole log before it), block 2 was lost
    assert on_disk[: 3 * BS] == pat(1) + pat(2) + pat(0)
    ch.close()
    loop.close()
    wc.destroy()
    base.destroy()
    assert _leftovers(inst) == []


def test_flush_waiting_across_a_power_failure_fails(env):
    """A flush still waiting when the power fails must not report success."""
    from blockfabric.bdevs import wcache as W_

    _base, make = env
    wc = make()
    ch = wc.open_channel()
    c = wc.cache()
    W(ch, 0, pat(1))
    assert c.try_own(12345)  # someone else (another reactor) is destaging
    loop = EventLoop("blocking")
    ch.loop = loop  # so the channel polls instead of blocking
    got: list = []
    ch.flush(got.append)
    assert got == []
    with c.mutex:  # the power fails meanwhile (what power_fail does under ownership)
        c.h[W_.H_HEAD] = c.h[W_.H_TAIL]
        c.h[W_.H_GEN] += 1
    c.disown(12345)
    end = time.monotonic() + 5
    while not got and time.monotonic() < end:
        loop.run_once(0.01)
    assert got == [IoStatus.FAILED]
    ch.close()
    loop.close()


def test_objects_are_in_the_manifest(env):
    from blockfabric.shm.manifest import Manifest

    base, make = env
    wc = make()
    inst = names.parse_object_name(wc.segment_name)[0]
    kinds = {(o.name, o.kind) for o in Manifest.load(inst).objects}
    assert (wc.segment_name, "shm") in kinds and (wc.segment_name, "sem") in kinds
    assert (base.segment_name, "shm") in kinds
    assert sum(1 for n, k in kinds if ".stripe." in n and k == "sem") == 32
