"""null bdev: reads return zeroes, writes are discarded (for benchmarks)."""

from __future__ import annotations

from typing import Any

from .base import Bdev, Callback, CompareCallback, IoChannel, IoStatus, ReadCallback

_ZEROS = memoryview(bytes(4 << 20))  # read source, shared by every null channel of a process


class NullChannel(IoChannel):
    zero_copy_reads = True

    def _do_read(
        self, offset_blocks: int, num_blocks: int, cb: ReadCallback, into: memoryview | None = None
    ) -> None:
        n = num_blocks * self.bdev.block_size
        if n <= len(_ZEROS):
            cb(IoStatus.SUCCESS, _ZEROS[:n])
        else:
            cb(IoStatus.SUCCESS, memoryview(bytes(n)))

    def read_view(self, offset_blocks: int, num_blocks: int) -> memoryview | None:
        n = num_blocks * self.bdev.block_size
        if (
            self.removed
            or offset_blocks < 0
            or num_blocks <= 0
            or offset_blocks + num_blocks > self.bdev.num_blocks
            or n > len(_ZEROS)
        ):
            return None
        self.stats.num_read_ops += 1
        self.stats.bytes_read += n
        return _ZEROS[:n]

    def _do_write(
        self, offset_blocks: int, data: memoryview, cb: Callback, fua: bool = False
    ) -> None:
        cb(IoStatus.SUCCESS)

    def _do_write_zeroes(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        cb(IoStatus.SUCCESS)

    def _do_compare(self, offset_blocks: int, data: memoryview, cb: CompareCallback) -> None:
        cb(IoStatus.SUCCESS, -1)  # a null device compares equal to anything, like SPDK's

    def _do_compare_and_write(
        self,
        offset_blocks: int,
        compare: memoryview,
        write: memoryview,
        cb: CompareCallback,
        fua: bool,
    ) -> None:
        cb(IoStatus.SUCCESS, -1)


class NullBdev(Bdev):
    MODULE = "null"
    PRODUCT = "Null disk"

    @classmethod
    def create(
        cls, name: str, num_blocks: int, block_size: int, uuid: str | None = None
    ) -> NullBdev:
        kw: dict[str, Any] = {"uuid": uuid} if uuid else {}
        b = cls(
            name=name, block_size=block_size, num_blocks=num_blocks, product_name=cls.PRODUCT, **kw
        )
        b.create_method = "bdev_null_create"
        b.create_params = {
            "name": name,
            "num_blocks": num_blocks,
            "block_size": block_size,
            "uuid": b.uuid,
        }
        return b

    def open_channel(self, loop: Any = None) -> IoChannel:
        return NullChannel(self)

    def destroy(self) -> None:
        pass
