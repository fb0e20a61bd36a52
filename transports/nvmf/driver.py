"""Reactor glue for NVMe/TCP: sockets <-> the sans-I/O queue pairs.

Owns the `TransportDriver` registered as "nvmf-tcp" at import (the TCP entry of the ops table is tcp_ops.py): ``accept``
(non-blocking socket, TCP_NODELAY, SO_PRIORITY, epoll registration),
batched ``recv_into`` straight into the PDU reader's buffer (each recv takes
all the socket holds, up to the buffer's free space), output once per loop
turn per connection (``call_soon``: the reads and completions of a turn
share one sendmsg) through
transports/sockout.py (the path the iSCSI driver uses too: scatter-gather
``sendmsg``, partial sends; EPOLLOUT only while output is pending), clean
close; ``on_config`` hands new snapshots to the reactor's
`NvmfTarget` (core.target_for: one per reactor, shared with every other
NVMe-oF transport; it emits namespace/discovery AENs) and ``on_event``
passes the supervisor's "nvmf.*" broadcasts and queries to it
(NvmfTarget.on_event).

Backpressure: while more than ``max_unsent_bytes`` of a connection's output
is unsent the queue pair stops parsing (``qp.paused``) and the connection is
taken off EPOLLIN; it is resumed once the output drained below half the
bound. A reactor accepts at most ``max_connections_per_reactor`` connections
(one rate-limited log line per refusal burst). An exception escaping a
connection's event handler closes that connection only (``qp.crash``).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from ...control.hostlog import HostLog
from ...runtime.loop import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT
from ...shm import trace as _tr
from ...shm.trace import G_NVMF_TCP, TRACE
from ..base import register_driver
from ..context import ReactorContext
from ..sockout import IOV_MAX, SockOut
from .core import NvmfTarget, drop_target, target_for
from .tcp import TcpQpair
from .tcp_ops import TCP

log = logging.getLogger(__name__)

RECV_BATCH = 16  # recv calls per wake-up before yielding to other sockets


class TcpConnection:
    __slots__ = (
        "ctx",
        "sock",
        "fd",
        "qp",
        "out",
        "mask",
        "closed",
        "flush_scheduled",
        "reading",
        "driver",
    )

    def __init__(
        self,
        driver: NvmfTcpDriver,
        ctx: ReactorContext,
        sock: socket.socket,
        listener: str,
        target: NvmfTarget,
    ) -> None:
        self.driver = driver
        self.ctx = ctx
        self.sock = sock
        self.fd = sock.fileno()
        try:
            peer = "{}:{}".format(*sock.getpeername()[:2])
        except OSError:
            peer = "?"
        self.closed = False
        self.flush_scheduled = False
        self.reading = False
        self.qp = TcpQpair(target, listener, peer, wake=self._wake, on_close=self._qp_closed)
        # the output path shared with the iSCSI driver (transports/sockout.py);
        # the queue pair pauses its own parsing above max_unsent_bytes and is
        # resumed once the output drained to half of it
        mx = self.qp.opts.max_unsent_bytes
        self.out = SockOut(sock.sendmsg, mx, mx // 2, IOV_MAX)
        self.mask = EPOLLIN
        ctx.loop.add_fd(self.fd, EPOLLIN, self._on_events)

    # -- events ------------------------------------------------------------------
    def _on_events(self, ev: int) -> None:
        try:
            if ev & EPOLLIN:
                self._read()
            if self.closed:
                return
            if ev & EPOLLOUT:
                self._flush()
            elif ev & (EPOLLERR | EPOLLHUP) and not ev & EPOLLIN:
                self.close()
        except Exception as e:  # containment: this connection only
            self.qp.crash(e, "socket events")
            if not self.closed:
                self._final_close()

    def _read(self) -> None:
        qp = self.qp
        recv_into = self.sock.recv_into
        for _ in range(RECV_BATCH):
            buf = qp.get_buffer()
            want = len(buf)
            try:
                n = recv_into(buf)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                log.debug("nvmf-tcp %s: recv failed: %s", qp.peer, e)
                self.close()
                return
            finally:
                del buf
            if n == 0:
                self.close()
                return
            self.reading = True  # completions during processing: _read flushes
            try:
                qp.received(n)
            finally:
                self.reading = False
            if qp.want_close or qp.paused or n < want:
                break
        # the responses go out once per loop turn, after every ready socket
        # was read (and every completion of the turn queued its response):
        # one sendmsg per connection per turn, not one per wake
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.ctx.loop.call_soon(self._flush)

    def _wake(self) -> None:
        # output produced outside _read (async completion): flush on the next turn
        if not self.flush_scheduled and not self.closed and not self.reading:
            self.flush_scheduled = True
            self.ctx.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.closed:
            return
        qp = self.qp
        try:
            while True:
                self._send()
                if self.closed:
                    return
                qp.backlog = self.out.unsent
                if not (qp.paused and self.out.unsent <= self.out.low):
                    break
                qp.resume()  # drained: parse what is buffered, then read again
                if not qp.out:
                    break
        except Exception as e:
            qp.crash(e, "output")
            self._final_close()
            return
        if self.closed:
            return
        mask = 0 if qp.paused else EPOLLIN
        if self.out.pending:
            self._set_mask(mask | EPOLLOUT)
        else:
            self._set_mask(mask)
            if qp.want_close:
                self.close()

    def _send(self) -> None:
        qp = self.qp
        out = self.out
        if qp.out:
            out.push(qp.take_output(), qp.last_taken)
        try:
            out.flush()
            if TRACE.mask & G_NVMF_TCP:
                TRACE.rec(_tr.TP_NVMF_TCP | _tr.QP_FLUSH, qp.tp_id, 0, 0, out.sent_total)
        except OSError as e:
            log.debug("nvmf-tcp %s: send failed: %s", qp.peer, e)
            self.close()
        finally:
            if qp._held:
                qp.sent_upto(out.sent_total)

    def _set_mask(self, mask: int) -> None:
        if mask != self.mask:
            self.mask = mask
            self.ctx.loop.modify_fd(self.fd, mask)

    # -- teardown ----------------------------------------------------------------
    def _qp_closed(self, qp: TcpQpair) -> None:
        # the target closed the queue (controller destroyed, KATO, ...): push
        # out what is queued (e.g. a TermReq) and close the socket
        if not self.closed:
            if qp.out:
                self.out.push(qp.take_output(), qp.last_taken)
            self.ctx.loop.call_soon(self._final_close)

    def _final_close(self) -> None:
        if self.closed:
            return
        if self.out.pending:
            try:  # best effort: what the socket takes now (a TermReq)
                self.sock.setblocking(False)
                self.out.flush()
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if TRACE.mask & G_NVMF_TCP:
            TRACE.rec(_tr.TP_NVMF_TCP | _tr.QP_CLOSE, self.qp.tp_id, max(self.qp.qid, 0))
        self.out.discard()
        self.ctx.loop.remove_fd(self.fd)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.driver.conns.discard(self)
        if not self.qp.closed:
            self.qp.close("connection closed")
        self.qp.release_tx()  # the socket is gone: no buffer is being sent any more


class NvmfTcpDriver:
    proto = "nvmf-tcp"

    def __init__(self) -> None:
        self.conns: set[TcpConnection] = set()
        self.refusals: dict[int, HostLog] = {}

    def target(self, ctx: ReactorContext) -> NvmfTarget:
        return target_for(ctx)

    def accept(
        self, ctx: ReactorContext, sock: socket.socket, listener: str, preread: bytes = b""
    ) -> None:
        target = self.target(ctx)
        opts = target.opts_for(TCP.trtype)
        cap = opts.max_connections
        if sum(1 for q in target.qpairs if q.transport is TCP) >= cap:
            target.stats["refused_connections"] += 1
            hl = self.refusals.get(id(ctx))
            if hl is None:
                hl = self.refusals[id(ctx)] = HostLog(log, f"nvmf-tcp reactor {ctx.reactor_id}")
            hl.event(
                logging.WARNING,
                "connection from %s refused: this reactor already has %d connections "
                "(max_connections_per_reactor)",
                _peer(sock),
                cap,
            )
            try:
                sock.close()
            except OSError:
                pass
            return
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if opts.sock_priority:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, opts.sock_priority)
        except OSError:
            pass
        cls = TcpConnection
        if target.has_secure_listeners:  # TLS only where a listener asks for it
            from .tcp_tls import TlsTcpConnection, secure_listener

            if secure_listener(target, listener):
                cls = TlsTcpConnection
        conn = cls(self, ctx, sock, listener, target)
        self.conns.add(conn)
        if TRACE.mask & G_NVMF_TCP:
            TRACE.rec(_tr.TP_NVMF_TCP | _tr.QP_NEW, conn.qp.tp_id)
        if preread:
            # bytes another reactor read before handing the socket over
            conn.qp.feed_input(preread)
            conn._flush()

    def on_config(self, ctx: ReactorContext) -> None:
        self.target(ctx).on_config()

    def on_event(self, ctx: ReactorContext, op: str, args: dict[str, Any]) -> Any:
        return self.target(ctx).on_event(op, args)

    def shutdown(self, ctx: ReactorContext) -> None:
        t = drop_target(ctx)
        if t is not None:
            t.stopping = True
        for c in [c for c in self.conns if c.ctx is ctx]:
            c.close()
        if t is not None:
            t.shutdown()


def _peer(sock: socket.socket) -> str:
    try:
        return "{}:{}".format(*sock.getpeername()[:2])
    except OSError:
        return "?"


DRIVER = NvmfTcpDriver()
register_driver(DRIVER)
