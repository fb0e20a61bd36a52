"""Reactor glue for iSCSI: sockets, the first-PDU routing to the target's home
reactor, timers (login timeout, NOP-In keepalive), and the SCSI devices of the
target nodes homed on this reactor. Protocol logic lives in connection.py."""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections import deque
from typing import Any

from ...actors.context import ReactorContext
from ...actors.loop import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT
from ..base import register_driver
from ..scsi.task import ScsiTask
from . import pdu as P
from . import text
from .connection import Connection
from .nodes import ConfigView
from .session import SessionRegistry

log = logging.getLogger(__name__)

LOGIN_TIMEOUT = 15.0
IOV_MAX = 512
ROUTE_MAX = P.BHS_LEN + P.MAX_AHS_LEN + 8192 + 3


def first_login_target(buf: bytes) -> tuple[int, str | None] | None:
    """Inspect the first PDU: None until it is complete, then (length,
    TargetName or None). Non-login or oversized PDUs give (len, None): the
    connection is then served where it landed (and fails its login there)."""
    if len(buf) < P.BHS_LEN:
        return None
    if buf[0] & 0x3F != P.OP_LOGIN_REQ:
        return (len(buf), None)
    ahs = buf[4] * 4
    dlen = int.from_bytes(buf[5:8], "big")
    total = P.BHS_LEN + ahs + dlen + P.pad_len(dlen)
    if total > ROUTE_MAX:
        return (len(buf), None)
    if len(buf) < total:
        return None
    data = buf[P.BHS_LEN + ahs : P.BHS_LEN + ahs + dlen]
    try:
        keys = dict(text.parse(data))
    except text.TextError:
        return (total, None)
    if keys.get("SessionType", "Normal") == "Discovery":
        return (total, None)
    return (total, keys.get("TargetName"))


class ReactorIscsi:
    """Per-reactor iSCSI state; implements connection.ConnEnv."""

    def __init__(self, ctx: ReactorContext) -> None:
        self.ctx = ctx
        self.view = ConfigView(getattr(ctx, "iscsi_config", None) or {})
        self.sessions = SessionRegistry(ctx.reactor_id, getattr(ctx, "num_reactors", 1))
        self.devices: dict[str, Any] = {}
        self.conns: set[SockConn] = set()
        self.timer: Any = None

    # ConnEnv
    def device(self, target_name: str) -> Any:
        t = self.view.target(target_name)
        return self.devices.get(t.name) if t else None

    def make_task(self, **kw: Any) -> Any:
        return ScsiTask(**kw)

    # devices of the targets homed here
    def sync_devices(self) -> None:
        rid = self.ctx.reactor_id
        wanted = {t.name: t for t in self.view.targets.values() if t.home_reactor == rid}
        for name in list(self.devices):
            if name not in wanted:
                dev = self.devices.pop(name)
                for s in [s for s in self.sessions.sessions.values() if s.target_name == name]:
                    s.close()
                for lun in list(dev.luns.values()):
                    lun.hot_remove()
        for name, t in wanted.items():
            dev = self.devices.get(name)
            if dev is None:
                try:
                    dev = self._new_device(name)
                except Exception:
                    log.exception("cannot create SCSI device for %s", name)
                    continue
                self.devices[name] = dev
            for lid in list(dev.luns):
                if lid not in t.luns or dev.luns[lid].bdev.name != t.luns[lid]:
                    lun = dev.luns[lid]
                    lun.hot_remove(
                        lambda d=dev, i=lid, lu=lun: d.luns.get(i) is lu and d.remove_lun(i)
                    )
            for lid, bname in t.luns.items():
                cur = dev.luns.get(lid)
                if cur is not None and not cur.removed:
                    continue
                bdev = self.ctx.bdev(bname)
                if bdev is None:
                    continue
                if cur is not None:
                    dev.remove_lun(lid)
                self._add_lun(dev, lid, bname, bdev)

    def _new_device(self, name: str) -> Any:
        from ..scsi.device import ScsiDevice
        from ..scsi.pr import PrStore

        sd = getattr(self.ctx, "state_dir", None)
        path = None
        if sd:
            safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in name)
            path = os.path.join(sd, f"iscsi-pr-{safe}.json")
        return ScsiDevice(name, PrStore(path))

    def _add_lun(self, dev: Any, lid: int, bname: str, bdev: Any) -> None:
        from ..scsi.lun import ScsiLun

        ctx = self.ctx
        dev.add_lun(ScsiLun(lid, bdev, lambda: ctx.channel(bname), dev))


class SockConn:
    """A socket, its output queue, and the protocol `Connection` on it."""

    def __init__(self, rs: ReactorIscsi, sock: socket.socket, listener: str, route: bool) -> None:
        self.rs = rs
        self.sock = sock
        self.fd = sock.fileno()
        self.listener = listener
        self.route = route
        self.route_buf = bytearray()
        self.out: deque[P.Buffer] = deque()
        self.flush_scheduled = False
        self.closing = False
        self.closed = False
        self.started = time.monotonic()
        try:
            peer = sock.getpeername()[0]
            local = sock.getsockname()[0]
        except OSError:
            peer = local = ""
        if local.startswith("::ffff:"):
            local = local[7:]
        self.conn = Connection(rs, listener, peer, local, self._send, self._on_close)
        self.conn.last_rx = self.started

    # -------------------------------------------------------------- input
    def on_events(self, ev: int) -> None:
        if ev & EPOLLIN or ev & (EPOLLERR | EPOLLHUP):
            self.on_readable()
        if ev & EPOLLOUT and not self.closed:
            self.flush()

    def on_readable(self) -> None:
        if self.closed:
            return
        if self.route:
            self._route_read()
            return
        reader = self.conn.reader
        for _ in range(16):  # bounded: other connections get their turn
            try:
                buf = reader.recv_buffer()
                n = self.sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._drop(f"recv: {e}")
                return
            if n == 0:
                self._drop("peer closed")
                return
            self.conn.last_rx = time.monotonic()
            full = n == len(buf)
            self.conn.receive(reader.feed(n))
            if self.closed or self.conn.state == "closed" or not full:
                # a short read drained the socket: skip the recv that would
                # only raise EAGAIN (epoll reports anything that comes later)
                break
        self.schedule_flush()

    def _route_read(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._drop(f"recv: {e}")
            return
        if not chunk:
            self._drop("peer closed")
            return
        self.route_buf += chunk
        r = first_login_target(bytes(self.route_buf))
        if r is None:
            return
        self.route = False
        data = bytes(self.route_buf)
        self.route_buf = bytearray()
        tname = r[1]
        ctx = self.rs.ctx
        t = self.rs.view.target(tname) if tname else None
        if t is not None and t.home_reactor != ctx.reactor_id and hasattr(ctx, "handoff"):
            # all of a target's sessions live on its home reactor
            self._detach()
            try:
                ctx.handoff(self.sock, t.home_reactor, "iscsi", self.listener, data)  # type: ignore[attr-defined]
            except Exception:
                log.exception("iscsi handoff to reactor %d failed", t.home_reactor)
                self.sock.close()
            return
        self.conn.last_rx = time.monotonic()
        self.conn.feed(data)
        self.schedule_flush()

    # ------------------------------------------------------------- output
    def _send(self, bufs: list[P.Buffer]) -> None:
        self.out.extend(bufs)
        self.schedule_flush()

    def schedule_flush(self) -> None:
        if not self.flush_scheduled and self.out and not self.closed:
            self.flush_scheduled = True
            self.rs.ctx.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        while out and not self.closed:
            iov = [out[i] for i in range(min(len(out), IOV_MAX))]
            try:
                n = self.sock.sendmsg(iov)
            except (BlockingIOError, InterruptedError):
                n = -1
            except OSError as e:
                self._drop(f"send: {e}")
                return
            if n < 0:
                break
            while n > 0:
                b = out[0]
                lb = len(b)
                if n >= lb:
                    out.popleft()
                    n -= lb
                else:
                    out[0] = memoryview(b)[n:]
                    n = 0
        if self.closed:
            return
        if out:
            self.rs.ctx.loop.modify_fd(self.fd, EPOLLIN | EPOLLOUT)
        else:
            self.rs.ctx.loop.modify_fd(self.fd, EPOLLIN)
            if self.closing:
                self._drop(self.conn.close_reason)

    # -------------------------------------------------------------- close
    def _on_close(self, reason: str) -> None:
        # the protocol is done: send what is queued (a final response), then close
        self.closing = True
        if not self.out:
            self._drop(reason)
        else:
            self.schedule_flush()
            self.rs.ctx.loop.call_later(5.0, lambda: self._drop("close timeout"))

    def _detach(self) -> None:
        self.closed = True
        self.rs.conns.discard(self)
        self.rs.ctx.loop.remove_fd(self.fd)

    def _drop(self, reason: str) -> None:
        if self.closed:
            return
        log.debug("iscsi connection %s closed: %s", self.conn.peer_addr, reason)
        self._detach()
        if self.conn.state != "closed":
            self.conn.close(reason)
        self.out.clear()
        try:
            self.sock.close()
        except OSError:
            pass


class IscsiDriver:
    proto = "iscsi"

    def __init__(self) -> None:
        self.reactors: dict[int, ReactorIscsi] = {}

    def _rs(self, ctx: ReactorContext) -> ReactorIscsi:
        rs = self.reactors.get(id(ctx))
        if rs is None:
            rs = ReactorIscsi(ctx)
            self.reactors[id(ctx)] = rs
            rs.sync_devices()
            self._arm_timer(rs)
        return rs

    def _arm_timer(self, rs: ReactorIscsi) -> None:
        rs.timer = rs.ctx.loop.call_later(1.0, lambda: self._tick(rs))

    def _tick(self, rs: ReactorIscsi) -> None:
        now = time.monotonic()
        o = rs.view.options
        interval = float(o.get("nop_in_interval", 30))
        timeout = float(o.get("nop_timeout", 60))
        for sc in list(rs.conns):
            c = sc.conn
            if c.state == "login" and now - sc.started > LOGIN_TIMEOUT:
                sc._drop("login timeout")
            elif c.state == "ffp" and interval > 0 and timeout > 0:
                c.idle_check(now, interval, timeout)
                sc.schedule_flush()
        if id(rs.ctx) in self.reactors:
            self._arm_timer(rs)

    def accept(
        self, ctx: ReactorContext, sock: socket.socket, listener: str, preread: bytes = b""
    ) -> None:
        rs = self._rs(ctx)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOPROTOOPT):
                raise
        # a connection handed over from another reactor is already routed
        sc = SockConn(rs, sock, listener, route=not preread)
        rs.conns.add(sc)
        ctx.loop.add_fd(sc.fd, EPOLLIN, sc.on_events)
        if preread:
            sc.conn.feed(preread)
            sc.schedule_flush()

    def on_config(self, ctx: ReactorContext) -> None:
        rs = self._rs(ctx)
        rs.view = ConfigView(getattr(ctx, "iscsi_config", None) or {})
        rs.sync_devices()

    def on_event(self, ctx: ReactorContext, op: str, args: dict[str, Any]) -> Any:
        rs = self._rs(ctx)
        if op == "iscsi.connections":
            out = []
            for sc in rs.conns:
                if sc.conn.state == "ffp":
                    d = sc.conn.info()
                    d["lcore_id"] = ctx.reactor_id
                    out.append(d)
            return out
        if op == "iscsi.bdev_removed":
            rs.sync_devices()
            return True
        return None

    def shutdown(self, ctx: ReactorContext) -> None:
        rs = self.reactors.pop(id(ctx), None)
        if rs is None:
            return
        if rs.timer is not None:
            rs.timer.cancel()
        for sc in list(rs.conns):
            sc._drop("shutdown")


DRIVER = IscsiDriver()
register_driver(DRIVER)
