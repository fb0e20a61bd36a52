"""The output path of a non-blocking stream socket, shared by the socket
drivers (iSCSI, NVMe/TCP):

* **partial sends**: queued buffers go out with scatter-gather ``sendmsg``
  (at most ``iov_max`` per call); a short send keeps the unsent tail of the
  buffer it stopped in (a memoryview slice, no copy); EAGAIN leaves the rest
  queued for the next EPOLLOUT;
* **completion markers**: ``mark(cb)`` runs ``cb`` once every byte queued
  before it has left (pool buffers behind a Data-In / C2HData go back then),
  or when the output is discarded; markers are byte positions, so the send
  loop never looks at them;
* **output backpressure**: `may_read` says whether the driver should read
  more from the peer: no once more than ``high`` bytes are unsent (a host
  that does not read its responses), yes again once the output drained to
  ``low`` or below (hysteresis, so reading does not flap);
* **close after drain**: ``close_when_drained(cb)`` runs ``cb`` once the
  queue is empty (at once if it is), so a final response still goes out.

It is sans-epoll: the driver arms EPOLLOUT while `pending` and calls `flush`
when the socket is writable. A send error other than EAGAIN/EINTR propagates
as OSError: the driver closes the connection (and then calls `discard`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

Buffer = bytes | bytearray | memoryview

IOV_MAX = 1024  # Linux UIO_MAXIOV


def nbytes(b: Buffer) -> int:
    return b.nbytes if type(b) is memoryview else len(b)


class SockOut:
    __slots__ = (
        "_sendmsg",
        "queue",
        "unsent",
        "queued_total",
        "sent_total",
        "high",
        "low",
        "iov_max",
        "throttled",
        "_marks",
        "_on_drained",
    )

    def __init__(
        self,
        sendmsg: Callable[[Iterable[Buffer]], int],
        high: int,
        low: int,
        iov_max: int = IOV_MAX,
    ) -> None:
        if not 0 <= low <= high:
            raise ValueError("need 0 <= low <= high")
        self._sendmsg = sendmsg
        self.queue: deque[Buffer] = deque()
        self.unsent = 0  # bytes queued, not yet accepted by the kernel
        self.queued_total = 0  # bytes ever queued
        self.sent_total = 0  # bytes ever sent
        self.high = high
        self.low = low
        self.iov_max = max(1, iov_max)
        self.throttled = False  # reading stopped by backpressure
        self._marks: deque[tuple[int, Callable[[], None]]] = deque()
        self._on_drained: Callable[[], None] | None = None

    # ------------------------------------------------------------ queue
    @property
    def pending(self) -> bool:
        """Something waits to be sent (arm EPOLLOUT)."""
        return bool(self.queue)

    @property
    def closing(self) -> bool:
        return self._on_drained is not None

    def push(self, bufs: Iterable[Buffer], size: int = -1) -> None:
        """Queue buffers (``size``: their total length when the caller knows it)."""
        if size < 0:
            size = 0
            q = self.queue
            for b in bufs:
                size += b.nbytes if type(b) is memoryview else len(b)
                q.append(b)
        else:
            self.queue.extend(bufs)
        self.unsent += size
        self.queued_total += size

    def mark(self, cb: Callable[[], None]) -> None:
        """Run ``cb`` once everything queued so far has been sent (now, if
        it has), or when the output is discarded."""
        if self.sent_total >= self.queued_total:
            cb()
        else:
            self._marks.append((self.queued_total, cb))

    def close_when_drained(self, cb: Callable[[], None]) -> None:
        """Run ``cb`` once the queue is empty (now, if it is)."""
        if not self.queue:
            cb()
        else:
            self._on_drained = cb

    # ------------------------------------------------------------- send
    def flush(self) -> int:
        """Send what the socket accepts; returns the bytes sent. Raises
        OSError for a send error other than EAGAIN/EINTR."""
        q = self.queue
        sent_now = 0
        while q:
            if len(q) <= self.iov_max:
                batch: Iterable[Buffer] = q
                want = self.unsent
            else:
                batch = [q[i] for i in range(self.iov_max)]
                want = sum(b.nbytes if type(b) is memoryview else len(b) for b in batch)
            try:
                n = self._sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                break
            if n <= 0:
                break
            sent_now += n
            self.sent_total += n
            if n == self.unsent:
                q.clear()  # the usual case: everything went out
                self.unsent = 0
                break
            self.unsent -= n
            full = n == want
            # drop what went out, keep the unsent tail of a partial buffer
            while n:
                b = q[0]
                lb = b.nbytes if type(b) is memoryview else len(b)
                if n >= lb:
                    q.popleft()
                    n -= lb
                else:
                    q[0] = memoryview(b).cast("B")[n:]
                    n = 0
            if not full:
                break  # a short send: the socket buffer is full
        marks = self._marks
        while marks and marks[0][0] <= self.sent_total:
            marks.popleft()[1]()
        if not q and self._on_drained is not None:
            cb, self._on_drained = self._on_drained, None
            cb()
        return sent_now

    # ----------------------------------------------------- backpressure
    def may_read(self) -> bool:
        """Whether the driver should read more input now (hysteresis)."""
        if self.throttled:
            if self.unsent <= self.low:
                self.throttled = False
        elif self.unsent > self.high:
            self.throttled = True
        return not self.throttled

    # ---------------------------------------------------------- teardown
    def discard(self) -> None:
        """The connection is gone: forget the queue, run every marker (what
        they guard is not being sent any more)."""
        self.queue.clear()
        self.unsent = 0
        self._on_drained = None
        marks, self._marks = self._marks, deque()
        for _, cb in marks:
            cb()
