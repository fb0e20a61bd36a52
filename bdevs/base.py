"""The block-device interface every bdev module implements.

A `Bdev` is the description of a device (name, geometry, identity) and lives in
every process. I/O goes through an `IoChannel`, which a reactor opens lazily
for itself (SPDK's per-thread channel) and then uses without asking anyone:
no lock, no message on the data path.

All I/O calls are asynchronous in form: they take a completion callback that
the channel may call before returning (malloc, null) or later from the reactor
loop (aio). Protocol cores therefore never assume which one happens.

Offsets and lengths are in blocks of `Bdev.block_size` bytes.
"""

from __future__ import annotations

import enum
import os
import time
import uuid as uuid_mod
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..control.observe import LATENCY_BOUNDS_NS
from ..runtime.loop import Loop
from ..shm import trace as _tr
from ..shm.trace import G_BDEV, TRACE


class IoStatus(enum.IntEnum):
    SUCCESS = 0
    FAILED = 1  # media / EIO
    NOMEM = 2  # no buffer right now, retry later
    REMOVED = 3  # the bdev was hot-removed: fail new I/O
    OUT_OF_RANGE = 4  # offset+length beyond the end
    MISCOMPARE = 5  # compare or compare-and-write found different data
    UNSUPPORTED = 6


# read completion: (status, data). data is a memoryview valid until the callback
# returns *or* longer for bdevs whose memory is the device itself (malloc): the
# view then stays valid as long as it is referenced, which is what lets a
# reactor pass it straight into sendmsg. When the caller passed ``into``, data
# is either (a slice of) ``into`` or, for zero-copy modules, the bdev's own
# memory with ``into`` untouched.
ReadCallback = Callable[[IoStatus, memoryview | None], None]
Callback = Callable[[IoStatus], None]
# compare completion: (status, first_diff): the byte offset of the first byte
# that differs when status is MISCOMPARE, else -1.
CompareCallback = Callable[[IoStatus, int], None]


def first_difference(a: memoryview | bytes, b: memoryview | bytes) -> int:
    """Offset of the first byte where ``a`` and ``b`` differ, -1 if equal.

    (bytes comparison is memcmp; memoryview == memoryview compares element by
    element and is ~40x slower: 128 KiB in 7 us against 300+ us.)"""
    a, b = memoryview(a).cast("B"), memoryview(b).cast("B")
    n = min(len(a), len(b))
    if a[:n].tobytes() == b[:n].tobytes():
        return -1 if len(a) == len(b) else n
    step = 4096
    for off in range(0, n, step):
        x, y = a[off : off + step].tobytes(), b[off : off + step].tobytes()
        if x != y:
            for i in range(len(x)):
                if x[i] != y[i]:
                    return off + i
    return n  # not reached


_NBUCKETS = len(LATENCY_BOUNDS_NS) + 1
_now = time.monotonic_ns
_bucket = bisect_left
# Latency accounting of reads and writes (two clock reads and a closure per
# I/O: not free on a data path that costs a few microseconds per I/O). Off
# unless BLOCKFABRIC_BDEV_LATENCY=1 is in the reactor's environment, which the
# supervisor sets when `start --metrics` or `--http` asks for the latency
# histograms (as SPDK keeps bdev histograms off until bdev_enable_histogram);
# bench/metrics.py measures what it costs. The counters stay 0 while off.
TIME_IO = os.environ.get("BLOCKFABRIC_BDEV_LATENCY", "0") == "1"


def _hist() -> list[int]:
    return [0] * _NBUCKETS


@dataclass
class IoStats:
    bytes_read: int = 0
    num_read_ops: int = 0
    bytes_written: int = 0
    num_write_ops: int = 0
    bytes_unmapped: int = 0
    num_unmap_ops: int = 0
    num_flush_ops: int = 0
    num_write_zeroes_ops: int = 0
    # nanoseconds from submission to completion, summed over completed
    # reads / writes (writes include compare-and-write)
    read_latency_ticks: int = 0
    write_latency_ticks: int = 0
    io_errors: int = 0
    # blockfabric extension: completed reads / writes per latency bucket
    # (LATENCY_BOUNDS_NS, non-cumulative, the last one is +Inf)
    read_latency_hist: list[int] = field(default_factory=_hist)
    write_latency_hist: list[int] = field(default_factory=_hist)

    def add(self, other: IoStats) -> None:
        for k in self.__dataclass_fields__:
            mine, theirs = getattr(self, k), getattr(other, k)
            if isinstance(mine, list):
                if len(theirs) == len(mine):
                    for i, v in enumerate(theirs):
                        mine[i] += v
            else:
                setattr(self, k, mine + theirs)

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (list(v) if isinstance(v, list) else v)
            for k in self.__dataclass_fields__
            for v in (getattr(self, k),)
        }

    def read_done(self, cb: ReadCallback) -> ReadCallback:
        """``cb`` wrapped to add its latency from now to its call (the
        channel's read is submitted right after)."""
        t0 = _now()

        def done(status: IoStatus, data: memoryview | None) -> None:
            dt = _now() - t0
            self.read_latency_ticks += dt
            self.read_latency_hist[_bucket(LATENCY_BOUNDS_NS, dt)] += 1
            cb(status, data)

        return done

    def write_done(self, cb: Callback) -> Callback:
        t0 = _now()

        def done(status: IoStatus) -> None:
            dt = _now() - t0
            self.write_latency_ticks += dt
            self.write_latency_hist[_bucket(LATENCY_BOUNDS_NS, dt)] += 1
            cb(status)

        return done

    def cmp_write_done(self, cb: CompareCallback) -> CompareCallback:
        t0 = _now()

        def done(status: IoStatus, diff: int) -> None:
            dt = _now() - t0
            self.write_latency_ticks += dt
            self.write_latency_hist[_bucket(LATENCY_BOUNDS_NS, dt)] += 1
            cb(status, diff)

        return done


class IoChannel:
    """One reactor's handle on one bdev. Subclasses implement the `_do_*` hooks.

    Durability: ``write(..., fua=True)`` completes only once the data is
    durable; ``write_through = True`` makes every write behave so (NVMe
    volatile write cache off, SCSI WCE = 0); ``flush`` makes every completed
    write durable. Errors of any kind complete with IoStatus.FAILED (or a more
    precise status); nothing raises into the caller.
    """

    # True when reads complete with the bdev's own memory and never touch
    # ``into`` (malloc, null): callers then need not stage a buffer
    zero_copy_reads = False

    def __init__(self, bdev: Bdev) -> None:
        self.bdev = bdev
        self.stats = IoStats()
        self.removed = False
        self.in_flight = 0
        self.write_through = False
        self.tp_id = _tr.new_object_id()  # this channel in the trace
        self._tp_named = -(1 << 62)  # TRACE.seq of its last BDEV_CHANNEL_OPEN record

    # --- range check shared by every module -------------------------------
    def _check(self, offset_blocks: int, num_blocks: int) -> IoStatus:
        if self.removed:
            return IoStatus.REMOVED
        if offset_blocks < 0 or num_blocks < 0 or offset_blocks + num_blocks > self.bdev.num_blocks:
            return IoStatus.OUT_OF_RANGE
        return IoStatus.SUCCESS

    def read(
        self,
        offset_blocks: int,
        num_blocks: int,
        cb: ReadCallback,
        into: memoryview | None = None,
    ) -> None:
        if TRACE.mask & G_BDEV:
            cb = self._tr_read(cb, offset_blocks, num_blocks * self.bdev.block_size)
        # _check, inlined (every read of every transport comes through here)
        if self.removed:
            st = IoStatus.REMOVED
        elif (
            offset_blocks < 0 or num_blocks < 0 or offset_blocks + num_blocks > self.bdev.num_blocks
        ):
            st = IoStatus.OUT_OF_RANGE
        elif into is not None and len(into) < num_blocks * self.bdev.block_size:
            st = IoStatus.FAILED
        else:
            st = IoStatus.SUCCESS
        if st:
            self.stats.io_errors += 1
            cb(st, None)
            return
        stats = self.stats
        stats.num_read_ops += 1
        stats.bytes_read += num_blocks * self.bdev.block_size
        if TIME_IO:
            cb = stats.read_done(cb)
        # hooks take ``into``/``fua`` as optional trailing arguments, so
        # modules (and test doubles) written before them keep working
        if into is None:
            self._do_read(offset_blocks, num_blocks, cb)
        else:
            self._do_read(offset_blocks, num_blocks, cb, into)

    def read_view(self, offset_blocks: int, num_blocks: int) -> memoryview | None:
        """A synchronous zero-copy read for the transports' fast paths: the
        medium's own view of the range, counted like `read`, or None when this
        module cannot (it copies, completes later, or the request is not
        plain: removed, out of range). None has no side effects; the caller
        then uses `read`, which reports any error."""
        return None

    def write(self, offset_blocks: int, data: memoryview, cb: Callback, fua: bool = False) -> None:
        bs = self.bdev.block_size
        if TRACE.mask & G_BDEV:
            cb = self._tr_write(cb, offset_blocks, len(data))
        if len(data) % bs:
            cb(IoStatus.FAILED)
            return
        num_blocks = len(data) // bs
        st = self._check(offset_blocks, num_blocks)
        if st:
            self.stats.io_errors += 1
            cb(st)
            return
        self.stats.num_write_ops += 1
        self.stats.bytes_written += len(data)
        if TIME_IO:
            cb = self.stats.write_done(cb)
        if fua or self.write_through:
            self._do_write(offset_blocks, data, cb, True)
        else:
            self._do_write(offset_blocks, data, cb)

    # --- tracepoints (bdev group), only called while the group is enabled ----
    def _tr_start(self, lba: int, n: int, kind: int) -> None:
        t = TRACE
        if t.seq - self._tp_named > t.slot_mask:  # (again once the ring may have lost it)
            self._tp_named = t.seq + 1
            t.rec_name(_tr.TP_BDEV_OPEN, self.tp_id, self.bdev.name)
        t.rec(_tr.TP_BDEV_START, self.tp_id, 0, lba, n, kind)

    def _tr_read(self, cb: ReadCallback, lba: int, n: int) -> ReadCallback:
        self._tr_start(lba, n, 1)
        obj = self.tp_id

        def done(st: IoStatus, data: memoryview | None) -> None:
            if TRACE.mask & G_BDEV:
                TRACE.rec(_tr.TP_BDEV_DONE, obj, 0, lba, n, int(st))
            cb(st, data)

        return done

    def _tr_write(self, cb: Callback, lba: int, n: int) -> Callback:
        self._tr_start(lba, n, 2)
        obj = self.tp_id

        def done(st: IoStatus) -> None:
            if TRACE.mask & G_BDEV:
                TRACE.rec(_tr.TP_BDEV_DONE, obj, 0, lba, n, int(st))
            cb(st)

        return done

    def _check_cmp(self, offset_blocks: int, *bufs: memoryview) -> IoStatus:
        bs = self.bdev.block_size
        n = len(bufs[0])
        if n % bs or any(len(b) != n for b in bufs):
            return IoStatus.FAILED
        return self._check(offset_blocks, n // bs)

    def compare(self, offset_blocks: int, data: memoryview, cb: CompareCallback) -> None:
        """Compare `data` with the medium: cb(MISCOMPARE, first differing byte)
        when different, cb(SUCCESS, -1) when equal."""
        st = self._check_cmp(offset_blocks, data)
        if st:
            cb(st, -1)
            return
        self._do_compare(offset_blocks, data, cb)

    def compare_and_write(
        self,
        offset_blocks: int,
        compare: memoryview,
        write: memoryview,
        cb: CompareCallback,
        fua: bool = False,
    ) -> None:
        """Compare, and write only when equal, atomically against every write
        to the range (from every reactor, for modules with cross-process range
        locks: malloc, aio, wcache). A miscompare writes nothing."""
        st = self._check_cmp(offset_blocks, compare, write)
        if st:
            cb(st, -1)
            return
        self.stats.num_write_ops += 1
        self.stats.bytes_written += len(write)
        if TIME_IO:
            cb = self.stats.cmp_write_done(cb)
        self._do_compare_and_write(offset_blocks, compare, write, cb, fua or self.write_through)

    def flush(self, cb: Callback) -> None:
        if self.removed:
            cb(IoStatus.REMOVED)
            return
        self.stats.num_flush_ops += 1
        self._do_flush(cb)

    def unmap(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        st = self._check(offset_blocks, num_blocks)
        if st:
            cb(st)
            return
        self.stats.num_unmap_ops += 1
        self.stats.bytes_unmapped += num_blocks * self.bdev.block_size
        self._do_unmap(offset_blocks, num_blocks, cb)

    def write_zeroes(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        st = self._check(offset_blocks, num_blocks)
        if st:
            cb(st)
            return
        self.stats.num_write_zeroes_ops += 1
        self._do_write_zeroes(offset_blocks, num_blocks, cb)

    # --- module hooks -----------------------------------------------------
    def _do_read(
        self,
        offset_blocks: int,
        num_blocks: int,
        cb: ReadCallback,
        into: memoryview | None = None,
    ) -> None:
        raise NotImplementedError

    def _do_write(
        self, offset_blocks: int, data: memoryview, cb: Callback, fua: bool = False
    ) -> None:
        raise NotImplementedError

    def _do_compare(self, offset_blocks: int, data: memoryview, cb: CompareCallback) -> None:
        def _cmp(status: IoStatus, cur: memoryview | None) -> None:
            if status or cur is None:
                cb(status or IoStatus.FAILED, -1)
                return
            d = first_difference(cur[: len(data)], data)
            cb(IoStatus.MISCOMPARE if d >= 0 else IoStatus.SUCCESS, d)

        self._do_read(offset_blocks, len(data) // self.bdev.block_size, _cmp)

    def _do_compare_and_write(
        self,
        offset_blocks: int,
        compare: memoryview,
        write: memoryview,
        cb: CompareCallback,
        fua: bool,
    ) -> None:
        """Fallback (nvme, null): compare then write; atomic only against I/O
        of this reactor when the module completes synchronously."""

        def _after_cmp(st: IoStatus, diff: int) -> None:
            if st:
                cb(st, diff)
            else:
                if fua:
                    self._do_write(offset_blocks, write, lambda s: cb(s, -1), True)
                else:
                    self._do_write(offset_blocks, write, lambda s: cb(s, -1))

        self._do_compare(offset_blocks, compare, _after_cmp)

    def _do_flush(self, cb: Callback) -> None:
        cb(IoStatus.SUCCESS)

    def _do_unmap(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        self._do_write_zeroes(offset_blocks, num_blocks, cb)

    def _do_write_zeroes(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the channel holds (mappings, fds). Idempotent."""


@dataclass
class Bdev:
    """Description of a block device; identical in every process."""

    name: str
    block_size: int
    num_blocks: int
    uuid: str = field(default_factory=lambda: str(uuid_mod.uuid4()))
    aliases: list[str] = field(default_factory=list)
    product_name: str = "Generic"
    # the RPC params that recreate this bdev (save_config)
    create_method: str = ""
    create_params: dict[str, Any] = field(default_factory=dict)
    supports_unmap: bool = True
    supports_write_zeroes: bool = True
    supports_flush: bool = True
    # set in each process once the supervisor announced a hot-remove
    removed: bool = False

    @property
    def size_bytes(self) -> int:
        return self.block_size * self.num_blocks

    def open_channel(self, loop: Loop | None = None) -> IoChannel:
        """Open this process's channel. ``loop`` (the reactor's event loop) is
        given on reactors; modules that complete I/O later (aio) use it to get
        their completions back onto the reactor thread."""
        raise NotImplementedError

    # the module name in descriptions and the product name it reports
    MODULE: ClassVar[str] = ""
    PRODUCT: ClassVar[str] = "Generic"

    def describe(self) -> dict[str, Any]:
        """What reactors need to rebuild this Bdev (broadcast in ConfigUpdate):
        the geometry plus the module's own fields (e.g. the segment name)."""
        return {
            "module": self.MODULE,
            "name": self.name,
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "uuid": self.uuid,
            **self._description(),
        }

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> Bdev:
        b = cls(
            name=d["name"],
            block_size=d["block_size"],
            num_blocks=d["num_blocks"],
            uuid=d["uuid"],
            product_name=cls.PRODUCT,
        )
        b._restore(d)
        return b

    def _description(self) -> dict[str, Any]:
        return {}

    def _restore(self, d: dict[str, Any]) -> None:
        """Take the module's own fields back from a description."""

    def nguid(self) -> bytes:
        """16-byte NVMe namespace GUID derived from the bdev UUID."""
        return uuid_mod.UUID(self.uuid).bytes

    def eui64(self) -> bytes:
        return uuid_mod.UUID(self.uuid).bytes[:8]

    def get_bdevs_entry(self) -> dict[str, Any]:
        """One element of bdev_get_bdevs' answer, with SPDK's field names."""
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "product_name": self.product_name,
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "uuid": self.uuid,
            "assigned_rate_limits": {
                "rw_ios_per_sec": 0,
                "rw_mbytes_per_sec": 0,
                "r_mbytes_per_sec": 0,
                "w_mbytes_per_sec": 0,
            },
            "claimed": False,
            "zoned": False,
            "supported_io_types": {
                "read": True,
                "write": True,
                "unmap": self.supports_unmap,
                "write_zeroes": self.supports_write_zeroes,
                "flush": self.supports_flush,
                "reset": True,
                "compare": True,
                "compare_and_write": True,
                "abort": False,
                "nvme_admin": False,
                "nvme_io": False,
            },
            "driver_specific": self.driver_specific(),
        }

    def driver_specific(self) -> dict[str, Any]:
        return {}
