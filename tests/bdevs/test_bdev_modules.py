"""malloc, null and aio bdevs through the IoChannel interface."""

from __future__ import annotations

import os
import threading
import time

import pytest

from blockfabric.actors.loop import EventLoop
from blockfabric.bdevs.aio import AioBdev
from blockfabric.bdevs.base import IoStatus
from blockfabric.bdevs.malloc import MallocBdev
from blockfabric.bdevs.null import NullBdev
from blockfabric.bdevs.registry import bdev_from_description
from blockfabric.shm.segment import SharedSegment


def _sync_read(ch, off, n):
    out = []
    ch.read(off, n, lambda st, mv: out.append((st, None if mv is None else bytes(mv))))
    return out[0]


def _sync(call, *args):
    out = []
    call(*args, lambda st: out.append(st))
    return out[0]


@pytest.fixture
def malloc_bdev():
    b = MallocBdev.create(f"ut{os.getpid()}", "M0", 64, 512, hugepages="never")
    yield b
    b.destroy()


def test_malloc_two_processes_share_bytes(malloc_bdev):
    ch = malloc_bdev.open_channel()
    assert _sync(ch.write, 3, memoryview(b"\xab" * 1024)) == IoStatus.SUCCESS
    # a second mapping (what another reactor does) sees the same bytes
    other = bdev_from_description(malloc_bdev.describe())
    ch2 = other.open_channel()
    st, data = _sync_read(ch2, 3, 2)
    assert st == IoStatus.SUCCESS and data == b"\xab" * 1024
    ch2.close()


def test_malloc_read_is_zero_copy_view_of_segment(malloc_bdev):
    ch = malloc_bdev.open_channel()
    got = []
    ch.read(0, 1, lambda st, mv: got.append(mv))
    mv = got[0]
    seg = SharedSegment.attach(malloc_bdev.segment_name)
    seg.buf[0:4] = b"LIVE"
    assert bytes(mv[:4]) == b"LIVE"  # the view is the shared memory itself
    mv.release()
    seg.close()


def test_range_checks_and_removed(malloc_bdev):
    ch = malloc_bdev.open_channel()
    assert _sync_read(ch, 63, 2)[0] == IoStatus.OUT_OF_RANGE
    assert _sync(ch.write, 64, memoryview(bytes(512))) == IoStatus.OUT_OF_RANGE
    assert _sync(ch.write, 0, memoryview(bytes(100))) == IoStatus.FAILED  # not a block multiple
    assert _sync(ch.unmap, -1, 1) == IoStatus.OUT_OF_RANGE
    ch.removed = True
    assert _sync_read(ch, 0, 1)[0] == IoStatus.REMOVED
    assert ch.stats.io_errors >= 3


def test_compare_and_write_and_zeroes(malloc_bdev):
    ch = malloc_bdev.open_channel()
    _sync(ch.write, 0, memoryview(b"a" * 512))
    out = []
    ch.compare(0, memoryview(b"a" * 100 + b"b" * 412), lambda st, d: out.append((st, d)))
    assert out == [(IoStatus.MISCOMPARE, 100)]
    out = []
    ch.compare_and_write(
        0, memoryview(b"a" * 512), memoryview(b"c" * 512), lambda st, d: out.append((st, d))
    )
    assert out == [(IoStatus.SUCCESS, -1)]
    assert _sync_read(ch, 0, 1)[1] == b"c" * 512
    assert _sync(ch.write_zeroes, 0, 1) == IoStatus.SUCCESS
    assert _sync_read(ch, 0, 1)[1] == bytes(512)
    assert ch.stats.num_write_ops == 2 and ch.stats.num_write_zeroes_ops == 1


def test_null_reads_zeroes_discards_writes():
    b = NullBdev.create("N0", 1024, 4096)
    ch = b.open_channel()
    assert _sync(ch.write, 0, memoryview(b"x" * 4096)) == IoStatus.SUCCESS
    st, data = _sync_read(ch, 0, 2)
    assert st == IoStatus.SUCCESS and data == bytes(8192)


def test_aio_sync_and_on_loop(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(1 << 20))
    b = AioBdev.create("A0", str(path), 4096)
    assert b.num_blocks == 256
    ch = b.open_channel()  # no loop: synchronous
    assert _sync(ch.write, 1, memoryview(b"z" * 4096)) == IoStatus.SUCCESS
    assert _sync_read(ch, 1, 1)[1] == b"z" * 4096
    ch.close()
    # on a loop: completions come back on the loop thread, never inline
    loop = EventLoop("blocking")
    ch = b.open_channel(loop)
    done = []
    caller = threading.get_ident()
    ch.read(1, 1, lambda st, mv: done.append((st, bytes(mv), threading.get_ident())))
    assert done == []
    deadline = time.monotonic() + 5
    while not done and time.monotonic() < deadline:
        loop.run_once(0.05)
    assert done[0][0] == IoStatus.SUCCESS and done[0][1] == b"z" * 4096 and done[0][2] == caller
    ch.close()
    loop.close()
    os.unlink(path)
    assert b.vanished()


def test_aio_create_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot open"):
        AioBdev.create("A", str(tmp_path / "missing"), 512)
    (tmp_path / "f").write_bytes(bytes(4096))
    with pytest.raises(ValueError, match="power of two"):
        AioBdev.create("A", str(tmp_path / "f"), 1000)
