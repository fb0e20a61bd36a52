"""The event loop contains failures: one failing callback stops nothing else."""

from __future__ import annotations

import logging
import socket

from blockfabric.actors import loop as loopmod
from blockfabric.actors.loop import EPOLLIN, EventLoop


def _spin(loop: EventLoop, turns: int = 50) -> None:
    for _ in range(turns):
        loop.run_once(0.002)


def test_failing_timer_and_poller_do_not_stop_others(caplog):
    loop = EventLoop("blocking")
    ran: list[str] = []

    def bad_timer() -> None:
        raise RuntimeError("timer boom")

    def bad_poller() -> int:
        raise RuntimeError("poller boom")

    def good_poller() -> int:
        ran.append("p")
        return 0

    loop.call_later(0, bad_timer)
    loop.call_later(0, lambda: ran.append("t"))
    loop.add_poller(bad_poller)
    loop.add_poller(good_poller)
    loop.call_soon(bad_timer)
    loop.call_soon(lambda: ran.append("s"))
    with caplog.at_level(logging.ERROR, logger=loopmod.__name__):
        _spin(loop, 30)
    assert "t" in ran and "s" in ran and ran.count("p") >= 30
    assert loop.callback_errors >= 30
    # rate limit: the poller failed 30 times, at most ERR_BURST full tracebacks + a summary
    poller_lines = [r for r in caplog.records if "bad_poller" in r.getMessage()]
    assert 1 <= len([r for r in poller_lines if r.exc_info]) <= loopmod.ERR_BURST
    assert len(poller_lines) <= loopmod.ERR_BURST + 1
    loop.close()


def test_call_every_survives_exceptions():
    loop = EventLoop("blocking")
    calls: list[int] = []

    def tick() -> None:
        calls.append(1)
        raise ValueError("every time")

    h = loop.call_every(0.001, tick)
    for _ in range(200):
        loop.run_once(0.002)
        if len(calls) >= 5:
            break
    assert len(calls) >= 5
    h.cancel()
    n = len(calls)
    _spin(loop, 10)
    assert len(calls) <= n + 1
    loop.close()


class _Conn:
    def __init__(self, loop: EventLoop, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False
        self.errors: list[BaseException] = []
        self.loop = loop
        loop.add_fd(sock.fileno(), EPOLLIN, self.on_readable)

    def on_readable(self, _ev: int) -> None:
        self.sock.recv(100)
        raise KeyError("bad pdu")

    def on_loop_error(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.loop.remove_fd(self.sock.fileno())
        self.sock.close()
        self.closed = True


def test_fd_handler_error_calls_owner_hook_and_only_that_connection_closes():
    loop = EventLoop("blocking")
    a1, b1 = socket.socketpair()
    a2, b2 = socket.socketpair()
    bad = _Conn(loop, a1)
    got: list[bytes] = []
    a2.setblocking(False)
    loop.add_fd(a2.fileno(), EPOLLIN, lambda _e: got.append(a2.recv(100)))
    b1.send(b"x")
    b2.send(b"hello")
    _spin(loop, 5)
    assert bad.closed and isinstance(bad.errors[0], KeyError)
    assert got == [b"hello"]
    b2.send(b"again")
    _spin(loop, 5)
    assert got == [b"hello", b"again"]
    for s in (b1, a2, b2):
        s.close()
    loop.close()


def test_explicit_on_error_hook_and_failing_hook_contained():
    loop = EventLoop("blocking")
    a, b = socket.socketpair()
    seen: list[str] = []

    def handler(_ev: int) -> None:
        a.recv(10)
        raise OSError("read failed")

    def hook(exc: BaseException) -> None:
        seen.append(str(exc))
        raise RuntimeError("hook fails too")

    loop.add_fd(a.fileno(), EPOLLIN, handler, on_error=hook)
    b.send(b"1")
    _spin(loop, 3)
    b.send(b"2")
    _spin(loop, 3)
    assert seen == ["read failed", "read failed"]
    loop.remove_fd(a.fileno())
    a.close()
    b.close()
    loop.close()
