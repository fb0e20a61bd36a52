"""Passthru bdev: every channel operation reaches the base unchanged."""

from __future__ import annotations

import itertools
import os

from blockfabric.bdevs.base import IoChannel, IoStatus
from blockfabric.bdevs.malloc import MallocBdev
from blockfabric.bdevs.passthru import PassthruBdev
from blockfabric.bdevs.registry import bdev_from_description
from blockfabric.bdevs.stacked import ForwardChannel

_seq = itertools.count()
BS = 512


class Spy(IoChannel):
    """A base that records what it was asked."""

    zero_copy_reads = True

    def __init__(self, bdev):
        super().__init__(bdev)
        self.calls: list[tuple] = []
        self.mem = bytearray(bdev.size_bytes)

    def _do_read(self, off, n, cb, into=None):
        self.calls.append(("read", off, n, into is not None))
        cb(IoStatus.SUCCESS, memoryview(self.mem)[off * BS : (off + n) * BS])

    def _do_write(self, off, data, cb, fua=False):
        self.calls.append(("write", off, len(data), fua))
        self.mem[off * BS : off * BS + len(data)] = data
        cb(IoStatus.SUCCESS)

    def _do_flush(self, cb):
        self.calls.append(("flush",))
        cb(IoStatus.SUCCESS)

    def _do_unmap(self, off, n, cb):
        self.calls.append(("unmap", off, n))
        cb(IoStatus.SUCCESS)

    def _do_write_zeroes(self, off, n, cb):
        self.calls.append(("write_zeroes", off, n))
        cb(IoStatus.SUCCESS)

    def _do_compare_and_write(self, off, c, w, cb, fua):
        self.calls.append(("caw", off, len(w), fua))
        cb(IoStatus.SUCCESS, -1)


def test_every_operation_and_flag_is_passed_down():
    inst = f"pt{os.getpid()}x{next(_seq)}"
    base = MallocBdev.create(inst, "B", 64, BS, hugepages="never")
    try:
        pt = PassthruBdev.create("P", base)
        spy = Spy(base)
        ch = ForwardChannel(pt, spy)
        out: list = []
        ch.write(3, memoryview(b"a" * BS), out.append, fua=True)
        ch.write(4, memoryview(b"b" * BS), out.append)
        ch.write_through = True  # (WCE=0): every write becomes FUA below
        ch.write(5, memoryview(b"c" * BS), out.append)
        ch.flush(out.append)
        ch.unmap(1, 2, out.append)
        ch.write_zeroes(7, 3, out.append)
        ch.compare_and_write(
            3, memoryview(b"a" * BS), memoryview(b"z" * BS), lambda s, d: out.append(s)
        )
        buf = memoryview(bytearray(BS))
        ch.read(3, 1, lambda s, v: out.append(s), into=buf)
        assert out == [IoStatus.SUCCESS] * 8
        assert spy.calls == [
            ("write", 3, BS, True),
            ("write", 4, BS, False),
            ("write", 5, BS, True),
            ("flush",),
            ("unmap", 1, 2),
            ("write_zeroes", 7, 3),
            ("caw", 3, BS, True),
            ("read", 3, 1, True),
        ]
        assert ch.zero_copy_reads is True
        # the real stack: another process's copy reads what this one wrote
        mine = pt.open_channel()
        out = []
        mine.write(10, memoryview(b"Q" * BS), out.append)
        other = bdev_from_description(pt.describe()).open_channel()
        other.read(10, 1, lambda s, v: out.append(bytes(v)))
        assert out == [IoStatus.SUCCESS, b"Q" * BS]
        assert pt.base_names() == ["B"] and pt.create_params["base_bdev_name"] == "B"
        mine.close()
        other.close()
    finally:
        base.destroy()
