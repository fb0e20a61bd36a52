"""The NVMe/TCP driver sends a connection's output once per loop turn: the
responses of a read wake and of completions later in the same turn share one
sendmsg (issue 15: not one sendmsg per wake)."""

from __future__ import annotations

import types
from typing import Any

import pytest

from blockfabric.runtime.loop import EPOLLIN
from blockfabric.transports.nvmf import driver as D


class FakeLoop:
    def __init__(self) -> None:
        self.soon: list[Any] = []

    def call_soon(self, cb: Any) -> None:
        self.soon.append(cb)

    def add_fd(self, *_a: Any) -> None:
        pass

    def modify_fd(self, *_a: Any) -> None:
        pass

    def remove_fd(self, *_a: Any) -> None:
        pass

    def turn(self) -> None:
        soon, self.soon = self.soon, []
        for cb in soon:
            cb()


class FakeSock:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.sends: list[bytes] = []

    def fileno(self) -> int:
        return 99

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 1)

    def recv_into(self, buf: memoryview) -> int:
        if not self.chunks:
            raise BlockingIOError
        c = self.chunks.pop(0)
        buf[: len(c)] = c
        return len(c)

    def sendmsg(self, bufs: Any) -> int:
        data = b"".join(bytes(b) for b in bufs)
        self.sends.append(data)
        return len(data)


class FakeQp:
    """What TcpConnection uses of a TcpQpair: every received byte is a
    command whose response (the byte, upper-cased) is queued at once."""

    def __init__(self, _target: Any, _listener: str, peer: str, wake: Any, on_close: Any) -> None:
        self.peer = peer
        self.wake = wake
        self.opts = types.SimpleNamespace(max_unsent_bytes=1 << 20)
        self.buf = bytearray(4096)
        self.out: list[bytes] = []
        self.last_taken = 0
        self.paused = self.want_close = self.closed = False
        self.backlog = 0
        self._held: list[Any] = []

    def get_buffer(self) -> memoryview:
        return memoryview(self.buf)

    def received(self, n: int) -> None:
        self.out += [bytes(self.buf[:n]).upper()]

    def complete_later(self, resp: bytes) -> None:
        """A completion outside the read (another handler of the same turn)."""
        self.out.append(resp)
        self.wake()

    def take_output(self) -> list[bytes]:
        out, self.out = self.out, []
        self.last_taken = sum(map(len, out))
        return out

    def resume(self) -> None:
        pass

    def release_tx(self) -> None:
        pass

    def close(self, _why: str = "") -> None:
        self.closed = True


@pytest.fixture
def conn(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(D, "TcpQpair", FakeQp)
    loop = FakeLoop()
    ctx = types.SimpleNamespace(loop=loop, reactor_id=0)
    sock = FakeSock([b"ab"])
    c = D.TcpConnection(D.DRIVER, ctx, sock, "l", None)  # type: ignore[arg-type]
    return c, loop, sock


def test_read_and_later_completion_share_one_sendmsg(conn: Any) -> None:
    c, loop, sock = conn
    c._on_events(EPOLLIN)
    assert sock.sends == [] and len(loop.soon) == 1  # the flush waits for the end of the turn
    c.qp.complete_later(b"C")  # e.g. an aio completion handled later in the same turn
    assert len(loop.soon) == 1  # no second flush scheduled
    loop.turn()
    assert sock.sends == [b"ABC"]  # one sendmsg for the whole turn
    c.qp.complete_later(b"D")  # the next turn: its own flush
    loop.turn()
    assert sock.sends == [b"ABC", b"D"]


def test_nothing_to_send_makes_no_sendmsg(conn: Any) -> None:
    c, loop, sock = conn
    sock.chunks = []
    c._on_events(EPOLLIN)  # a wake without data (EAGAIN)
    loop.turn()
    assert sock.sends == []
