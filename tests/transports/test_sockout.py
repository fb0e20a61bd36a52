"""transports/sockout.py, the output path both socket drivers share:
partial sends, EAGAIN, the IOV_MAX batch, completion markers, backpressure
thresholds (hysteresis) and close after drain; then the same against a real
socket pair."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

import pytest

from blockfabric.transports.sockout import SockOut


class FakeSock:
    """sendmsg that accepts at most `budget` bytes per call, or raises."""

    def __init__(self) -> None:
        self.got = bytearray()
        self.budget: list[int | BaseException] = []
        self.calls: list[int] = []  # buffers per call

    def sendmsg(self, bufs: Iterable[Any]) -> int:
        bufs = list(bufs)
        self.calls.append(len(bufs))
        step = self.budget.pop(0) if self.budget else 1 << 30
        if isinstance(step, BaseException):
            raise step
        data = b"".join(bytes(b) for b in bufs)[:step]
        self.got += data
        return len(data)


def _out(fs: FakeSock, high: int = 100, low: int = 10, iov_max: int = 1024) -> SockOut:
    return SockOut(fs.sendmsg, high, low, iov_max)


def test_everything_at_once() -> None:
    fs = FakeSock()
    o = _out(fs)
    o.push([b"abc", bytearray(b"de"), memoryview(b"fgh")])
    assert o.pending and o.unsent == 8
    assert o.flush() == 8
    assert bytes(fs.got) == b"abcdefgh" and not o.pending and o.unsent == 0
    assert o.sent_total == o.queued_total == 8


def test_partial_send_keeps_the_unsent_tail_in_order() -> None:
    fs = FakeSock()
    o = _out(fs)
    o.push([b"0123456789", b"abcdef", b"XYZ"])
    fs.budget = [4, 9]
    assert o.flush() == 4  # a short send: the socket is full, no retry now
    assert o.unsent == 15 and len(fs.calls) == 1
    assert o.flush() == 9  # ends inside the second buffer
    assert bytes(o.queue[0]) == b"def" and o.unsent == 6
    assert o.flush() == 6
    assert bytes(fs.got) == b"0123456789abcdefXYZ" and not o.pending


def test_eagain_and_eintr_leave_the_queue_alone() -> None:
    fs = FakeSock()
    o = _out(fs)
    o.push([b"hello"])
    fs.budget = [BlockingIOError(), InterruptedError()]
    assert o.flush() == 0 and o.unsent == 5
    assert o.flush() == 0 and o.unsent == 5
    assert o.flush() == 5 and bytes(fs.got) == b"hello"


def test_send_error_propagates() -> None:
    fs = FakeSock()
    o = _out(fs)
    o.push([b"x"])
    fs.budget = [ConnectionResetError()]
    with pytest.raises(OSError):
        o.flush()


def test_iov_max_batches() -> None:
    fs = FakeSock()
    o = _out(fs, iov_max=3)
    o.push([bytes([i]) for i in range(8)])
    o.flush()
    assert fs.calls == [3, 3, 2] and bytes(fs.got) == bytes(range(8))
    # a batch sent in part stops the loop (the kernel buffer is full)
    fs2 = FakeSock()
    o2 = _out(fs2, iov_max=3)
    o2.push([b"aa", b"bb", b"cc", b"dd"])
    fs2.budget = [5]
    assert o2.flush() == 5 and len(fs2.calls) == 1 and o2.unsent == 3


def test_markers_run_once_what_precedes_them_is_sent() -> None:
    fs = FakeSock()
    o = _out(fs)
    ran: list[str] = []
    o.mark(lambda: ran.append("now"))  # nothing queued: at once
    assert ran == ["now"]
    o.push([b"abcd"])
    o.mark(lambda: ran.append("a"))
    o.push([b"efgh"])
    o.mark(lambda: ran.append("b"))
    fs.budget = [3, 2]
    o.flush()
    assert ran == ["now"]
    o.flush()  # 5 of 8 sent: the first marker's 4 bytes are out
    assert ran == ["now", "a"]
    o.flush()
    assert ran == ["now", "a", "b"]


def test_discard_runs_the_markers() -> None:
    fs = FakeSock()
    o = _out(fs)
    ran: list[int] = []
    o.push([b"abcd"])
    o.mark(lambda: ran.append(1))
    o.close_when_drained(lambda: ran.append(99))
    o.discard()
    assert ran == [1] and not o.pending and o.unsent == 0 and not o.closing


def test_backpressure_thresholds_with_hysteresis() -> None:
    fs = FakeSock()
    o = _out(fs, high=100, low=10)
    o.push([b"x" * 100])
    assert o.may_read()  # at the bound: still reading
    o.push([b"x"])
    assert not o.may_read() and o.throttled  # above it: stop
    fs.budget = [50]
    o.flush()
    assert not o.may_read()  # 51 unsent: above low, still stopped
    fs.budget = [41]
    o.flush()
    assert o.unsent == 10 and o.may_read()  # drained to low: resume
    o.push([b"x" * 80])
    assert o.may_read()  # 90: below high, reading goes on


def test_close_after_drain() -> None:
    fs = FakeSock()
    o = _out(fs)
    closed: list[int] = []
    o.close_when_drained(lambda: closed.append(0))  # nothing queued: at once
    assert closed == [0]
    o.push([b"final response"])
    o.close_when_drained(lambda: closed.append(1))
    assert o.closing
    fs.budget = [5]
    o.flush()
    assert closed == [0]
    o.flush()
    assert closed == [0, 1] and bytes(fs.got) == b"final response" and not o.closing


def test_bad_thresholds() -> None:
    with pytest.raises(ValueError):
        SockOut(FakeSock().sendmsg, 10, 20)


def test_real_socket_partial_sends_and_order() -> None:
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        o = SockOut(a.sendmsg, 1 << 20, 1 << 18)
        chunks = [bytes([i % 251]) * 1000 for i in range(2000)]  # 2 MB, 2000 iovecs
        want = b"".join(chunks)
        o.push(chunks)
        done: list[bool] = []
        o.mark(lambda: done.append(True))
        o.flush()
        assert o.pending and not o.may_read()  # the kernel took only part of it
        got = bytearray()
        b.settimeout(5)
        while len(got) < len(want):
            got += b.recv(1 << 16)
            o.flush()
        assert bytes(got) == want and not o.pending and done == [True] and o.may_read()
    finally:
        a.close()
        b.close()
