"""Per-reactor front end of the shared buffer pool: transfer buffers with FIFO waits.

Every data buffer a host can make a reactor hold (R2T/H2CData and Data-Out
reassembly, aio/nvme bdev reads, Data-In staging, large admin payloads) comes
from here, like SPDK's iobuf. A transfer of ``n`` bytes is an `IoVec` of
``ceil(n / CHUNK)`` pool buffers of at most `CHUNK` bytes each (small buffers
for transfers up to the small size); transports move data chunk by chunk, so
bdev calls never see more than one chunk.

When the pool cannot satisfy a request the request waits, first come first
served, and is granted from `release` as buffers come back: a host that finds
the pool empty waits; it never makes the reactor allocate outside the pool.
A caller whose connection dies while waiting cancels its `IoWait`.

Callers bound a request by a negotiated or configured limit (MDTS,
MaxBurstLength, ...) *before* asking; `acquire` refuses a request that the
whole pool could never satisfy (`ValueError`), which is a caller bug.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .pool import Buffer, BufferPool

CHUNK = 128 * 1024  # data bytes per large buffer handed to a transfer (the pool's are 132 KiB)


class IoVec:
    """The pool buffers of one transfer; ``views[i]`` is chunk i (exact lengths)."""

    __slots__ = ("buffers", "views", "nbytes")

    def __init__(self, buffers: list[Buffer], nbytes: int) -> None:
        self.buffers = buffers
        self.views: list[memoryview] = [b.view for b in buffers]
        self.nbytes = nbytes

    @property
    def view(self) -> memoryview:
        """The single chunk of a transfer of at most `CHUNK` bytes."""
        if len(self.views) != 1:
            raise ValueError(f"transfer of {self.nbytes} bytes has {len(self.views)} chunks")
        return self.views[0]

    def __len__(self) -> int:
        return self.nbytes


class IoWait:
    """A queued request; `IoBufs.cancel` withdraws it."""

    __slots__ = ("nbytes", "cb", "cancelled")

    def __init__(self, nbytes: int, cb: Callable[[IoVec], None]) -> None:
        self.nbytes = nbytes
        self.cb = cb
        self.cancelled = False


def chunk_sizes(nbytes: int) -> list[int]:
    if nbytes <= 0:
        return [max(nbytes, 0)]
    full, rest = divmod(nbytes, CHUNK)
    return [CHUNK] * full + ([rest] if rest else [])


class IoBufs:
    """One process's (one reactor's) access to the pool, with a FIFO of waiters."""

    def __init__(self, pool: BufferPool) -> None:
        self.pool = pool
        self._waiters: deque[IoWait] = deque()
        self._granting = False
        self.in_use = 0  # buffers this process holds
        self.in_use_bytes = 0
        self.high_water = 0
        self.acquires = 0
        self.waits = 0  # requests that had to queue
        self.max_queue = 0
        cap_small = pool._small.count  # noqa: SLF001 - capacity is fixed at creation
        cap_large = pool._large.count
        self._max_bytes = max(cap_large * CHUNK, cap_small * pool.small_size if cap_small else 0)

    # ------------------------------------------------------------------ API --
    def try_acquire(self, nbytes: int) -> IoVec | None:
        """The buffers now, or None (nothing is queued)."""
        self._check(nbytes)
        if self._waiters:  # FIFO: nobody overtakes a waiter
            return None
        return self._take(nbytes)

    def acquire(self, nbytes: int, cb: Callable[[IoVec], None]) -> IoWait | None:
        """Call ``cb(iov)`` now if the pool has the buffers (returns None),
        else queue the request and return its `IoWait`."""
        iov = self.try_acquire(nbytes)
        if iov is not None:
            cb(iov)
            return None
        w = IoWait(nbytes, cb)
        self._waiters.append(w)
        self.waits += 1
        self.max_queue = max(self.max_queue, len(self._waiters))
        return w

    def cancel(self, w: IoWait | None) -> None:
        if w is not None and not w.cancelled:
            w.cancelled = True
            try:
                self._waiters.remove(w)
            except ValueError:
                pass

    def release(self, iov: IoVec | None) -> None:
        """Give a transfer's buffers back (idempotent per IoVec) and serve waiters."""
        if iov is None or not iov.buffers:
            return
        put = self.pool.put
        for b in iov.buffers:
            put(b)
        self.in_use -= len(iov.buffers)
        self.in_use_bytes -= iov.nbytes
        iov.buffers = []
        iov.views = []
        if self._waiters and not self._granting:
            self._grant()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def stats(self) -> dict[str, int]:
        return {
            "in_use": self.in_use,
            "in_use_bytes": self.in_use_bytes,
            "high_water": self.high_water,
            "acquires": self.acquires,
            "waits": self.waits,
            "queued": len(self._waiters),
            "max_queue": self.max_queue,
        }

    # ------------------------------------------------------------ internals --
    def _check(self, nbytes: int) -> None:
        if nbytes < 0 or nbytes > self._max_bytes:
            raise ValueError(
                f"transfer of {nbytes} bytes can never be served by pool {self.pool.name} "
                f"(at most {self._max_bytes}); bound it by the negotiated limit first"
            )

    def _take(self, nbytes: int) -> IoVec | None:
        got: list[Buffer] = []
        for size in chunk_sizes(nbytes):
            b = self.pool.get(size)
            if b is None:
                for g in got:
                    self.pool.put(g)
                return None
            got.append(b)
        self.acquires += 1
        self.in_use += len(got)
        self.in_use_bytes += nbytes
        if self.in_use > self.high_water:
            self.high_water = self.in_use
        return IoVec(got, nbytes)

    def _grant(self) -> None:
        self._granting = True
        try:
            while self._waiters:
                w = self._waiters[0]
                iov = self._take(w.nbytes)
                if iov is None:
                    return
                self._waiters.popleft()
                w.cb(iov)
        finally:
            self._granting = False

    def poll(self) -> None:
        """Retry the queue (buffers may have come back to the shared reserve
        from another process); the reactor calls this from a timer."""
        if self._waiters and not self._granting:
            self._grant()
