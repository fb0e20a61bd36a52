"""raid0 / concat / raid1 through the IoChannel interface: data layout on the
members, degrade on a member failure, rebuild onto a replacement, locks."""

from __future__ import annotations

import itertools
import os

import pytest

from blockfabric.actors.loop import EventLoop
from blockfabric.bdevs.base import IoStatus
from blockfabric.bdevs.error import ErrorBdev
from blockfabric.bdevs.malloc import MallocBdev
from blockfabric.bdevs.raid import FAILED, ONLINE, REBUILDING, RaidBdev
from blockfabric.bdevs.registry import bdev_from_description
from blockfabric.shm import names

_seq = itertools.count()
BS = 512


def _leftovers(inst: str) -> list[str]:
    return sorted(p.name for p in names.SHM_DIR.iterdir() if f"blockfabric.{inst}." in p.name)


@pytest.fixture
def env():
    inst = f"rd{os.getpid()}x{next(_seq)}"
    made: list = []

    def malloc(name: str, blocks: int = 1024):
        b = MallocBdev.create(inst, name, blocks, BS, hugepages="never")
        made.append(b)
        return b

    def raid(name, level, bases, strip_kb=0):
        r = RaidBdev.create(inst, name, level, bases, strip_kb)
        made.append(r)
        return r

    def error(base):
        e = ErrorBdev.create(inst, base)
        made.append(e)
        return e

    yield inst, malloc, raid, error
    for b in reversed(made):
        b.destroy()
    assert _leftovers(inst) == []


def W(ch, lba, data, fua=False):
    out = []
    ch.write(lba, memoryview(data), out.append, fua=fua)
    assert out
    return out[0]


def R(ch, lba, n, into=None):
    out = []
    ch.read(lba, n, lambda st, v: out.append((st, None if v is None else bytes(v))), into)
    assert out
    return out[0]


def member_bytes(b, lba, n):
    ch = bdev_from_description(b.describe()).open_channel()
    try:
        st, data = R(ch, lba, n)
        assert st == IoStatus.SUCCESS
        return data
    finally:
        ch.close()


def pattern(n_blocks: int, seed: int = 0) -> bytes:
    return b"".join(
        ((i + seed) & 0xFFFF).to_bytes(2, "little") * (BS // 2) for i in range(n_blocks)
    )


def test_raid0_stripes_round_robin_over_members(env):
    _, malloc, raid, _ = env
    a, b, c = malloc("A"), malloc("B"), malloc("C")
    r = raid("R0", "raid0", [a, b, c], strip_kb=4)  # 8 blocks a strip
    assert r.num_blocks == 3 * 1024 and r.strip_blocks == 8
    ch = r.open_channel()
    data = pattern(60)  # strips 0..7 (the last partial), starting mid-strip
    assert W(ch, 4, data) == IoStatus.SUCCESS
    assert R(ch, 4, 60) == (IoStatus.SUCCESS, data)
    # raid block L is strip L//8 on member (L//8) % 3 at member strip (L//8)//3
    for lba in range(4, 64):
        strip, within = divmod(lba, 8)
        m = (a, b, c)[strip % 3]
        got = member_bytes(m, (strip // 3) * 8 + within, 1)
        assert got == data[(lba - 4) * BS : (lba - 3) * BS], lba
    # a read into a caller buffer spanning strips lands in that buffer
    buf = memoryview(bytearray(60 * BS))
    st, got = R(ch, 4, 60, into=buf)
    assert st == IoStatus.SUCCESS and got == data and bytes(buf) == data
    ch.close()


def test_raid0_unmap_write_zeroes_and_out_of_range(env):
    _, malloc, raid, _ = env
    a, b = malloc("A"), malloc("B")
    r = raid("R0", "raid0", [a, b], strip_kb=4)
    ch = r.open_channel()
    assert W(ch, 0, b"\x11" * (64 * BS)) == IoStatus.SUCCESS
    out = []
    ch.write_zeroes(3, 40, out.append)
    assert out == [IoStatus.SUCCESS]
    st, got = R(ch, 0, 64)
    assert got == b"\x11" * (3 * BS) + b"\0" * (40 * BS) + b"\x11" * (21 * BS)
    out = []
    ch.unmap(0, 64, out.append)
    assert out == [IoStatus.SUCCESS]
    assert R(ch, 0, 64)[1] == b"\0" * (64 * BS)
    assert W(ch, r.num_blocks - 1, b"x" * 2 * BS) == IoStatus.OUT_OF_RANGE
    assert R(ch, r.num_blocks, 1)[0] == IoStatus.OUT_OF_RANGE
    ch.close()


def test_concat_lays_members_end_to_end(env):
    _, malloc, raid, _ = env
    a, b = malloc("A", 100), malloc("B", 64)  # a rounds down to 96 (strips of 8)
    r = raid("C0", "concat", [a, b], strip_kb=4)
    assert r.num_blocks == 96 + 64
    ch = r.open_channel()
    data = pattern(10, 7)
    assert W(ch, 90, data) == IoStatus.SUCCESS  # 6 blocks on A, 4 on B
    assert member_bytes(a, 90, 6) == data[: 6 * BS]
    assert member_bytes(b, 0, 4) == data[6 * BS :]
    assert R(ch, 90, 10) == (IoStatus.SUCCESS, data)
    ch.close()


def test_compare_and_write_across_strips(env):
    _, malloc, raid, _ = env
    r = raid("R0", "raid0", [malloc("A"), malloc("B")], strip_kb=4)
    ch = r.open_channel()
    old, new = pattern(4, 1), pattern(4, 2)
    assert W(ch, 6, old) == IoStatus.SUCCESS  # blocks 6..9: two members
    out = []
    ch.compare_and_write(6, memoryview(new), memoryview(old), lambda s, d: out.append((s, d)))
    assert out[0][0] == IoStatus.MISCOMPARE and out[0][1] == 0
    out = []
    wrong = bytearray(old)
    wrong[3 * BS + 5] ^= 1  # differs on the second member
    ch.compare(6, memoryview(bytes(wrong)), lambda s, d: out.append((s, d)))
    assert out == [(IoStatus.MISCOMPARE, 3 * BS + 5)]
    out = []
    ch.compare_and_write(6, memoryview(old), memoryview(new), lambda s, d: out.append(s), fua=True)
    assert out == [IoStatus.SUCCESS]
    assert R(ch, 6, 4)[1] == new
    # the lock table is empty again
    assert r.state().q[4] == 0
    ch.close()


def test_raid1_writes_all_reads_any_degrades_and_rebuilds(env):
    _, malloc, raid, error = env
    a, b = malloc("A"), malloc("B")
    ea = error(a)  # member 0 can be made to fail
    r = raid("M1", "raid1", [ea, b])
    ch = r.open_channel()
    data = pattern(32, 3)
    assert W(ch, 100, data, fua=True) == IoStatus.SUCCESS
    assert member_bytes(a, 100, 32) == data and member_bytes(b, 100, 32) == data
    # reads alternate over both members
    for _ in range(4):
        assert R(ch, 100, 32) == (IoStatus.SUCCESS, data)
    # member 0 fails its next read: the read is served by member 1, the array
    # degrades, and every later write goes to member 1 only
    ea.inject("all", "failure", 1000)
    reads = [R(ch, 100, 32) for _ in range(3)]
    assert reads == [(IoStatus.SUCCESS, data)] * 3
    assert r.slot_state(0) == FAILED and r.slot_state(1) == ONLINE
    info = r.raid_info()
    assert info["state"] == "online" and info["degraded"] is True
    assert info["num_base_bdevs_operational"] == 1 and info["num_base_bdevs_discovered"] == 1
    assert info["base_bdevs_list"][0]["state"] == "failed"
    data2 = pattern(32, 9)
    assert W(ch, 100, data2) == IoStatus.SUCCESS
    assert member_bytes(b, 100, 32) == data2 and member_bytes(a, 100, 32) == data
    # the last member is never failed: its errors reach the caller
    # rebuild onto a replacement C, with a host write landing mid-rebuild
    c = malloc("C")
    r.remove_slot(0)
    r.update_description(r.describe())
    slot = r.add_member(c)
    r.update_description(r.describe())
    assert slot == 0 and r.slot_state(0) == REBUILDING
    assert r.rebuild_step(64 * BS) is False  # first chunk copied
    assert R(ch, 100, 32) == (IoStatus.SUCCESS, data2)  # reads still from B
    data3 = pattern(8, 5)
    assert W(ch, 900, data3) == IoStatus.SUCCESS  # ahead of the cursor: goes to C too
    while not r.rebuild_step(64 * BS):
        pass
    assert r.slot_state(0) == ONLINE and "process" not in r.raid_info()
    full = member_bytes(b, 0, 1024)
    assert member_bytes(c, 0, 1024) == full
    assert full[900 * BS : 908 * BS] == data3
    assert r.create_params["base_bdevs"] == ["C", "B"]
    ch.close()


def test_raid1_write_failure_on_one_member_is_not_an_error(env):
    _, malloc, raid, error = env
    a, b = malloc("A"), malloc("B")
    eb = error(b)
    r = raid("M1", "raid1", [a, eb])
    ch = r.open_channel()
    eb.inject("write", "failure", 1)
    assert W(ch, 0, b"z" * BS) == IoStatus.SUCCESS
    assert r.slot_state(1) == FAILED
    # flush goes to the remaining member only and succeeds
    out = []
    ch.flush(out.append)
    assert out == [IoStatus.SUCCESS]
    ch.close()


def test_raid1_last_member_error_reaches_the_caller(env):
    _, malloc, raid, error = env
    ea = error(malloc("A"))
    r = raid("M1", "raid1", [ea])
    ch = r.open_channel()
    ea.inject("read", "failure", 1)
    assert R(ch, 0, 1)[0] == IoStatus.FAILED
    assert r.slot_state(0) == ONLINE
    ch.close()


def test_raid0_member_failure_takes_array_offline(env):
    _, malloc, raid, _ = env
    r = raid("R0", "raid0", [malloc("A"), malloc("B")], strip_kb=4)
    ch = r.open_channel()
    r.fail_slot(1, keep_one=False)
    assert r.raid_info()["state"] == "offline"
    assert R(ch, 8, 1)[0] == IoStatus.FAILED
    assert W(ch, 0, b"q" * BS) == IoStatus.FAILED
    ch.close()


def test_write_waits_for_a_locked_range_on_the_loop(env):
    _, malloc, raid, _ = env
    r = raid("M1", "raid1", [malloc("A"), malloc("B")])
    loop = EventLoop("busy")
    ch = r.open_channel(loop)
    other = bdev_from_description(r.describe())  # another reactor's copy
    held = other.open_channel().locks.try_lock(10, 20)  # type: ignore[attr-defined]
    assert held >= 0
    out: list = []
    ch.write(15, memoryview(b"k" * BS), out.append)
    assert out == []  # waiting, the reactor not blocked
    loop.run_once(0.001)
    assert out == []
    from blockfabric.bdevs.raid import _RangeLocks

    _RangeLocks(r.state()).unlock(held)
    for _ in range(100):
        loop.run_once(0.001)
        if out:
            break
    assert out == [IoStatus.SUCCESS]
    ch.close()
    loop.close()


def test_geometry_refusals(env):
    _, malloc, raid, _ = env
    a = malloc("A")
    with pytest.raises(ValueError, match="power of two"):
        RaidBdev.geometry("raid0", [a], 3)
    big = MallocBdev.create(env[0], "Big", 64, 4096, hugepages="never")
    try:
        with pytest.raises(ValueError, match="block size"):
            RaidBdev.geometry("raid1", [a, big], 0)
    finally:
        big.destroy()


class _Spy:
    """Stands in for a member channel: records what reaches it."""

    zero_copy_reads = True

    def __init__(self, name):
        self.bdev = type("B", (), {"name": name})()
        self.calls: list[tuple] = []

    def write(self, lba, data, cb, fua=False):
        self.calls.append(("write", lba, len(data), fua))
        cb(IoStatus.SUCCESS)

    def flush(self, cb):
        self.calls.append(("flush",))
        cb(IoStatus.SUCCESS)

    def unmap(self, lba, n, cb):
        self.calls.append(("unmap", lba, n))
        cb(IoStatus.SUCCESS)

    def write_zeroes(self, lba, n, cb):
        self.calls.append(("write_zeroes", lba, n))
        cb(IoStatus.SUCCESS)

    def close(self):
        pass


@pytest.mark.parametrize("level", ["raid0", "raid1", "concat"])
def test_fua_and_flush_reach_every_member(env, level):
    _, malloc, raid, _ = env
    r = raid("R", level, [malloc("A"), malloc("B")], strip_kb=0 if level == "raid1" else 4)
    ch = r.open_channel()
    spies = {i: _Spy(n) for i, n in enumerate(("A", "B"))}
    ch.members = dict(spies)  # type: ignore[attr-defined]
    out: list = []
    lba = 1020 if level == "concat" else 4  # concat: spans the member boundary
    ch.write(lba, memoryview(b"f" * 8 * BS), out.append, fua=True)
    ch.write_through = True
    ch.write(lba, memoryview(b"g" * 8 * BS), out.append)
    ch.flush(out.append)
    ch.unmap(lba, 8, out.append)
    assert out == [IoStatus.SUCCESS] * 4
    for s in spies.values():
        writes = [c for c in s.calls if c[0] == "write"]
        assert writes and all(c[3] is True for c in writes), (level, s.calls)
        assert ("flush",) in s.calls
        assert any(c[0] == "unmap" for c in s.calls)
    if level == "raid1":
        assert all(("write", lba, 8 * BS, True) in s.calls for s in spies.values())
    ch.close()
