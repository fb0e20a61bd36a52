"""Reactor glue for iSCSI: sockets, the first-PDU routing to the target's home
reactor, timers (login timeout, NOP-In keepalive), and the SCSI devices of the
target nodes homed on this reactor. Protocol logic lives in connection.py."""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from typing import Any

from ...control.hostlog import HostLog
from ...runtime.loop import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT
from ..base import register_driver
from ..context import ReactorContext
from ..scsi.task import ScsiTask
from ..sockout import SockOut
from . import pdu as P
from . import text
from .connection import Connection
from .nodes import ConfigView
from .session import SessionRegistry

log = logging.getLogger(__name__)

LOGIN_TIMEOUT = 15.0  # default of the login_timeout option (seconds)
DATA_OUT_TIMEOUT = 30.0  # default of data_out_timeout: R2T / unsolicited data that stalls
MAX_CONNECTIONS_PER_REACTOR = 1024  # default of max_connections_per_reactor
# output backpressure: stop reading a connection while more than this is
# queued unsent (a host that does not read its responses), resume below LOW
OUT_HIGH = 4 * 1024 * 1024
OUT_LOW = 1024 * 1024
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
        self._dev_cache: dict[str, Any] = {}
        self.conns: set[SockConn] = set()
        self.timer: Any = None
        self.iobufs: Any = getattr(ctx, "iobufs", None)
        self.stats: dict[str, int] = {"exceptions": 0, "refused": 0, "login_timeouts": 0}
        # per-connection counters of the connections already gone (iscsi_get_stats
        # adds the live ones: the totals never go down)
        self.closed_conn_stats: dict[str, int] = {
            "rejects": 0, "digest_errors": 0, "r2t_timeouts": 0,
        }  # fmt: skip
        self.refusals = HostLog(log, f"iscsi reactor {ctx.reactor_id}")

    # ConnEnv
    def device(self, target_name: str) -> Any:
        # every SCSI command asks: cached per name until the devices change
        try:
            return self._dev_cache[target_name]
        except KeyError:
            pass
        t = self.view.target(target_name)
        dev = self.devices.get(t.name) if t else None
        self._dev_cache[target_name] = dev
        return dev

    def make_task(self, **kw: Any) -> Any:
        return ScsiTask(**kw)

    # devices of the targets homed here
    def sync_devices(self) -> None:
        self._dev_cache.clear()
        try:
            self._sync_devices()
        finally:
            self._dev_cache.clear()  # lookups made while it ran may be stale

    def _sync_devices(self) -> None:
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
        from ..scsi.lun import DEFAULT_MAX_TRANSFER, ScsiLun

        ctx = self.ctx
        mtl = int(self.view.options.get("max_transfer_length", DEFAULT_MAX_TRANSFER))
        sd = getattr(ctx, "state_dir", None)
        mode_path = None
        if sd and isinstance(sd, str):
            safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in f"{dev.name}-{bname}")
            mode_path = os.path.join(sd, f"iscsi-mode-{safe}-lun{lid}.json")
        dev.add_lun(
            ScsiLun(
                lid,
                bdev,
                lambda: ctx.channel(bname),
                dev,
                iobufs=self.iobufs,
                max_transfer_bytes=mtl,
                mode_path=mode_path,
            )
        )


def _discard(*_: Any) -> None:
    pass


def _run_now(cb: Any) -> None:
    cb()


class SockConn:
    """A socket, its output (transports/sockout.py), and the protocol
    `Connection` on it."""

    def __init__(self, rs: ReactorIscsi, sock: socket.socket, listener: str, route: bool) -> None:
        self.rs = rs
        self.sock = sock
        self.fd = sock.fileno()
        self.listener = listener
        self.route = route
        self.route_buf = bytearray()
        self.out = SockOut(sock.sendmsg, OUT_HIGH, OUT_LOW, IOV_MAX)
        self.mask = EPOLLIN
        self._close_timer: Any = None
        self.flush_scheduled = False
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
        self.conn.after_sent = self._after_sent
        self.conn.on_flow = self._rearm

    @property
    def out_bytes(self) -> int:
        """Queued, not yet sent."""
        return self.out.unsent

    def on_loop_error(self, exc: BaseException) -> None:
        """The loop's hook when `on_events` raised (driver code, not a PDU:
        those are contained by Connection.receive): count it, close only
        this connection."""
        self.conn.crash("socket events")
        self._drop("internal error")

    # -------------------------------------------------------------- input
    def on_events(self, ev: int) -> None:
        if ev & (EPOLLERR | EPOLLHUP) and not self.mask & EPOLLIN and not self.route:
            self._drop("connection error/hang-up")  # nothing more can be read or sent
            return
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
        conn = self.conn
        out = self.out
        if conn.input_stalled or not out.may_read():
            self._rearm()
            return
        reader = conn.reader
        recv_into = self.sock.recv_into
        for _ in range(16):  # bounded: other connections get their turn
            try:
                buf = reader.recv_buffer()
                n = recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._drop(f"recv: {e}")
                return
            if n == 0:
                self._drop("peer closed")
                return
            conn.last_rx = time.monotonic()
            full = n == len(buf)
            conn.on_recv(n)
            if conn.input_stalled or not out.may_read():
                break
            if self.closed or conn.state == "closed" or not full:
                # a short read drained the socket: skip the recv that would
                # only raise EAGAIN (epoll reports anything that comes later)
                break
        self.schedule_flush()

    def _route_read(self) -> None:
        try:
            chunk = self.sock.recv(ROUTE_MAX)  # the first PDU is all routing needs
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
            self.conn.reader.release()
            self._unlink()
            try:
                ctx.handoff(self.sock, t.home_reactor, "iscsi", self.listener, data)
            except Exception:
                log.exception("iscsi handoff to reactor %d failed", t.home_reactor)
                self.sock.close()
            return
        self.conn.last_rx = time.monotonic()
        self.conn.feed(data)
        self.schedule_flush()

    # ----------------------------------------------------- flow control
    def _rearm(self) -> None:
        """Read more only while the protocol is not waiting for pool buffers
        and the host reads what we send (sockout's backpressure); write
        while output is pending."""
        if self.closed:
            return
        want = not self.conn.input_stalled and self.out.may_read()
        mask = (EPOLLIN if want else 0) | (EPOLLOUT if self.out.pending else 0)
        if mask != self.mask:
            self.mask = mask
            # level-triggered epoll reports what waits in the socket once re-armed
            self.rs.ctx.loop.modify_fd(self.fd, mask)

    # ------------------------------------------------------------- output
    def _send(self, bufs: list[P.Buffer]) -> None:
        self.out.push(bufs)
        if not self.flush_scheduled and not self.closed:
            self.flush_scheduled = True
            self.rs.ctx.loop.call_soon(self.flush)

    def _after_sent(self, cb: Any) -> None:
        """Run cb once everything queued so far has left (pool buffers of a
        Data-In go back to the pool then); at once if nothing is queued."""
        if self.closed:
            cb()
            return
        self.out.mark(cb)

    def schedule_flush(self) -> None:
        if not self.flush_scheduled and self.out.pending and not self.closed:
            self.flush_scheduled = True
            self.rs.ctx.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.closed:
            return
        try:
            self.out.flush()
        except OSError as e:
            self._drop(f"send: {e}")
            return
        self._rearm()

    # -------------------------------------------------------------- close
    def _on_close(self, reason: str) -> None:
        # the protocol is done: send what is queued (a final response), then close
        if self.out.closing or self.closed:
            return
        self.out.close_when_drained(lambda: self._drop(reason))
        if not self.closed:
            self.schedule_flush()
            self._close_timer = self.rs.ctx.loop.call_later(
                5.0, lambda: self._drop("close timeout")
            )

    def _detach(self) -> None:
        self.closed = True
        if self in self.rs.conns:
            done = self.rs.closed_conn_stats
            for k in done:
                done[k] += self.conn.stats.get(k, 0)
        self.rs.conns.discard(self)
        self.rs.ctx.loop.remove_fd(self.fd)

    def _drop(self, reason: str) -> None:
        if self.closed:
            return
        log.debug("iscsi connection %s closed: %s", self.conn.peer_addr, reason)
        self._detach()
        try:
            if self.conn.state != "closed":
                self.conn.close(reason)
        except Exception:
            self.rs.stats["exceptions"] += 1
            self.conn.hostlog.event(logging.ERROR, "internal error closing", exc_info=True)
        # unsent Data-In goes nowhere now: its pool buffers go back
        self.out.discard()
        self.conn.hostlog.close()
        self._unlink()
        if self._close_timer is not None:
            self._close_timer.cancel()  # drops its reference to us now
            self._close_timer = None
        try:
            self.sock.close()
        except OSError:
            pass

    def _unlink(self) -> None:
        """Break the SockConn <-> Connection reference cycle so both are freed
        when the last reference goes (not at the next full GC)."""
        c = self.conn
        c._send = _discard
        c._on_close = _discard
        c.after_sent = _run_now
        c.on_flow = None


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
        try:
            self._tick_all(rs)
        finally:
            # whatever happened above, the reactor's iSCSI timers go on
            if id(rs.ctx) in self.reactors:
                self._arm_timer(rs)

    def _tick_all(self, rs: ReactorIscsi) -> None:
        now = time.monotonic()
        o = rs.view.options
        interval = float(o.get("nop_in_interval", 30))
        timeout = float(o.get("nop_timeout", 60))
        login_timeout = float(o.get("login_timeout", LOGIN_TIMEOUT))
        data_timeout = float(o.get("data_out_timeout", DATA_OUT_TIMEOUT))
        poll = getattr(rs.iobufs, "poll", None)
        if poll is not None:
            poll()
        for sc in list(rs.conns):
            try:
                self._tick_one(sc, now, interval, timeout, login_timeout, data_timeout)
            except Exception:
                # one connection's failure closes that connection only (counted)
                sc.conn.crash("a timer")
                sc._drop("internal error")

    def _tick_one(
        self,
        sc: SockConn,
        now: float,
        interval: float,
        timeout: float,
        login_timeout: float,
        data_timeout: float,
    ) -> None:
        c = sc.conn
        if sc.route or c.state == "login":
            if login_timeout > 0 and now - sc.started > login_timeout:
                sc.rs.stats["login_timeouts"] += 1
                c.hostlog.event(logging.INFO, "login not complete in %.0f s: closed", login_timeout)
                sc._drop("login timeout")
        elif c.state == "ffp":
            if interval > 0 and timeout > 0:
                c.idle_check(now, interval, timeout)
            c.check_timeouts(now, data_timeout)
            sc.schedule_flush()

    def accept(
        self, ctx: ReactorContext, sock: socket.socket, listener: str, preread: bytes = b""
    ) -> None:
        rs = self._rs(ctx)
        cap = int(rs.view.options.get("max_connections_per_reactor", MAX_CONNECTIONS_PER_REACTOR))
        if len(rs.conns) >= cap:
            rs.stats["refused"] += 1
            rs.refusals.event(
                logging.WARNING,
                "%d connections (max_connections_per_reactor): connection on %s refused",
                len(rs.conns),
                listener,
            )
            sock.close()
            return
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
            try:
                sc.conn.feed(preread)
            except Exception:
                sc.conn.crash("a PDU")
            sc.schedule_flush()

    def on_config(self, ctx: ReactorContext) -> None:
        rs = self._rs(ctx)
        rs.view = ConfigView(getattr(ctx, "iscsi_config", None) or {})
        rs.sync_devices()  # (clears the device cache)

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
        if op == "iscsi.stats":
            st: dict[str, Any] = dict(rs.stats)
            st["connections"] = len(rs.conns)
            st["cmdsn_dropped"] = sum(
                x.stats["cmdsn_dropped"] for x in rs.sessions.sessions.values()
            )
            st["immediate_refused"] = sum(
                x.stats["immediate_refused"] for x in rs.sessions.sessions.values()
            )
            st["unsent_bytes"] = sum(sc.out_bytes for sc in rs.conns)
            for k, v in rs.closed_conn_stats.items():  # Reject PDUs sent, digest errors
                st[k] = v + sum(sc.conn.stats.get(k, 0) for sc in rs.conns)
            return st
        if op == "iscsi.bdev_removed":
            rs.sync_devices()
            return True
        if op == "iscsi.bdev_resized":  # CAPACITY DATA HAS CHANGED to every nexus of its LUNs
            from ..scsi.sense import ASC_CAPACITY_CHANGED

            n = 0
            for dev in rs.devices.values():
                for lid, lun in dev.luns.items():
                    if lun.bdev.name == args.get("name"):
                        dev.establish_ua(lid, None, ASC_CAPACITY_CHANGED)
                        n += 1
            return n
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
