"""Write-data buffers of iSCSI commands, from the reactor's share of the
shared pool (shm/iobuf.py).

A WRITE no longer gets a buffer of its whole expected length on arrival. Its
data is received region by region: the immediate + unsolicited burst, then
one region per R2T, each an `IoVec` of at most MaxBurstLength (plus the
partial block carried over from the previous region) that is acquired before
the R2T goes out. Each complete chunk of a region is written to the bdev as
soon as it is in; the region's buffers go back to the pool when its writes
completed (or when the command died and no write uses them any more).

Commands whose data the SCSI core needs in one piece (UNMAP and PERSISTENT
RESERVE OUT parameter lists, COMPARE AND WRITE, MODE SELECT, WRITE SAME...)
must fit one chunk (`CHUNK`, 128 KiB) and get one region for all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...shm.iobuf import CHUNK, chunk_sizes

# WRITE(6/10/12/16), WRITE AND VERIFY(10/12/16): the SCSI core writes any
# block-aligned piece of them on its own (ScsiTask.offset)
STREAM_OPS = frozenset({0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E})


class HeapIov:
    """An `IoVec` look-alike over a private bytearray (no pool: unit tests)."""

    __slots__ = ("buffers", "views", "nbytes")

    def __init__(self, nbytes: int) -> None:
        mem = memoryview(bytearray(max(nbytes, 0)))
        self.views: list[memoryview] = []
        pos = 0
        for n in chunk_sizes(nbytes):
            self.views.append(mem[pos : pos + n])
            pos += n
        self.buffers: list[Any] = [mem]
        self.nbytes = nbytes


class HeapBufs:
    """Stand-in for `IoBufs` where the reactor context has none (unit tests
    of the protocol core); the daemon always has a pool."""

    in_use = 0

    def acquire(self, nbytes: int, cb: Callable[[Any], None]) -> None:
        self.in_use += 1
        cb(HeapIov(nbytes))

    def release(self, iov: Any) -> None:
        if iov is not None and iov.buffers:
            iov.buffers = []
            iov.views = []
            self.in_use -= 1

    def cancel(self, w: Any) -> None:
        pass


def iov_put(views: list[memoryview], pos: int, data: Any) -> None:
    """Copy ``data`` into the chunks of an IoVec at byte ``pos``."""
    i, o = divmod(pos, CHUNK)
    mv = memoryview(data).cast("B")
    while len(mv):
        v = views[i]
        n = min(len(v) - o, len(mv))
        v[o : o + n] = mv[:n]
        mv = mv[n:]
        i += 1
        o = 0


def iov_get(views: list[memoryview], pos: int, n: int) -> bytes:
    out = bytearray()
    i, o = divmod(pos, CHUNK)
    while n > 0:
        v = views[i]
        k = min(len(v) - o, n)
        out += v[o : o + k]
        n -= k
        i += 1
        o = 0
    return bytes(out)


class Region:
    """Buffers for the transfer bytes [base, end) of one write command."""

    __slots__ = ("iov", "base", "end", "pending", "closed", "released")

    def __init__(self, iov: Any, base: int, end: int) -> None:
        self.iov = iov
        self.base = base
        self.end = end
        self.pending = 0  # bdev writes (SCSI pieces) still reading these buffers
        self.closed = False  # no more data or writes will use it
        self.released = False

    def chunk(self, pos: int) -> tuple[int, int, memoryview]:
        """(start, end, view) of the chunk that holds transfer offset ``pos``."""
        i = (pos - self.base) // CHUNK
        start = self.base + i * CHUNK
        view = self.iov.views[i]
        return start, min(start + len(view), self.end), view

    def release_if_idle(self, iobufs: Any) -> bool:
        if self.closed and not self.pending and not self.released:
            self.released = True
            iobufs.release(self.iov)
            return True
        return False
