"""Reactor glue bounds (driver.py): per-reactor connection cap, configurable
login timeout, timers isolated per connection, output backpressure."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from blockfabric.actors.loop import EPOLLIN, EPOLLOUT
from blockfabric.transports.iscsi import driver as D
from blockfabric.transports.iscsi.state import IscsiState, Portal


class FakeLoop:
    def __init__(self) -> None:
        self.masks: dict[int, int] = {}
        self.soon: list[Any] = []
        self.timers: list[Any] = []

    def add_fd(self, fd: int, mask: int, handler: Any) -> None:
        self.masks[fd] = mask

    def modify_fd(self, fd: int, mask: int) -> None:
        self.masks[fd] = mask

    def remove_fd(self, fd: int) -> None:
        self.masks.pop(fd, None)

    def call_soon(self, cb: Any) -> None:
        self.soon.append(cb)

    def call_later(self, delay: float, cb: Any) -> Any:
        class H:
            def cancel(self) -> None:
                pass

        self.timers.append(cb)
        return H()


class Ctx:
    def __init__(self, **opts: Any) -> None:
        st = IscsiState()
        st.set_options(nop_in_interval=0, **opts)
        st.add_portal_group(1, [Portal("127.0.0.1", "3260", "127.0.0.1:3260")])
        self.loop = FakeLoop()
        self.reactor_id = 0
        self.num_reactors = 1
        self.instance = "t"
        self.iscsi_config = st.snapshot()
        self.nvmf_config: dict[str, Any] = {}
        self.generation = 1

    def bdev(self, name: str) -> Any:
        return None

    def channel(self, name: str) -> Any:
        return None


@pytest.fixture
def lsock() -> Iterator[socket.socket]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s
    s.close()


def _pair(lsock: socket.socket) -> tuple[socket.socket, socket.socket]:
    c = socket.create_connection(lsock.getsockname())
    s, _ = lsock.accept()
    return c, s


@pytest.fixture
def ctx_factory() -> Iterator[Any]:
    made: list[Ctx] = []

    def make(**opts: Any) -> Ctx:
        c = Ctx(**opts)
        made.append(c)
        return c

    yield make
    for c in made:
        D.DRIVER.shutdown(c)  # type: ignore[arg-type]


def test_connection_cap_per_reactor(ctx_factory: Any, lsock: socket.socket, caplog: Any) -> None:
    ctx = ctx_factory(max_connections_per_reactor=2)
    peers = []
    for _ in range(3):
        c, s = _pair(lsock)
        peers.append(c)
        D.DRIVER.accept(ctx, s, "127.0.0.1:3260")  # type: ignore[arg-type]
    rs = D.DRIVER.reactors[id(ctx)]
    assert len(rs.conns) == 2 and rs.stats["refused"] == 1
    peers[2].settimeout(2)
    assert peers[2].recv(1) == b""  # refused: closed at once
    assert "max_connections_per_reactor" in caplog.text
    for p in peers:
        p.close()


def test_login_timeout_is_configurable(ctx_factory: Any, lsock: socket.socket) -> None:
    ctx = ctx_factory(login_timeout=2)
    c, s = _pair(lsock)
    D.DRIVER.accept(ctx, s, "127.0.0.1:3260")  # type: ignore[arg-type]
    rs = D.DRIVER.reactors[id(ctx)]
    (sc,) = rs.conns
    D.DRIVER._tick(rs)
    assert rs.conns  # not yet
    sc.started = time.monotonic() - 3
    D.DRIVER._tick(rs)
    assert not rs.conns and rs.stats["login_timeouts"] == 1
    c.settimeout(2)
    assert c.recv(1) == b""
    c.close()


def test_one_failing_connection_does_not_stop_the_timers(
    ctx_factory: Any, lsock: socket.socket, caplog: Any
) -> None:
    ctx = ctx_factory(login_timeout=2)
    pairs = [_pair(lsock) for _ in range(2)]
    for _, s in pairs:
        D.DRIVER.accept(ctx, s, "127.0.0.1:3260")  # type: ignore[arg-type]
    rs = D.DRIVER.reactors[id(ctx)]
    bad, good = sorted(rs.conns, key=lambda x: x.fd)

    def boom(*a: Any) -> None:
        raise RuntimeError("timer bug")

    bad.conn.__dict__["check_timeouts"] = boom
    bad.conn.state = "ffp"
    bad.route = False
    good.started = time.monotonic() - 3
    n = len(ctx.loop.timers)
    D.DRIVER._tick(rs)
    # the failing connection is closed, the other one still got its tick
    # (login timeout), and the timer is armed again
    assert not rs.conns and rs.stats["exceptions"] == 1
    assert len(ctx.loop.timers) == n + 1
    assert "timer bug" in caplog.text
    for c, _ in pairs:
        c.close()


def test_output_backpressure_stops_reading(ctx_factory: Any, lsock: socket.socket) -> None:
    ctx = ctx_factory()
    c, s = _pair(lsock)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    D.DRIVER.accept(ctx, s, "127.0.0.1:3260")  # type: ignore[arg-type]
    rs = D.DRIVER.reactors[id(ctx)]
    (sc,) = rs.conns
    sc.route = False
    sc._send([b"r" * (D.OUT_HIGH + D.OUT_HIGH // 2)])  # a host that reads nothing
    sc.flush()
    assert sc.out_bytes > D.OUT_HIGH
    assert not ctx.loop.masks[sc.fd] & EPOLLIN and ctx.loop.masks[sc.fd] & EPOLLOUT
    # reads are refused while above the bound
    sc.on_readable()
    assert not ctx.loop.masks[sc.fd] & EPOLLIN
    # the host drains: below the low mark, reading resumes
    c.settimeout(5)
    got = 0
    while sc.out_bytes > D.OUT_LOW // 2:
        got += len(c.recv(1 << 20))
        sc.flush()
    assert ctx.loop.masks[sc.fd] & EPOLLIN
    c.close()


def test_exception_in_socket_events_closes_only_that_connection(
    ctx_factory: Any, lsock: socket.socket
) -> None:
    """A bug in the driver's event handler (not a PDU): the real loop calls
    the owner's on_loop_error, which closes that connection only."""
    from blockfabric.actors.loop import EventLoop

    ctx = ctx_factory()
    ctx.loop = EventLoop()
    ctx.stats = {}
    pairs = [_pair(lsock) for _ in range(2)]
    for _, s in pairs:
        D.DRIVER.accept(ctx, s, "127.0.0.1:3260")  # type: ignore[arg-type]
    rs = D.DRIVER.reactors[id(ctx)]
    bad, good = sorted(rs.conns, key=lambda x: x.fd)

    def boom() -> None:
        raise RuntimeError("driver bug")

    bad.on_readable = boom  # type: ignore[method-assign]
    bad.route = False
    pairs[0][0].sendall(b"x")  # wakes the bad one
    for _ in range(20):
        ctx.loop.run_once(0.05)
        if bad not in rs.conns:
            break
    assert bad not in rs.conns and good in rs.conns
    assert rs.stats["exceptions"] == 1 and ctx.loop.callback_errors == 1
    pairs[0][0].settimeout(2)
    try:  # its socket was closed (a reset: the target left our byte unread)
        assert pairs[0][0].recv(1) == b""
    except ConnectionResetError:
        pass
    D.DRIVER.shutdown(ctx)  # type: ignore[arg-type]
    ctx.loop.close()
    for c, _ in pairs:
        c.close()
