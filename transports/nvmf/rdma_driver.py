"""Reactor driver "nvmf-rdma": RDMA listeners and connections of one reactor.

Owns the per-reactor lifecycle of the RDMA transport: in ``on_config`` it
applies the snapshot to the reactor's shared `NvmfTarget`, then opens an
RDMA CM listener (rdma_verbs.RdmaListener) for every RDMA listen address of
the snapshot that this reactor owns and closes those that disappeared; it
answers the RDMA CM events (connect request: NVMe/RDMA private data checked,
queue pair created and accepted with CRQSIZE, or rejected with the NVMe/RDMA
status; established; disconnected) and tears everything down at shutdown.

Connection handoff: an RDMA CM id cannot be passed to another process (it
lives on the rdma_cm fd of the process that created it, and rdma_migrate_id
only moves it between event channels of one process), so each RDMA listen
address is owned by one reactor (a stable hash of the address over the
reactors) and that reactor serves every queue pair accepted on it. Several
listen addresses spread over the reactors. See docs/architecture.md.
"""

from __future__ import annotations

import functools
import logging
import zlib
from typing import Any

from ..base import register_driver
from ..context import ReactorContext
from . import rdma_proto as R
from .core import NvmfTarget, drop_target, target_for
from .rdma import PROTO, RDMA

log = logging.getLogger(__name__)


def owner_of(key: str, nreactors: int) -> int:
    """The reactor that owns an RDMA listener (a stable hash of its key)."""
    return zlib.crc32(key.encode()) % max(1, nreactors)


class NvmfRdmaDriver:
    proto = PROTO

    def __init__(self) -> None:
        self.listeners: dict[tuple[int, str], Any] = {}
        self.devices: dict[tuple[int, str], Any] = {}
        self.by_cm: dict[int, Any] = {}
        self.failed: dict[str, str] = {}
        self.opening: set[tuple[int, str]] = set()

    # -- transport driver -------------------------------------------------------
    def accept(self, ctx: ReactorContext, sock: Any, listener: str, preread: bytes = b"") -> None:
        sock.close()  # RDMA queue pairs never arrive as sockets

    def target(self, ctx: ReactorContext) -> NvmfTarget:
        return target_for(ctx)

    def device(self, ctx: ReactorContext, listen_id: Any) -> Any:
        from .rdma_verbs import RdmaDevice

        name = str(getattr(listen_id, "dev_name", "") or "rdma")
        d = self.devices.get((id(ctx), name))
        if d is None:
            t = self.target(ctx)
            d = RdmaDevice(self, ctx, listen_id, t.opts_for("RDMA"))
            self.devices[(id(ctx), name)] = d
            devs = getattr(t, "rdma_devices", None)
            if devs is None:
                devs = {}
                t.rdma_devices = devs  # type: ignore[attr-defined]  # read by rdma.poll_group_stats
            devs[d.name] = d.stats
        return d

    def wanted(self, ctx: ReactorContext) -> dict[str, tuple[str, int]]:
        """The RDMA listen addresses of the snapshot this reactor owns."""
        snap = ctx.nvmf_config or {}
        if "RDMA" not in (snap.get("transports") or {}):
            return {}
        want: dict[str, tuple[str, int]] = {}
        subs = snap.get("subsystems") or {}
        for ss in subs.values() if isinstance(subs, dict) else subs:
            for li in ss.get("listeners", ()):
                if str(li.get("trtype", "")).upper() != "RDMA":
                    continue
                key = str(li.get("key") or f"RDMA:{li['traddr']}:{li['trsvcid']}")
                if owner_of(key, int(getattr(ctx, "num_reactors", 1))) == ctx.reactor_id:
                    want[key] = (str(li["traddr"]), int(li["trsvcid"]))
        return want

    def on_config(self, ctx: ReactorContext) -> None:
        target_for(ctx).on_config()
        want = self.wanted(ctx)
        rid = id(ctx)
        for (r, key), lst in list(self.listeners.items()):
            if r == rid and key not in want:
                lst.close()
                del self.listeners[(r, key)]
        if not want:
            return
        for key, (addr, port) in want.items():
            if (rid, key) in self.listeners or (rid, key) in self.opening:
                continue
            # opened from the loop: importing pyverbs, opening the device and
            # registering memory must not hold up the answer to the config
            self.opening.add((rid, key))
            ctx.loop.call_soon(functools.partial(self._open, ctx, key, addr, port))

    def _open(self, ctx: ReactorContext, key: str, addr: str, port: int) -> None:
        rid = id(ctx)
        self.opening.discard((rid, key))
        if (rid, key) in self.listeners or key not in self.wanted(ctx):
            return
        why = RDMA.unavailable()
        if why is not None:
            if self.failed.get(key) != why:
                log.error("nvmf-rdma: cannot listen on %s: %s", key, why)
            self.failed[key] = why
            return
        try:
            from .rdma_verbs import RdmaListener

            backlog = int(target_for(ctx).opts_for("RDMA").raw.get("acceptor_backlog", 100))
            self.listeners[(rid, key)] = RdmaListener(self, ctx, key, addr, port, backlog)
            self.failed.pop(key, None)
        except Exception as e:
            if self.failed.get(key) != str(e):
                log.exception("nvmf-rdma: cannot listen on %s:%d: %s", addr, port, e)
            self.failed[key] = str(e)

    # -- RDMA CM events ------------------------------------------------------------
    def handle_event(self, lst: Any, ev: Any) -> None:
        import pyverbs.cm_enums as ce

        from .rdma_verbs import event_cm_id

        et = ev.event_type
        if et == ce.RDMA_CM_EVENT_CONNECT_REQUEST:
            return self._connect_request(lst, ev)
        conn = self.by_cm.get(event_cm_id(ev))
        ev.close()  # ack before anything may destroy the id
        if conn is not None:
            conn.cm_event(et)

    def _connect_request(self, lst: Any, ev: Any) -> None:
        import pyverbs.cmid as cm

        from .rdma_verbs import RdmaConn

        ctx = lst.ctx
        target = self.target(ctx)
        opts = target.opts_for("RDMA")
        rs = getattr(target, "rdma_stats", None)
        if rs is None:
            rs = {"connect_requests": 0, "rejected": 0}
            target.rdma_stats = rs  # type: ignore[attr-defined]  # read by rdma.poll_group_stats
        rs["connect_requests"] += 1
        pdata = ev.private_data
        # the new id; a bare listen_id keeps pyverbs from sharing (and later
        # clearing) the listener's context and PD objects
        cmid = cm.CMID(creator=ev, listen_id=cm.CMID())
        ev.close()
        sts = 0
        try:
            creq = R.parse_connect(pdata)
            depth = R.check_connect(
                creq, opts.max_queue_depth, opts.max_aq_depth, opts.max_io_qpairs_per_ctrlr
            )
            cap = int(opts.raw.get("max_connections_per_reactor", 1024))
            if sum(1 for q in target.qpairs if q.transport is RDMA) >= cap:
                raise R.CmError(R.REJ_NO_RESOURCES, "max_connections_per_reactor reached")
            conn = RdmaConn(lst.dev, cmid, target, creq, depth, lst.key)
        except R.CmError as e:
            sts = e.sts
            log.warning("nvmf-rdma: connection refused (%s): %s", R.REJECT_NAMES.get(sts), e)
        except Exception as e:
            sts = R.REJ_NO_RESOURCES
            log.exception("nvmf-rdma: cannot set up a queue pair: %s", e)
        if sts:
            rs["rejected"] += 1
            rej = R.pack_reject(sts)
            try:
                cmid.reject(rej, len(rej))
            finally:
                cmid.close()
            return
        self.by_cm[conn.cm_ptr] = conn
        acc = R.pack_accept(depth)
        param = cm.ConnParam(
            resources=R.MAX_RD_ATOMIC, depth=R.MAX_RD_ATOMIC, qp_num=conn.qpn, data_len=len(acc)
        )
        param.set_private_data(acc)
        try:
            cmid.accept(param)
        except Exception as e:
            log.warning("nvmf-rdma: accept failed: %s", e)
            conn.qp.close("accept failed")

    def on_event(self, ctx: ReactorContext, op: str, args: dict[str, Any]) -> Any:
        if op.startswith("nvmf."):
            return target_for(ctx).on_event(op, args)
        return None

    def shutdown(self, ctx: ReactorContext) -> None:
        rid = id(ctx)
        for conn in [c for c in self.by_cm.values() if c.dev.rctx is ctx]:
            if not conn.qp.closed:
                conn.qp.close("target shutting down")
            conn.destroy()
        for (r, key), lst in list(self.listeners.items()):
            if r == rid:
                lst.close()
                del self.listeners[(r, key)]
        for (r, name), d in list(self.devices.items()):
            if r == rid:
                d.close()
                del self.devices[(r, name)]
        t = drop_target(ctx)
        if t is not None:
            t.stopping = True
            t.shutdown()


DRIVER = NvmfRdmaDriver()
register_driver(DRIVER)
