"""Unit tests: typed messages, the event loop, fd handoff."""

from __future__ import annotations

import re
import socket
import time

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockfabric.actors import messages as m
from blockfabric.actors.fdpass import Handoff, recv_fd, send_fd
from blockfabric.actors.loop import EPOLLIN, EventLoop


def test_message_round_trip_and_correlation():
    msg = m.ConfigUpdate(7, {"M": {"module": "malloc"}}, {"subsystems": {}}, {})
    raw = m.encode(msg, corr=42)
    back, corr = m.decode(raw)
    assert corr == 42 and back == msg and back.TAG == "config"
    assert m.decode(m.encode(m.Reply(False, None, "boom")))[0].error == "boom"


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"\xc1", "undecodable"),
        (msgpack.packb({"a": 1}), "not [tag, corr"),
        (msgpack.packb(["nope", 0]), "unknown message kind"),
        (msgpack.packb(["ping", 0, 1, 2, 3]), "expected 1 fields"),
    ],
)
def test_bad_messages_are_refused_with_a_reason(raw, why):
    with pytest.raises(m.MessageError, match=re.escape(why)):
        m.decode(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_never_raises_anything_else(raw):
    try:
        m.decode(raw)
    except m.MessageError:
        pass


def test_loop_timers_soon_and_fds():
    loop = EventLoop("blocking")
    order: list[str] = []
    loop.call_later(0.02, lambda: order.append("late"))
    h = loop.call_later(0.01, lambda: order.append("cancelled"))
    h.cancel()
    loop.call_soon(lambda: order.append("soon"))
    r, w = socket.socketpair()
    loop.add_fd(r.fileno(), EPOLLIN, lambda ev: order.append("fd") or r.recv(10))
    w.send(b"x")

    def boom() -> None:
        raise RuntimeError("a failing callback must not stop the loop")

    loop.call_soon(boom)
    deadline = time.monotonic() + 2
    while "late" not in order and time.monotonic() < deadline:
        loop.run_once(0.05)
    assert order[0] == "soon" and "fd" in order and order[-1] == "late" and "cancelled" not in order
    loop.remove_fd(r.fileno())
    r.close()
    w.close()
    loop.close()


@pytest.mark.parametrize("mode", ["adaptive", "busy", "blocking"])
def test_every_poll_mode_runs_and_stops(mode):
    loop = EventLoop(mode, spin_us=100)
    hits = []
    loop.call_later(0.01, lambda: hits.append(1))
    loop.call_later(0.05, loop.stop)
    t0 = time.monotonic()
    loop.run()
    assert hits == [1] and time.monotonic() - t0 < 2
    with pytest.raises(ValueError):
        EventLoop("spinning")


def test_fd_handoff_carries_fd_and_header():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    r, w = socket.socketpair()
    send_fd(a, Handoff(r.fileno(), "iscsi", "127.0.0.1:3260", "127.0.0.1:5555", b"LOGIN", 1))
    h = recv_fd(b)
    assert h is not None and (h.proto, h.listener, h.peer, h.preread, h.target) == (
        "iscsi",
        "127.0.0.1:3260",
        "127.0.0.1:5555",
        b"LOGIN",
        1,
    )
    got = socket.socket(fileno=h.fd)
    w.send(b"ping")
    assert got.recv(4) == b"ping"  # the received fd is the same connection
    for s in (a, b, r, w, got):
        s.close()
