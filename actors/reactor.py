"""A reactor process: one per core of the core mask, pinned to its core.

It owns: its event loop, its I/O channels to every bdev it uses, the
connections (queue pairs, iSCSI connections) handed to it, and nothing else.
It talks to the supervisor over a ZeroMQ DEALER socket (typed msgpack
messages, see messages.py) and receives accepted sockets over a Unix
socketpair (fdpass.py).

Started by the supervisor as ``python -m blockfabric.actors.reactor ...``.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from ..bdevs.base import Bdev, IoChannel
from ..bdevs.registry import bdev_from_description
from ..shm import trace as tr
from ..shm.iobuf import IoBufs
from ..shm.pool import BufferPool
from ..shm.segment import SharedSegment
from ..transports.base import DRIVERS
from . import messages as m
from .fdpass import Handoff, recv_fd, send_fd
from .logpipe import reactor_logging
from .loop import EPOLLIN, EventLoop

log = logging.getLogger("blockfabric.reactor")

PR_SET_PDEATHSIG = 1
MBOX_POLL_S = 0.001  # how often a busy reactor checks its ZeroMQ mailbox
IOBUF_POLL_S = 0.002  # retry pool waiters this often while some are queued
IOBUF_IDLE_S = 0.05  # ... and this often otherwise
TRACE_RELOAD_S = 1.0  # re-read the tpoint group mask (RPCs also say so at once)
_ZMQ_EVENTS = int(zmq.EVENTS)
_ZMQ_POLLIN = int(zmq.POLLIN)
_monotonic = time.monotonic


def die_with_parent() -> None:
    """A reactor must not outlive its supervisor (kill -9 of the supervisor)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def load_drivers() -> None:
    """Import the transport drivers so they register themselves: iSCSI and
    every NVMe-oF transport's reactor driver (transport.REACTOR_DRIVERS; one
    whose module is absent from this build is skipped)."""
    from ..transports.nvmf.transport import REACTOR_DRIVERS, TransportUnavailable

    for mod in ("blockfabric.transports.iscsi.driver", *REACTOR_DRIVERS.values()):
        try:
            __import__(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            log.debug("no transport driver %s in this build", mod)
        except TransportUnavailable as e:
            log.info("transport driver %s not loaded: %s", mod, e)


class Reactor:
    """The ReactorContext implementation (see context.py)."""

    def __init__(
        self,
        instance: str,
        reactor_id: int,
        core: int,
        sup_addr: str,
        fd_sock: socket.socket,
        poll_mode: str,
        spin_us: int,
        num_reactors: int = 1,
        state_dir: str = "",
        pool_name: str = "",
        trace_name: str = "",
    ) -> None:
        self.instance = instance
        self.num_reactors = num_reactors
        self.state_dir = state_dir
        self.reactor_id = reactor_id
        self.core = core
        self.loop = EventLoop(poll_mode, spin_us)
        self.started = time.time()
        self.generation = 0
        self.nvmf_config: dict[str, Any] = {}
        self.iscsi_config: dict[str, Any] = {}
        self._bdevs: dict[str, Bdev] = {}
        self._channels: dict[str, IoChannel] = {}
        self._corr = itertools.count(1)
        self._pending: dict[int, tuple[Callable[[bool, Any], None], Any]] = {}
        self.zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.mbox = self.zctx.socket(zmq.DEALER)
        self.mbox.setsockopt(zmq.LINGER, 0)
        self.mbox.setsockopt(zmq.IDENTITY, b"r%d" % reactor_id)
        self.mbox.connect(sup_addr)
        self.fd_sock = fd_sock
        self.fd_sock.setblocking(False)
        self.loop.add_fd(int(self.mbox.getsockopt(zmq.FD)), EPOLLIN, self._on_mbox)
        self.loop.add_fd(self.fd_sock.fileno(), EPOLLIN, self._on_fd_sock)
        # ZeroMQ's fd is edge-triggered and may not fire again after a send
        # drained its state, so the mailbox is also checked every iteration
        # (a getsockopt, no syscall).
        self._mbox_checked = 0.0
        self._mbox_get = self.mbox.getsockopt
        self.loop.add_poller(self._poll_mbox)
        self._stopping = False
        # transfer buffers: this reactor's share of the instance's shared pool
        # (a restarted reactor rebuilds its free list from the pool header)
        self.pool: BufferPool | None = None
        if pool_name:
            self.pool = BufferPool.attach(pool_name, reactor_id)
        else:  # a reactor started by hand or by a test: a private pool
            self.pool = BufferPool.create(
                instance, 1, 16, hugepages="never", reactor_id=0,
                tag=f"bufpool-r{reactor_id}-{os.getpid()}",
            )  # fmt: skip
            self._private_pool = True
        self.iobufs = IoBufs(self.pool)
        self._iobuf_timer = self.loop.call_later(IOBUF_IDLE_S, self._poll_iobufs)
        # this reactor's trace ring (shm/trace.py); the mask is reloaded on
        # framework.trace_mask and every TRACE_RELOAD_S
        self._trace_timer: Any = None
        if trace_name:
            tr.TRACE.attach(SharedSegment.attach(trace_name), reactor_id, tr.ROLE_REACTOR, core)
            self._trace_timer = self.loop.call_every(TRACE_RELOAD_S, tr.TRACE.reload)

    def _poll_iobufs(self) -> None:
        try:
            self.iobufs.poll()
        finally:
            delay = IOBUF_POLL_S if self.iobufs.queued else IOBUF_IDLE_S
            self._iobuf_timer = self.loop.call_later(delay, self._poll_iobufs)

    def iobuf_stats(self) -> dict[str, Any]:
        """SPDK iobuf_get_stats shape (cache = served from this reactor's own
        share, main = from the shared reserve, retry = found nothing) plus
        this reactor's transfer counters."""
        out: dict[str, Any] = {"module": f"reactor_{self.reactor_id}", "reactor": self.reactor_id}
        assert self.pool is not None
        ps = self.pool.stats()
        for label in ("small", "large"):
            c = ps[label]
            out[f"{label}_pool"] = {
                "cache": c["gets"] - c["reserve_gets"],
                "main": c["reserve_gets"],
                "retry": c["nomem"],
                "gets": c["gets"],
                "puts": c["puts"],
                "local_free": c["local_free"],
                "per_reactor": c["per_reactor"],
            }
        out.update(self.iobufs.stats())
        out["nomem"] = ps["small"]["nomem"] + ps["large"]["nomem"]
        return out

    # ---------------------------------------------------------- context API
    def bdev(self, name: str) -> Bdev | None:
        return self._bdevs.get(name)

    def channel(self, name: str) -> IoChannel | None:
        ch = self._channels.get(name)
        if ch is not None:
            return ch
        b = self._bdevs.get(name)
        if b is None or b.removed:
            return None
        ch = b.open_channel(self.loop)
        self._channels[name] = ch
        return ch

    def call(
        self, op: str, args: dict[str, Any], cb: Callable[[bool, Any], None], timeout: float = 5.0
    ) -> None:
        corr = next(self._corr)

        def expire() -> None:
            if self._pending.pop(corr, None) is not None:
                cb(False, "timeout")

        self._pending[corr] = (cb, self.loop.call_later(timeout, expire))
        self._send(m.ControllerCall(op, args), corr)

    def notify(self, op: str, args: dict[str, Any]) -> None:
        self._send(m.Event(op, args), 0)

    def handoff(
        self, sock: socket.socket, reactor_id: int, proto: str, listener: str, preread: bytes
    ) -> None:
        """Move a connection to another reactor (through the supervisor)."""
        try:
            host, port = sock.getpeername()[:2]
            peer = f"{host}:{port}"
        except (OSError, ValueError):  # ValueError: a Unix socket's peer name is a str
            peer = "?"
        send_fd(self.fd_sock, Handoff(sock.fileno(), proto, listener, peer, preread, reactor_id))
        sock.close()

    # ------------------------------------------------------------- mailbox
    def _send(self, msg: m.Message, corr: int) -> None:
        self.mbox.send(m.encode(msg, corr), zmq.NOBLOCK)

    def _poll_mbox(self) -> int:
        # getsockopt(EVENTS) costs microseconds (libzmq polls its signaler and
        # pyzmq builds an enum): on a busy data path do it at most every
        # MBOX_POLL_S; a missed ZeroMQ edge is then late by that much at most.
        now = _monotonic()
        if now - self._mbox_checked < MBOX_POLL_S:
            return 0
        self._mbox_checked = now
        if self._mbox_get(_ZMQ_EVENTS) & _ZMQ_POLLIN:  # type: ignore[operator]  # pyzmq types getsockopt as int|bytes|str; EVENTS is an int
            return self._drain()
        return 0

    def _on_mbox(self, _ev: int) -> None:
        self._drain()

    def _drain(self) -> int:
        n = 0
        while True:
            try:
                raw = self.mbox.recv(zmq.NOBLOCK)
            except zmq.Again:
                return n
            n += 1
            try:
                msg, corr = m.decode(raw)
            except m.MessageError as e:
                log.error("reactor %d: bad message: %s", self.reactor_id, e)
                continue
            try:
                self._handle(msg, corr)
            except Exception as e:
                log.exception("reactor %d: handling %s failed", self.reactor_id, msg.TAG)
                if corr:
                    self._send(m.Reply(False, None, f"{type(e).__name__}: {e}"), corr)

    def _reply(self, corr: int, result: Any = None) -> None:
        if corr:
            self._send(m.Reply(True, result, ""), corr)

    def _handle(self, msg: m.Message, corr: int) -> None:
        if isinstance(msg, m.Reply):
            p = self._pending.pop(corr, None)
            if p is not None:
                p[1].cancel()
                p[0](msg.ok, msg.result if msg.ok else msg.error)
        elif isinstance(msg, m.ConfigUpdate):
            self._apply_config(msg)
            self._reply(corr, self.generation)
        elif isinstance(msg, m.Event | m.ControllerCall):
            self._reply(corr, self._on_event(msg.op, msg.args))
        elif isinstance(msg, m.BdevRemove):
            self._remove_bdev(msg.name)
            self._reply(corr, True)
        elif isinstance(msg, m.Ping):
            self._reply(corr, msg.sent_ns)
        elif isinstance(msg, m.SetPollMode):
            self.loop.poll_mode = msg.mode
            self.loop.spin_s = msg.spin_us / 1e6
            self._reply(corr, True)
        elif isinstance(msg, m.Shutdown):
            self._reply(corr, True)
            self.stop()
        else:
            log.warning("reactor %d: unexpected message %s", self.reactor_id, msg.TAG)

    def _on_event(self, op: str, args: dict[str, Any]) -> Any:
        prefix = op.split(".", 1)[0]
        if op == "framework.reactor_died":
            return self._peer_died(args)
        if prefix == "framework":
            return self._framework_event(op, args)
        if prefix == "bdev":
            if op == "bdev.iostat":
                return {
                    n: ch.stats.as_dict()
                    for n, ch in self._channels.items()
                    if n in set(args.get("names", []))
                }
            if op == "bdev.resized":  # the new geometry came with the last ConfigUpdate
                told: set[str] = set()  # once per family ("nvmf": the shared target)
                for drv in DRIVERS.values():
                    family = drv.proto.split("-", 1)[0]
                    if family in told:
                        continue
                    told.add(family)
                    try:
                        drv.on_event(self, family + ".bdev_resized", dict(args))
                    except Exception:
                        log.exception("driver %s: bdev_resized handler failed", drv.proto)
                return True
            return None
        d = DRIVERS.get(prefix)  # "nvmf-rdma.<op>": that transport's driver
        if d is not None:
            return d.on_event(self, op, args)
        # "nvmf.<op>": the first driver of the family (NVMe-oF drivers share
        # the reactor's NvmfTarget, so any of them answers for all)
        for d in DRIVERS.values():
            if d.proto.split("-", 1)[0] == prefix:
                return d.on_event(self, op, args)
        raise ValueError(f"no handler for event {op}")

    def _peer_died(self, args: dict[str, Any]) -> bool:
        """Another reactor died (the supervisor restarts it): every transport
        drops what it kept about that reactor's connections, as
        ``<proto>.reactor_died {reactor: N}``; the NVMe-oF controllers it
        hosted are already destroyed by ``nvmf.destroy_ctrlr`` events."""
        log.warning("reactor %d: reactor %s died", self.reactor_id, args.get("reactor"))
        for d in DRIVERS.values():
            try:
                d.on_event(self, d.proto.split("-", 1)[0] + ".reactor_died", dict(args))
            except Exception:
                log.exception("driver %s: reactor_died handler failed", d.proto)
        return True

    def _framework_event(self, op: str, args: dict[str, Any]) -> Any:
        if op == "framework.iobuf_stats":
            return self.iobuf_stats()
        if op == "framework.reactor_info":
            t = os.times()
            return {
                "lcore": self.core,
                "reactor_id": self.reactor_id,
                "pid": os.getpid(),
                "poll_mode": self.loop.poll_mode,
                "busy": self.loop.busy_polls,
                "idle": self.loop.idle_polls,
                "blocks": self.loop.blocks,
                "user_s": t.user,
                "sys_s": t.system,
                "uptime_s": time.time() - self.started,
                "callback_errors": self.loop.callback_errors,
            }
        if op == "framework.trace_mask":
            return tr.TRACE.reload()
        if op == "framework.log_level":
            logging.getLogger("blockfabric").setLevel(args.get("level", "INFO"))
            return True
        raise ValueError(f"unknown event {op}")

    # ------------------------------------------------------- configuration
    def _apply_config(self, msg: m.ConfigUpdate) -> None:
        for name, desc in msg.bdevs.items():
            b = self._bdevs.get(name)
            if b is None:
                self._bdevs[name] = bdev_from_description(desc)
            elif hasattr(b, "update_description"):
                b.update_description(desc)  # e.g. a remote controller reconnected
        self.generation = msg.generation
        self.nvmf_config = msg.nvmf
        self.iscsi_config = msg.iscsi
        for d in DRIVERS.values():
            d.on_config(self)

    def _remove_bdev(self, name: str) -> None:
        b = self._bdevs.pop(name, None)
        if b is not None:
            b.removed = True
        ch = self._channels.pop(name, None)
        if ch is not None:
            ch.removed = True  # new I/O fails with REMOVED; in-flight completes
            ch.close()
        for d in DRIVERS.values():
            try:
                d.on_event(self, d.proto.split("-", 1)[0] + ".bdev_removed", {"name": name})
            except Exception:
                log.debug("driver %s ignores bdev removal", d.proto, exc_info=True)

    # ------------------------------------------------------- connections
    def _on_fd_sock(self, _ev: int) -> None:
        while True:
            try:
                h = recv_fd(self.fd_sock)
            except BlockingIOError:
                return
            except (OSError, ValueError) as e:
                log.error("reactor %d: fd handoff failed: %s", self.reactor_id, e)
                return
            if h is None:  # supervisor gone
                self.stop()
                return
            sock = socket.socket(fileno=h.fd)
            drv = DRIVERS.get(h.proto)
            if drv is None:
                log.error("reactor %d: no transport %s", self.reactor_id, h.proto)
                sock.close()
                continue
            try:
                if h.preread:
                    drv.accept(self, sock, h.listener, preread=h.preread)  # type: ignore[call-arg]  # only drivers that take a preread get one (TransportDriver.accept has no such parameter)
                else:
                    drv.accept(self, sock, h.listener)
            except Exception:
                log.exception("reactor %d: accept on %s failed", self.reactor_id, h.proto)
                sock.close()

    # ------------------------------------------------------------ lifecycle
    def run(self) -> None:
        log.info(
            "reactor %d (pid %d) up on core %d, pool %s",
            self.reactor_id, os.getpid(), self.core, self.pool.name if self.pool else "-",
        )  # fmt: skip
        self._send(m.Hello(self.reactor_id, os.getpid()), 0)
        self.loop.run()
        self._teardown()

    def stop(self) -> None:
        self._stopping = True
        self.loop.stop()

    def _teardown(self) -> None:
        for d in DRIVERS.values():
            try:
                d.shutdown(self)
            except Exception:
                log.exception("driver %s shutdown failed", d.proto)
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()
        for b in self._bdevs.values():
            detach = getattr(b, "detach", None)
            if detach:
                detach()
        tr.TRACE.detach()
        self.mbox.close(0)
        self.fd_sock.close()
        if self.pool is not None:
            if getattr(self, "_private_pool", False):
                self.pool.destroy()
            else:
                self.pool.close()
            self.pool = None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="blockfabric-reactor")
    ap.add_argument("--instance", required=True)
    ap.add_argument("--id", type=int, required=True)
    ap.add_argument("--core", type=int, required=True)
    ap.add_argument("--sup", required=True)
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--poll-mode", default="adaptive")
    ap.add_argument("--spin-us", type=int, default=200)
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--nreactors", type=int, default=1)
    ap.add_argument("--state-dir", default="")
    ap.add_argument("--pool", default="", help="the instance's buffer pool segment")
    ap.add_argument("--log-fd", type=int, default=-1, help="log pipe to the supervisor")
    ap.add_argument("--trace", default="", help="the instance's trace segment")
    a = ap.parse_args(argv)
    die_with_parent()
    reactor_logging(
        a.log_fd, a.log_level, f"%(asctime)s reactor{a.id} %(levelname)s %(name)s: %(message)s"
    )
    try:
        import setproctitle

        setproctitle.setproctitle(f"blockfabric[{a.instance}] reactor {a.id}")
    except ImportError:
        pass
    os.sched_setaffinity(0, {a.core})
    # SIGTERM/SIGINT: the supervisor decides; a reactor stops on its Shutdown
    # message, or on SIGTERM from PDEATHSIG when the supervisor vanished.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    load_drivers()
    fd_sock = socket.socket(fileno=a.fd)
    r = Reactor(
        a.instance, a.id, a.core, a.sup, fd_sock, a.poll_mode, a.spin_us, a.nreactors,
        a.state_dir, a.pool, a.trace,
    )  # fmt: skip
    signal.signal(signal.SIGTERM, lambda *_: r.stop())
    r.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
