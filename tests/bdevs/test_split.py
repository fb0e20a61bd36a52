"""Split bdev: part boundaries on the base, out-of-range refused."""

from __future__ import annotations

import itertools
import os

import pytest

from blockfabric.bdevs.base import IoStatus
from blockfabric.bdevs.malloc import MallocBdev
from blockfabric.bdevs.registry import bdev_from_description
from blockfabric.bdevs.split import SplitBdev

_seq = itertools.count()
BS = 512


@pytest.fixture
def base():
    b = MallocBdev.create(f"sp{os.getpid()}x{next(_seq)}", "Base", 4096, BS, hugepages="never")
    yield b
    b.destroy()


def _w(ch, lba, data):
    out = []
    ch.write(lba, memoryview(data), out.append)
    return out[0]


def _r(ch, lba, n):
    out = []
    ch.read(lba, n, lambda st, v: out.append((st, None if v is None else bytes(v))))
    return out[0]


def test_parts_cover_their_own_blocks_only(base):
    parts = SplitBdev.create_parts(base, 4)
    assert [p.name for p in parts] == ["Basep0", "Basep1", "Basep2", "Basep3"]
    assert all(p.num_blocks == 1024 for p in parts)
    chans = [bdev_from_description(p.describe()).open_channel() for p in parts]
    for i, ch in enumerate(chans):
        assert _w(ch, 0, bytes([i + 1]) * BS) == IoStatus.SUCCESS
        assert _w(ch, 1023, bytes([i + 0x41]) * BS) == IoStatus.SUCCESS
        # one block past the end, or a write straddling it, never reaches the next part
        assert _w(ch, 1023, b"x" * 2 * BS) == IoStatus.OUT_OF_RANGE
        assert _r(ch, 1024, 1)[0] == IoStatus.OUT_OF_RANGE
        out = []
        ch.unmap(1000, 25, out.append)
        assert out == [IoStatus.OUT_OF_RANGE]
    bch = base.open_channel()
    for i in range(4):
        assert _r(bch, i * 1024, 1)[1] == bytes([i + 1]) * BS
        assert _r(bch, i * 1024 + 1023, 1)[1] == bytes([i + 0x41]) * BS
    # write zeroes and compare-and-write land at the part's offset
    out = []
    chans[2].write_zeroes(1023, 1, out.append)
    assert out == [IoStatus.SUCCESS] and _r(bch, 3071, 1)[1] == b"\0" * BS
    res = []
    chans[1].compare_and_write(
        0, memoryview(b"\x02" * BS), memoryview(b"N" * BS), lambda s, d: res.append(s)
    )
    assert res == [IoStatus.SUCCESS] and _r(bch, 1024, 1)[1] == b"N" * BS
    for ch in chans:
        ch.close()


def test_split_size_and_refusals(base):
    with pytest.raises(ValueError, match="do not fit"):
        SplitBdev.create_parts(base, 3, 1)  # 3 x 1 MiB of a 2 MiB base
    parts = SplitBdev.create_parts(base, 3, 0)
    assert [p.num_blocks for p in parts] == [1365] * 3  # the remainder stays unused
    one = SplitBdev.create_parts(base, 1, 1)
    assert one[0].num_blocks == 2048 and one[0].offset_blocks == 0
    assert one[0].create_params == {"base_bdev": "Base", "split_count": 1, "split_size_mb": 1}
    # identity stable across a restart: derived from the base's
    again = SplitBdev.create_parts(base, 3)
    assert [p.uuid for p in again] == [p.uuid for p in parts]
    with pytest.raises(ValueError, match="too small"):
        SplitBdev.create_parts(base, 8192)
