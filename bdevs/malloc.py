"""malloc bdev: a RAM disk in a shared-memory segment every reactor maps.

The supervisor creates the segment; each reactor attaches it when it first
opens a channel, so any reactor reads and writes the same bytes directly — no
message, no lock. Reads complete with a memoryview of the segment itself,
which the transports pass straight to sendmsg (zero copy).
"""

from __future__ import annotations

from typing import Any

from ..shm.segment import SharedSegment
from .base import Bdev, Callback, IoChannel, IoStatus, ReadCallback

# one zero-filled chunk per process, for write_zeroes/unmap without allocating
_ZERO_CHUNK = memoryview(bytes(1 << 20))


class MallocChannel(IoChannel):
    def __init__(self, bdev: MallocBdev, mem: memoryview) -> None:
        super().__init__(bdev)
        self.mem = mem
        self.bs = bdev.block_size

    def _do_read(self, offset_blocks: int, num_blocks: int, cb: ReadCallback) -> None:
        bs = self.bs
        cb(IoStatus.SUCCESS, self.mem[offset_blocks * bs : (offset_blocks + num_blocks) * bs])

    def _do_write(self, offset_blocks: int, data: memoryview, cb: Callback) -> None:
        start = offset_blocks * self.bs
        self.mem[start : start + len(data)] = data
        cb(IoStatus.SUCCESS)

    def _do_write_zeroes(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        pos = offset_blocks * self.bs
        end = pos + num_blocks * self.bs
        while pos < end:
            n = min(end - pos, len(_ZERO_CHUNK))
            self.mem[pos : pos + n] = _ZERO_CHUNK[:n]
            pos += n
        cb(IoStatus.SUCCESS)

    def close(self) -> None:
        self.removed = True
        self.mem = memoryview(b"")
        self.bdev.detach()  # type: ignore[attr-defined]


class MallocBdev(Bdev):
    MODULE = "malloc"
    PRODUCT = "Malloc disk"
    segment_name: str = ""
    _segment: SharedSegment | None = None

    def _description(self) -> dict[str, Any]:
        return {"segment": self.segment_name}

    def _restore(self, d: dict[str, Any]) -> None:
        self.segment_name = d["segment"]

    @classmethod
    def create(
        cls,
        instance: str,
        name: str,
        num_blocks: int,
        block_size: int,
        uuid: str | None = None,
        hugepages: Any = "auto",
    ) -> MallocBdev:
        seg = SharedSegment.create(
            instance, f"malloc.{name}", num_blocks * block_size, hugepages=hugepages
        )
        kw: dict[str, Any] = {"uuid": uuid} if uuid else {}
        b = cls(
            name=name,
            block_size=block_size,
            num_blocks=num_blocks,
            product_name=cls.PRODUCT,
            **kw,
        )
        b.segment_name = seg.name
        b._segment = seg
        b.create_method = "bdev_malloc_create"
        b.create_params = {
            "name": name,
            "num_blocks": num_blocks,
            "block_size": block_size,
            "uuid": b.uuid,
        }
        return b

    def open_channel(self, loop: Any = None) -> IoChannel:
        if self._segment is None:
            self._segment = SharedSegment.attach(self.segment_name)
        return MallocChannel(self, self._segment.buf)

    def detach(self) -> None:
        """Unmap in this process (views still held by queued sends keep the
        mapping alive until they are released; SharedSegment defers)."""
        if self._segment is not None:
            self._segment.close()

    def destroy(self) -> None:
        """Supervisor: unmap and unlink the segment."""
        seg = self._segment or SharedSegment.attach(self.segment_name)
        self._segment = None
        seg.close()
        seg.unlink()

    def driver_specific(self) -> dict[str, Any]:
        return {"malloc": {"segment": self.segment_name}}
