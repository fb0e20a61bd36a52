"""The software loopback LLD: FC-NVMe over Unix stream sockets, no HBA.

A target port ``nn-0x<WWNN>:pn-0x<WWPN>`` listens on the Unix stream socket
`socket_path` (``RUN_DIR/fc/<WWPN>.sock``, in the run folder the host and the
target share). Each host connection is one login path of a remote port: it
starts with a LOGIN frame naming the host port and the target port (standing
in for FLOGI/PLOGI/PRLI), then carries the FC-NVMe sequences of frame.py. A
host may open several paths with the same port names (one per queue, as an
HBA spreads connections over its hardware queues): they are the same I_T
nexus, and the FC transport routes them to one reactor so they share its
associations.

`LoopbackPath` is the target side of one path: it implements `LldNexus` on
a non-blocking socket in the reactor's event loop and calls `FcUpcalls`.
Output is buffered with a bound: past ``max_unsent`` bytes the path stops
reading until the host drained half of it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from ...runtime.loop import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, Loop
from ..sockout import IOV_MAX, SockOut
from . import frame as F
from .addr import FcName
from .frame import socket_path
from .lld import FcUpcalls, register_lld

log = logging.getLogger(__name__)

NAME = "loopback"
RECV_SIZE = 1 << 17


PROTO = "nvmf-fc"  # the reactor driver the supervisor hands accepted paths to


class LoopbackLld:
    """The software LLD: a port is a Unix stream listener of the supervisor
    (accepted paths reach the reactors by fd, `LoopbackPath` serves them)."""

    name = NAME

    def port_ok(self, port: FcName) -> str | None:
        p = socket_path(port)
        if len(os.fsencode(p)) >= 108:
            return f"loopback socket path {p} is too long for a Unix socket"
        return None

    def listen(self, host: Any, port: FcName) -> None:
        host.add_listener(PROTO, socket_path(port), 0, "unix")

    def stop_listen(self, host: Any, port: FcName) -> None:
        host.remove_listener(PROTO, socket_path(port), 0)

    def reactor_start(self, ctx: Any, upcalls: FcUpcalls) -> None:
        """Nothing to open: paths arrive through the driver's accept()."""

    def reactor_stop(self, ctx: Any) -> None:
        """Paths are closed by the driver (they are its connections)."""


register_lld(LoopbackLld())

# (path, host port, target port, bytes received so far) -> the upcalls that
# serve the path, a reason to refuse the login, or None when the caller took
# the socket away (handed it to another reactor)
LoginHandler = Callable[["LoopbackPath", FcName, FcName, bytes], "FcUpcalls | str | None"]


class LoopbackPath:
    """Target side of one loopback login path (an `LldNexus`)."""

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        on_login: LoginHandler,
        max_payload: int,
        preread: bytes = b"",
        max_unsent: int = 4 << 20,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.on_login = on_login
        self.reader = F.FrameReader(max_payload)
        self.max_payload = max_payload
        self.max_unsent = max_unsent
        self.local = FcName(0, 0)
        self.remote = FcName(0, 0)
        self.upcalls: FcUpcalls | None = None
        self.born = time.monotonic()  # for the login timeout
        self.raw = bytearray()  # bytes received before the login was decided
        # the one socket output path (transports/sockout.py): backpressure with
        # hysteresis, stop reading past max_unsent, resume at half
        self.out = SockOut(sock.sendmsg, max_unsent, max_unsent // 2, IOV_MAX)
        self.closed = False
        self.closing = False  # close once the output drained
        self.detached = False
        self.flush_soon = False
        self.in_read = False  # output produced while reading is flushed at its end
        self.mask = EPOLLIN
        # xid -> [buffer, relative offset of buffer[0], bytes received]
        self.rx: dict[int, list[Any]] = {}
        self._rxbuf = bytearray(RECV_SIZE)
        sock.setblocking(False)
        loop.add_fd(self.fd, EPOLLIN, self._on_events)
        if preread:
            self._input(memoryview(preread))

    # ------------------------------------------------------------ LldNexus
    def xmt_ls_rsp(self, xid: int, payload: bytes) -> None:
        self._send(F.encode(F.T_LS_RSP, xid, payload))

    def recv_data(self, xid: int, buf: memoryview, offset: int) -> None:
        if not len(buf):
            raise ValueError("recv_data of nothing")
        self.rx[xid] = [buf, offset, 0]
        self._send(F.xfer_rdy(xid, offset, len(buf)))

    def send_data(self, xid: int, offset: int, bufs: list[memoryview]) -> None:
        out: list[Any] = []
        n = 0
        step = self.max_payload
        for b in bufs:
            mv = memoryview(b)
            if mv.ndim != 1 or mv.format != "B":
                mv = mv.cast("B")
            pos = 0
            while pos < len(mv):
                k = min(step, len(mv) - pos)
                out.append(F.header(F.T_DATA, xid, offset, k))
                out.append(mv[pos : pos + k])
                pos += k
                offset += k
                n += k + F.HDR_LEN
        self._send_many(out, n)

    def xmt_rsp(self, xid: int, iu: bytes) -> None:
        self.rx.pop(xid, None)
        self._send(F.encode(F.T_RSP, xid, iu))

    def abort(self, xid: int) -> None:
        self.rx.pop(xid, None)
        self._send(F.encode(F.T_ABTS, xid))

    def logout(self) -> None:
        if not self.closed:
            self._send(F.encode(F.T_LOGOUT, 0))
            self.closing = True
            self._flush()

    # ------------------------------------------------------------ I/O
    def _send(self, b: bytes) -> None:
        self._send_many([b], len(b))

    def _send_many(self, bufs: list[Any], n: int) -> None:
        if self.closed:
            return
        out = self.out
        out.push(bufs, n)
        if len(out.queue) > 64 or out.unsent > 1 << 16:
            self._flush()
        elif not self.flush_soon and not self.in_read:
            # one flush per loop turn; EPOLLOUT only when the socket is full
            self.flush_soon = True
            self.loop.call_soon(self._flush)

    def _set_mask(self, mask: int) -> None:
        if mask != self.mask and not self.closed:
            self.mask = mask
            self.loop.modify_fd(self.fd, mask)

    def _flush(self) -> None:
        self.flush_soon = False
        if self.closed:
            return
        out = self.out
        try:
            out.flush()
        except OSError as e:
            log.debug("fc loopback %s: send failed: %s", self.remote, e)
            self.close()
            return
        if not out.pending and self.closing:
            self.close()
            return
        self._set_mask((EPOLLIN if out.may_read() else 0) | (EPOLLOUT if out.pending else 0))

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
        except Exception:  # containment: this path only
            log.exception("fc loopback %s: closing the path", self.remote)
            self.close()

    def _read(self) -> None:
        for _ in range(16):
            try:
                n = self.sock.recv_into(self._rxbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                log.debug("fc loopback %s: recv failed: %s", self.remote, e)
                self.close()
                return
            if n == 0:
                self.close()
                return
            self.in_read = True
            try:
                self._input(memoryview(self._rxbuf)[:n])
            finally:
                self.in_read = False
            if self.closed or self.detached or n < len(self._rxbuf):
                break
        if not self.closed and not self.detached:
            self._flush()

    def _input(self, data: memoryview) -> None:
        if self.upcalls is None:
            self.raw += data
            if len(self.raw) > 1 << 20:
                self.close()
                return
        try:
            frames = self.reader.feed(data)
        except F.FrameError as e:
            log.warning("fc loopback %s: %s; link down", self.remote, e)
            self.close()
            return
        for f in frames:
            if self.closed or self.detached:
                return
            self._frame(f)

    def _frame(self, f: F.Frame) -> None:
        up = self.upcalls
        if up is None:
            if f.type != F.T_LOGIN:
                log.warning("fc loopback: %r before LOGIN; link down", f)
                self.close()
                return
            host = FcName.unpack(f.payload[:16])
            target = FcName.unpack(f.payload[16:32])
            self.remote, self.local = host, target
            res = self.on_login(self, host, target, bytes(self.raw))
            if res is None:  # the handler detached the path and handed the socket on
                self.detach()
                return
            if isinstance(res, str):
                self._send(F.encode(F.T_LOGIN_RJT, 0, res.encode()[:256]))
                self.closing = True
                self._flush()
                return
            self.upcalls = res
            self.raw = bytearray()
            self._send(F.encode(F.T_LOGIN_ACC, 0))
            return
        t = f.type
        if t == F.T_CMD:
            up.cmd_iu(self, f.xid, f.payload)
        elif t == F.T_DATA:
            self._data(f)
        elif t == F.T_LS_REQ:
            up.ls_request(self, f.xid, f.payload)
        elif t == F.T_ABTS:
            self.rx.pop(f.xid, None)
            up.abts(self, f.xid)
            self._send(F.encode(F.T_BA_ACC, f.xid))
        elif t == F.T_LOGOUT:
            self.close()
        elif t == F.T_BA_ACC:
            pass
        else:
            log.warning("fc loopback %s: unexpected %r from the host; link down", self.remote, f)
            self.close()

    def _data(self, f: F.Frame) -> None:
        w = self.rx.get(f.xid)
        if w is None:
            return  # data of an exchange aborted meanwhile (or never asked for): dropped
        buf, base, got = w
        n = len(f.payload)
        if f.offset != base + got or got + n > len(buf):
            log.warning(
                "fc loopback %s: exchange %#x data at %d+%d outside the transfer",
                self.remote,
                f.xid,
                f.offset,
                n,
            )
            del self.rx[f.xid]
            self._send(F.encode(F.T_ABTS, f.xid))
            assert self.upcalls is not None
            self.upcalls.data_done(self, f.xid, False)
            return
        buf[got : got + n] = f.payload
        got += n
        if got == len(buf):
            del self.rx[f.xid]
            assert self.upcalls is not None
            self.upcalls.data_done(self, f.xid, True)
        else:
            w[2] = got

    # ------------------------------------------------------------ teardown
    def detach(self) -> None:
        """The socket now belongs to someone else (handoff): forget it."""
        if not self.closed:
            self.detached = True
            self.closed = True
            self.loop.remove_fd(self.fd)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.rx.clear()
        self.out.discard()
        try:
            self.loop.remove_fd(self.fd)
        except (KeyError, OSError, ValueError):
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        up, self.upcalls = self.upcalls, None
        if up is not None:
            up.nexus_down(self)
