"""Delay bdev (SPDK's ``bdev_delay``): adds latency to a base bdev's I/O.

Each read completes no earlier than ``avg_read_latency`` us after it was
submitted, one read in a hundred (at random) no earlier than
``p99_read_latency``; the same for writes (writes, compare-and-write, write
zeroes, unmap and flush count as writes, compare as a read). The I/O itself is
submitted at once; only its completion is held, on the reactor's loop timer
(no sleep on the reactor). ``bdev_delay_update_latency`` changes one value
at run time on every reactor (a new description in the ConfigUpdate).
Without a loop (a loop-less channel in the supervisor) nothing is delayed."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from .base import Bdev, Callback, CompareCallback, IoChannel, IoStatus, ReadCallback
from .stacked import ForwardChannel, StackedBdev

LATENCY_TYPES = ("avg_read", "avg_write", "p99_read", "p99_write")
MAX_LATENCY_US = 10_000_000  # 10 s: a host times out long before


class DelayChannel(ForwardChannel):
    bdev: DelayBdev

    def __init__(self, bdev: DelayBdev, base: IoChannel, loop: Any) -> None:
        super().__init__(bdev, base)
        self.loop = loop
        self.rng = random.Random()
        # a delayed read completes after its view was handed over: only
        # modules whose views stay valid (malloc, null) stay zero-copy
        self.zero_copy_reads = base.zero_copy_reads

    def _latency(self, write: bool) -> float:
        b = self.bdev
        if self.rng.random() < 0.01:
            us = b.p99_write_latency if write else b.p99_read_latency
        else:
            us = b.avg_write_latency if write else b.avg_read_latency
        return us / 1e6

    def _hold(self, write: bool, fire: Callable[..., None]) -> Callable[..., None]:
        lat = self._latency(write)
        if self.loop is None or lat <= 0:
            return fire
        due = time.monotonic() + lat
        loop = self.loop

        def done(*res: Any) -> None:
            rest = due - time.monotonic()
            if rest <= 0:
                fire(*res)
            else:
                loop.call_later(rest, lambda: fire(*res))

        return done

    def _do_read(
        self, offset_blocks: int, num_blocks: int, cb: ReadCallback, into: memoryview | None = None
    ) -> None:
        self.base.read(offset_blocks, num_blocks, self._hold(False, cb), into)

    def _do_write(
        self, offset_blocks: int, data: memoryview, cb: Callback, fua: bool = False
    ) -> None:
        self.base.write(offset_blocks, data, self._hold(True, cb), fua)

    def _do_compare(self, offset_blocks: int, data: memoryview, cb: CompareCallback) -> None:
        self.base.compare(offset_blocks, data, self._hold(False, cb))

    def _do_compare_and_write(
        self,
        offset_blocks: int,
        compare: memoryview,
        write: memoryview,
        cb: CompareCallback,
        fua: bool,
    ) -> None:
        self.base.compare_and_write(offset_blocks, compare, write, self._hold(True, cb), fua)

    def _do_flush(self, cb: Callback) -> None:
        self.base.flush(self._hold(True, cb))

    def _do_unmap(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        self.base.unmap(offset_blocks, num_blocks, self._hold(True, cb))

    def _do_write_zeroes(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        self.base.write_zeroes(offset_blocks, num_blocks, self._hold(True, cb))


class DelayBdev(StackedBdev):
    MODULE = "delay"
    PRODUCT = "delay"
    avg_read_latency: int = 0
    p99_read_latency: int = 0
    avg_write_latency: int = 0
    p99_write_latency: int = 0

    def _lat(self) -> dict[str, int]:
        return {
            "avg_read_latency": self.avg_read_latency,
            "p99_read_latency": self.p99_read_latency,
            "avg_write_latency": self.avg_write_latency,
            "p99_write_latency": self.p99_write_latency,
        }

    def _description(self) -> dict[str, Any]:
        return {**super()._description(), **self._lat()}

    def _restore(self, d: dict[str, Any]) -> None:
        super()._restore(d)
        for k in self._lat():
            setattr(self, k, int(d[k]))

    def update_description(self, d: dict[str, Any]) -> None:
        """Reactor: a new latency arrived (channels read it on every I/O)."""
        for k in self._lat():
            setattr(self, k, int(d[k]))

    @classmethod
    def create(
        cls, name: str, base: Bdev, latencies: dict[str, int], uuid: str | None = None
    ) -> DelayBdev:
        kw: dict[str, Any] = {"uuid": uuid} if uuid else {}
        b = cls(
            name=name,
            block_size=base.block_size,
            num_blocks=base.num_blocks,
            product_name=cls.PRODUCT,
            **kw,
        )
        b.base_descs = [base.describe()]
        b.supports_unmap = base.supports_unmap
        b.supports_write_zeroes = base.supports_write_zeroes
        b.supports_flush = base.supports_flush
        for k, v in latencies.items():
            setattr(b, k, int(v))
        b.create_method = "bdev_delay_create"
        b._update_params()
        return b

    def _update_params(self) -> None:
        self.create_params = {
            "base_bdev_name": self.base_names()[0],
            "name": self.name,
            **self._lat(),
            "uuid": self.uuid,
        }

    def set_latency(self, latency_type: str, us: int) -> None:
        setattr(self, latency_type + "_latency", int(us))
        self._update_params()

    def open_channel(self, loop: Any = None) -> IoChannel:
        return DelayChannel(self, self.base_bdev(0).open_channel(loop), loop)

    def driver_specific(self) -> dict[str, Any]:
        return {"delay": {"name": self.name, "base_bdev_name": self.base_names()[0], **self._lat()}}


__all__ = ["LATENCY_TYPES", "DelayBdev", "IoStatus"]
