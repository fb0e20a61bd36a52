"""malloc bdev: a RAM disk in a shared-memory segment every reactor maps.

The supervisor creates the segment; each reactor attaches it when it first
opens a channel, so any reactor reads and writes the same bytes directly — no
message, no lock. Reads complete with a memoryview of the segment itself,
which the transports pass straight to sendmsg (zero copy).

Writes, write-zeroes and compare-and-write copy under the instance's range
locks (bdevs/locks.py) covering their bytes, so overlapping writes from two
reactors never tear a block and compare-and-write is atomic against every
write from every reactor. FUA and flush are no-ops: the memory is the medium.
"""

from __future__ import annotations

from typing import Any

from ..shm.segment import SharedSegment
from .base import (
    Bdev,
    Callback,
    CompareCallback,
    IoChannel,
    IoStatus,
    ReadCallback,
    first_difference,
)
from .locks import (
    NSTRIPES,
    REGION,
    STEAL_AFTER_S,
    StripeLocks,
    bdev_key,
    instance_of_segment,
)

# one zero-filled chunk per process, for write_zeroes/unmap without allocating
_ZERO_CHUNK = memoryview(bytes(1 << 20))


class MallocChannel(IoChannel):
    zero_copy_reads = True

    def __init__(self, bdev: Bdev, mem: memoryview) -> None:
        super().__init__(bdev)
        self.mem = mem
        self.bs = bdev.block_size
        # (a RAM bdev of a test may lend its own memory: process-local locks)
        self.locks = StripeLocks.get(instance_of_segment(getattr(bdev, "segment_name", "")))
        self.sems = self.locks.sems
        self.key = bdev_key(bdev.name)

    def _do_read(
        self, offset_blocks: int, num_blocks: int, cb: ReadCallback, into: memoryview | None = None
    ) -> None:
        bs = self.bs  # zero copy: the view is the medium, ``into`` stays untouched
        cb(IoStatus.SUCCESS, self.mem[offset_blocks * bs : (offset_blocks + num_blocks) * bs])

    def read_view(self, offset_blocks: int, num_blocks: int) -> memoryview | None:
        # `read` + `_do_read` in one call, for the fast paths (no callback)
        if self.removed or offset_blocks < 0 or num_blocks <= 0:
            return None
        end = offset_blocks + num_blocks
        if end > self.bdev.num_blocks:
            return None
        st = self.stats
        bs = self.bs
        st.num_read_ops += 1
        st.bytes_read += num_blocks * bs
        return self.mem[offset_blocks * bs : end * bs]

    def _do_write(
        self, offset_blocks: int, data: memoryview, cb: Callback, fua: bool = False
    ) -> None:
        start = offset_blocks * self.bs
        end = start + len(data)
        r0 = start // REGION
        if (end - 1) // REGION == r0:
            # the hot path, inlined: one stripe (StripeLocks.lock does the same)
            i = (self.key + r0) % NSTRIPES
            sem = self.sems[i]
            if not sem.acquire(True, STEAL_AFTER_S):
                self.locks._stolen(i)
            try:
                self.mem[start:end] = data
                st = IoStatus.SUCCESS
            except (ValueError, TypeError, IndexError):  # closed channel, odd buffer
                st = IoStatus.FAILED
            finally:
                sem.release()
            cb(st)
            return
        held = self.locks.lock(self.key, start, end)
        try:
            self.mem[start:end] = data
            st = IoStatus.SUCCESS
        except (ValueError, TypeError, IndexError):
            st = IoStatus.FAILED
        finally:
            self.locks.unlock(held)
        cb(st)

    def _do_compare(self, offset_blocks: int, data: memoryview, cb: CompareCallback) -> None:
        start = offset_blocks * self.bs
        held = self.locks.lock(self.key, start, start + len(data))
        try:
            d = first_difference(self.mem[start : start + len(data)], data)
        finally:
            self.locks.unlock(held)
        cb(IoStatus.MISCOMPARE if d >= 0 else IoStatus.SUCCESS, d)

    def _do_compare_and_write(
        self,
        offset_blocks: int,
        compare: memoryview,
        write: memoryview,
        cb: CompareCallback,
        fua: bool,
    ) -> None:
        start = offset_blocks * self.bs
        end = start + len(write)
        held = self.locks.lock(self.key, start, end)
        try:
            d = first_difference(self.mem[start:end], compare)
            if d < 0:
                self.mem[start:end] = write
            st = IoStatus.MISCOMPARE if d >= 0 else IoStatus.SUCCESS
        except (ValueError, TypeError, IndexError):
            st, d = IoStatus.FAILED, -1
        finally:
            self.locks.unlock(held)
        cb(st, d)

    def _do_write_zeroes(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        pos = offset_blocks * self.bs
        end = pos + num_blocks * self.bs
        while pos < end:
            n = min(end - pos, len(_ZERO_CHUNK))
            held = self.locks.lock(self.key, pos, pos + n)
            try:
                self.mem[pos : pos + n] = _ZERO_CHUNK[:n]
            finally:
                self.locks.unlock(held)
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
    _destroyed: bool = False

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
        try:
            StripeLocks.retain(instance)
        except BaseException:
            seg.close()
            seg.unlink()
            raise
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
        seg, self._segment = self._segment, None
        if seg is not None:
            seg.close()

    def destroy(self) -> None:
        """Supervisor: unmap and unlink the segment."""
        if self._destroyed:
            return
        self._destroyed = True
        seg = self._segment or SharedSegment.attach(self.segment_name)
        self._segment = None
        seg.close()
        seg.unlink()
        inst = instance_of_segment(self.segment_name)
        if inst:
            StripeLocks.unretain(inst)

    def driver_specific(self) -> dict[str, Any]:
        return {"malloc": {"segment": self.segment_name}}
