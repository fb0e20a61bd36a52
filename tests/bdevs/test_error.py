"""Error bdev: injection counts (shared by every reactor), error kinds, corrupt-offset."""

from __future__ import annotations

import itertools
import os

import pytest

from blockfabric.bdevs.base import IoStatus
from blockfabric.bdevs.error import ErrorBdev
from blockfabric.bdevs.malloc import MallocBdev
from blockfabric.bdevs.registry import bdev_from_description
from blockfabric.shm import names

_seq = itertools.count()
BS = 512


@pytest.fixture
def ee():
    inst = f"er{os.getpid()}x{next(_seq)}"
    base = MallocBdev.create(inst, "B", 64, BS, hugepages="never")
    e = ErrorBdev.create(inst, base)
    yield base, e
    e.destroy()
    base.destroy()
    assert not [p for p in names.SHM_DIR.iterdir() if f"blockfabric.{inst}." in p.name]


def _w(ch, lba, data):
    out = []
    ch.write(lba, memoryview(data), out.append)
    return out[0]


def _r(ch, lba, n=1):
    out = []
    ch.read(lba, n, lambda st, v: out.append((st, None if v is None else bytes(v))))
    return out[0]


def test_num_injections_over_all_reactors(ee):
    base, e = ee
    assert e.name == "EE_B"
    a = e.open_channel()
    b = bdev_from_description(e.describe()).open_channel()  # another reactor
    e.inject("read", "failure", 3)
    got = [_r(ch, 0)[0] for ch in (a, b, a, b, a)]
    assert got == [IoStatus.FAILED] * 3 + [IoStatus.SUCCESS] * 2
    assert e.counters()["read"] == {"error_type": "failure", "remaining": 0, "injected": 3}
    # writes were never armed
    assert _w(a, 0, b"x" * BS) == IoStatus.SUCCESS
    e.inject("all", "nomem", 1)
    assert _w(b, 0, b"y" * BS) == IoStatus.NOMEM
    out = []
    a.flush(out.append)
    a.unmap(0, 1, out.append)
    a.flush(out.append)
    assert out == [IoStatus.NOMEM, IoStatus.NOMEM, IoStatus.SUCCESS]
    assert _r(a, 0)[0] == IoStatus.NOMEM
    e.inject("clear", "failure", 0)
    assert all(c["remaining"] == 0 for c in e.counters().values())
    assert _r(a, 0) == (IoStatus.SUCCESS, b"x" * BS)  # the NOMEM write never landed
    a.close()
    b.close()


def test_corrupt_offset_read_and_write(ee):
    base, e = ee
    ch = e.open_channel()
    bch = base.open_channel()
    assert _w(ch, 5, b"\x10" * BS) == IoStatus.SUCCESS
    e.inject("read", "corrupt_data", 1, corrupt_offset=7, corrupt_value=0x01)
    st, data = _r(ch, 5)
    assert st == IoStatus.SUCCESS and data[7] == 0x11 and data[:7] == b"\x10" * 7
    assert _r(bch, 5)[1] == b"\x10" * BS  # the medium (zero-copy) is untouched
    assert _r(ch, 5)[1] == b"\x10" * BS  # one only
    host = bytearray(b"\x20" * 2 * BS)
    e.inject("write", "corrupt_data", 1, corrupt_offset=BS + 3, corrupt_value=0xFF)
    assert _w(ch, 6, host) == IoStatus.SUCCESS
    on_disk = _r(bch, 6, 2)[1]
    assert on_disk[BS + 3] == 0x20 ^ 0xFF and on_disk[: BS + 3] == b"\x20" * (BS + 3)
    assert host == b"\x20" * 2 * BS  # the host's buffer stays as sent
    # an offset beyond the I/O: passes unchanged, still counted
    e.inject("write", "corrupt_data", 1, corrupt_offset=10 * BS, corrupt_value=1)
    assert _w(ch, 8, b"\x30" * BS) == IoStatus.SUCCESS
    assert _r(bch, 8)[1] == b"\x30" * BS and e.counters()["write"]["injected"] == 2
    ch.close()
    bch.close()
