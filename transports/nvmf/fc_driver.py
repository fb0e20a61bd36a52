"""Reactor side of NVMe over FC: LLD upcalls <-> FC-NVMe state <-> the NVMe-oF core.

`FcReactor` (one per reactor) implements the `FcUpcalls` an LLD calls
(transports/fc/lld.py). It keeps one `FcNexus` (fc_assoc.py) per I_T nexus
(host port, target port) and one `FcQpair` (a core `QueuePair`) per FC-NVMe
connection:

* LS requests go to the nexus (Create Association / Create I/O Connection
  create connections and their queue pairs; Disconnect closes them), the
  answer (LS_ACC / LS_RJT) goes back through the LLD;
* a CMD IU opens an exchange on its connection and becomes a core
  `Request`: the data length of the IU must match the SQE's transport SGL
  and the direction its opcode; write data is pulled with
  ``LldNexus.recv_data`` into pool buffers (``ctx.iobufs``, bounded by
  ``max_io_size`` before anything is allocated), read data goes out with
  ``send_data``; the completion becomes the good response or an ERSP;
* ABTS drops the exchange (its command completes into nothing);
* a path that goes down closes the connections created on it; the admin
  connection closing ends its association (every queue of it).

The loopback LLD's paths of one nexus are routed to one reactor (the "home"
reactor of the (host, target) port pair) so that they share the nexus.
`NvmfFcDriver` is the `TransportDriver` "nvmf-fc" that takes the accepted
loopback sockets.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from ..base import register_driver
from ..context import ReactorContext
from ..fc import loopback
from ..fc.addr import FcName
from ..fc.lld import LLDS, Lld, LldNexus
from . import fc_assoc as A
from . import fc_iu as IU
from . import fc_ls as LS
from . import spec
from .core import NvmfTarget, drop_target, target_for
from .fc import FC, TRSVCID, listener_key
from .qpair import QueuePair
from .request import XFER_H2C, Request

log = logging.getLogger(__name__)

_CQE_PACK = spec.CQE.pack
_LOOPBACK_MAX_PAYLOAD = 1 << 17


def _bump(target: NvmfTarget, key: str) -> None:
    target.stats[key] = target.stats.get(key, 0) + 1


class FcQpair(QueuePair):
    """The core's queue pair of one FC-NVMe connection."""

    def __init__(self, fr: FcReactor, conn: A.Connection, path: LldNexus, key: str) -> None:
        super().__init__(fr.target, FC, key, path.remote.traddr, "FC")
        self.fr = fr
        self.conn = conn
        self.path = path  # the path the connection was created on
        self.born = time.monotonic()  # the Connect must come within connect_timeout
        conn.qpair = self

    # ------------------------------------------------------------ hooks
    def send_response(self, req: Request, status: int, result: int) -> None:
        x = req.tp
        if not isinstance(x, A.Exchange) or x.done:
            return  # aborted meanwhile: nothing to answer
        cqe = _CQE_PACK(result, self.sqhd, max(self.qid, 0), req.cid, status)
        force = req.opcode == spec.FABRICS_OPCODE or bool(req.sqe.fuse)
        xfrd = x.sent if x.cmd.read else x.received
        iu = self.conn.response(x, cqe, status, xfrd, force)
        self.fr.xchg_done(x)
        x.path.xmt_rsp(x.xid, iu)

    def send_data(self, req: Request, data: memoryview, status: int, result: int) -> bool:
        x = req.tp
        if not isinstance(x, A.Exchange) or x.done:
            return False
        if not x.cmd.read or len(data) > x.cmd.data_len:
            return False  # the response says what moved (xfrd_len)
        x.to(A.XState.DATA_IN)
        # copied: the LLD may still hold the bytes after the core frees the buffer
        x.path.send_data(x.xid, 0, [memoryview(bytes(data))])
        x.sent = len(data)
        return False

    def fetch_data(self, req: Request) -> None:
        x = req.tp
        assert isinstance(x, A.Exchange)
        if req.iov is None:
            req.buf = bytearray(req.sgl_len)  # bounded by max_io_size (cmd_iu)
        x.to(A.XState.DATA_OUT)
        x.chunk = 0
        if self.opts.h2c_data_timeout > 0:
            x.deadline = time.monotonic() + self.opts.h2c_data_timeout
            self.fr.arm_timer()
        self._next_chunk(req, x)

    def _views(self, req: Request) -> list[memoryview]:
        if req.iov is not None:
            return req.iov.views
        assert req.buf is not None
        return [memoryview(req.buf)]

    def _next_chunk(self, req: Request, x: A.Exchange) -> None:
        v = self._views(req)[x.chunk]
        x.path.recv_data(x.xid, v, x.received)

    def data_done(self, req: Request, x: A.Exchange, ok: bool) -> None:
        if not ok:
            return self.complete(req, spec.ST_DATA_TRANSFER_ERROR)
        views = self._views(req)
        x.accept_data(x.received, len(views[x.chunk]))
        x.chunk += 1
        if x.chunk < len(views):
            return self._next_chunk(req, x)
        if len(views) == 1:
            req.data = views[0][: req.sgl_len]
        elif req.opcode != spec.IO_WRITE or self.qid <= 0:
            req.data = memoryview(b"".join(views))[: req.sgl_len]
        req.xfer_off = req.sgl_len
        x.to(A.XState.EXECUTING)
        self.execute(req)

    def release_transfer(self, req: Request) -> None:
        req.buf = None

    def pending_transfers(self) -> list[Request]:
        return [
            x.request  # type: ignore[misc]
            for x in self.conn.exchanges.values()
            if x.state is A.XState.DATA_OUT and isinstance(x.request, Request)
        ]

    def transport_close(self) -> None:
        self.fr.connection_closed(self)

    def describe(self) -> dict[str, object]:
        d = super().describe()
        local = self.listener[3:].rpartition(":")[0] if self.listener.startswith("FC:") else ""
        d["listen_address"] = {"trtype": "FC", "adrfam": "FC", "traddr": local, "trsvcid": TRSVCID}
        d["peer_address"] = {
            "trtype": "FC",
            "adrfam": "FC",
            "traddr": self.peer,
            "trsvcid": TRSVCID,
        }
        d["fc"] = {
            "association_id": f"{self.conn.assoc.assoc_id:#x}",
            "connection_id": f"{self.conn.conn_id:#x}",
            "open_exchanges": len(self.conn.exchanges),
        }
        return d


class _NexusState:
    __slots__ = ("nexus", "paths", "key")

    def __init__(self, nexus: A.FcNexus, key: str) -> None:
        self.nexus = nexus
        self.paths: set[int] = set()
        self.key = key


class FcReactor:
    """One reactor's FC-NVMe state; the `FcUpcalls` of its LLD paths."""

    def __init__(self, ctx: ReactorContext) -> None:
        self.ctx = ctx
        self.nexuses: dict[tuple[FcName, FcName], _NexusState] = {}
        # (id(path), xid) -> open exchange
        self.xchgs: dict[tuple[int, int], A.Exchange] = {}
        self.paths: dict[int, LldNexus] = {}
        self.unlogged: set[loopback.LoopbackPath] = set()  # accepted, no LOGIN yet
        self.timer: Any = None
        self.lld: Lld | None = None  # started on this reactor (on_config)

    # ------------------------------------------------------------ timeouts
    def arm_timer(self) -> None:
        if self.timer is None:
            self.timer = self.ctx.loop.call_every(0.25, self._tick)

    def _tick(self) -> None:
        """Bounds on what a silent host can hold: a path without LOGIN, a
        connection without Connect (connect_timeout_ms), write data that never
        comes after its transfer-ready (h2c_data_timeout_ms: the exchange is
        aborted and its pool buffers freed)."""
        try:
            self._expire(time.monotonic())
        except Exception:
            log.exception("FC timeouts")

    def _expire(self, now: float) -> None:
        opts = self.target.opts_for(FC.trtype)
        ct = opts.connect_timeout
        for p in list(self.unlogged):
            if p.closed or p.upcalls is not None:
                self.unlogged.discard(p)
            elif ct > 0 and now - p.born > ct:
                self.unlogged.discard(p)
                _bump(self.target, "fc_login_timeouts")
                log.warning("FC path: no LOGIN within %g s; closed", ct)
                p.close()
        for st in list(self.nexuses.values()):
            for c in list(st.nexus.conns.values()):
                qp = c.qpair
                if isinstance(qp, FcQpair) and qp.qid < 0 and ct > 0 and now - qp.born > ct:
                    _bump(self.target, "connect_timeouts")
                    qp.close(f"no Connect within {ct:g} s")
        for key, x in list(self.xchgs.items()):
            if x.state is A.XState.DATA_OUT and x.deadline and now > x.deadline:
                self.xchgs.pop(key, None)
                _bump(self.target, "fc_data_timeouts")
                log.warning("FC exchange %#x: no write data within the timeout; aborted", x.xid)
                if id(x.path) in self.paths:
                    x.path.abort(x.xid)
                self._abort_exchange(x)

    @property
    def target(self) -> NvmfTarget:
        return target_for(self.ctx)

    # ------------------------------------------------------------ logins
    def home_reactor(self, host: FcName, port: FcName) -> int:
        n = max(1, int(getattr(self.ctx, "num_reactors", 1)))
        return (host.wwpn ^ port.wwpn ^ (host.wwpn >> 32)) % n

    def port_listened(self, port: FcName) -> bool:
        key = listener_key(port.traddr)
        return any(key in ss.listener_keys for ss in self.target.subsystems.values())

    def on_login(
        self, path: loopback.LoopbackPath, host: FcName, port: FcName, raw: bytes
    ) -> FcReactor | str | None:
        self.target.on_config()
        if not self.port_listened(port):
            return f"no FC-NVMe target port {port.traddr} here"
        home = self.home_reactor(host, port)
        if home != self.ctx.reactor_id:
            path.detach()
            self.ctx.handoff(path.sock, home, FC.proto, listener_key(port.traddr), raw)
            return None
        if not self.nexus_up(path):
            return "login refused"
        return self

    def nexus_up(self, nexus: LldNexus) -> bool:
        key = (nexus.local, nexus.remote)
        st = self.nexuses.get(key)
        if st is None:
            opts = self.target.opts_for(FC.trtype)
            limits = A.NexusLimits(
                max_associations=int(opts.raw.get("max_associations", 64)),
                max_aq_depth=opts.max_aq_depth,
                max_queue_depth=opts.max_queue_depth,
                max_qpairs_per_ctrlr=opts.max_io_qpairs_per_ctrlr + 1,
            )
            lkey = listener_key(nexus.local.traddr)
            st = _NexusState(A.FcNexus(limits, self._subsystem_check(lkey)), lkey)
            self.nexuses[key] = st
        st.paths.add(id(nexus))
        self.paths[id(nexus)] = nexus
        return True

    def _subsystem_check(self, lkey: str) -> A.SubsystemCheck:
        def check(subnqn: str, hostnqn: str) -> tuple[int, int, str] | None:
            ss = self.target.subsystems.get(subnqn)
            if ss is None:
                return (LS.RJT_RC_INV_PARAM, LS.RJT_EXP_INV_SUBNQN, f"no subsystem {subnqn}")
            if not ss.listener_allowed(lkey):
                return (
                    LS.RJT_RC_INV_PARAM,
                    LS.RJT_EXP_INV_SUBNQN,
                    f"subsystem {subnqn} does not listen on {lkey}",
                )
            if not ss.host_allowed(hostnqn):
                return (LS.RJT_RC_INV_HOST, LS.RJT_EXP_INV_HOSTNQN, f"host {hostnqn} not allowed")
            return None

        return check

    def nexus_down(self, nexus: LldNexus) -> None:
        self.paths.pop(id(nexus), None)
        st = self.nexuses.get((nexus.local, nexus.remote))
        # the exchanges of this path are gone with it
        for k in [k for k in self.xchgs if k[0] == id(nexus)]:
            x = self.xchgs.pop(k)
            self._abort_exchange(x)
        if st is None:
            return
        st.paths.discard(id(nexus))
        # the connections created on this path lose their queue pairs
        for c in list(st.nexus.conns.values()):
            qp = c.qpair
            if isinstance(qp, FcQpair) and qp.path is nexus:
                qp.close("FC path down")
        if not st.paths:  # the host port logged out: every association ends
            for c in st.nexus.drop_all():
                if isinstance(c.qpair, FcQpair):
                    c.qpair.close("FC host port logged out")
            self.nexuses.pop((nexus.local, nexus.remote), None)

    # ------------------------------------------------------------ link services
    def ls_request(self, nexus: LldNexus, xid: int, payload: memoryview) -> None:
        st = self.nexuses.get((nexus.local, nexus.remote))
        if st is None:
            nexus.xmt_ls_rsp(xid, LS.encode_reject(0, LS.RJT_RC_UNAB, LS.RJT_EXP_NONE))
            return
        self.target.on_config()
        out = st.nexus.handle_ls(payload)
        if out.rejected is not None:
            _bump(self.target, "fc_ls_rejects")
            log.info("FC %s -> %s: %s", nexus.remote, nexus.local, out.rejected)
        if out.created is not None:
            FcQpair(self, out.created, nexus, st.key)
            self.arm_timer()
        nexus.xmt_ls_rsp(xid, out.response)
        for c in out.removed:
            if isinstance(c.qpair, FcQpair):
                c.qpair.close("FC Disconnect LS")

    # ------------------------------------------------------------ commands
    def cmd_iu(self, nexus: LldNexus, xid: int, iu: memoryview) -> None:
        st = self.nexuses.get((nexus.local, nexus.remote))
        try:
            cmd = IU.decode_cmd_iu(iu)
        except IU.IuError as e:
            log.warning("FC %s: %s; exchange %#x aborted", nexus.remote, e, xid)
            _bump(self.target, "fc_aborted_exchanges")
            return nexus.abort(xid)
        conn = st.nexus.conn(cmd.conn_id) if st is not None else None
        qp = conn.qpair if conn is not None else None
        if conn is None or not isinstance(qp, FcQpair) or qp.closed:
            log.warning("FC %s: CMD IU for unknown connection %#x", nexus.remote, cmd.conn_id)
            _bump(self.target, "fc_aborted_exchanges")
            return nexus.abort(xid)
        key = (id(nexus), xid)
        old = self.xchgs.pop(key, None)
        if old is not None:
            # a second CMD IU on an open exchange: the exchange is broken, abort it
            log.warning("FC %s: exchange %#x opened twice; aborted", nexus.remote, xid)
            _bump(self.target, "fc_aborted_exchanges")
            self._abort_exchange(old)
            return nexus.abort(xid)
        try:
            x = conn.open_exchange(xid, cmd)
        except A.ExchangeError as e:
            log.warning("FC %s: %s", nexus.remote, e)
            _bump(self.target, "fc_aborted_exchanges")
            return nexus.abort(xid)
        x.path = nexus
        self.xchgs[key] = x
        try:
            self._start(qp, x, cmd)
        except Exception as e:
            qp.crash(e, "a CMD IU")

    def _start(self, qp: FcQpair, x: A.Exchange, cmd: IU.CmdIu) -> None:
        sqe = spec.unpack_sqe(cmd.sqe)
        req = Request(qp, sqe)
        req.tp = x
        x.request = req
        if not qp.submit(req):
            return
        op = sqe.opcode
        if op == spec.FABRICS_OPCODE:
            op = cmd.sqe[4]  # fctype: its low bits give the direction
            if op == spec.FCTYPE_CONNECT:
                # the Connect must name the queue the link service created
                qid = int.from_bytes(cmd.sqe[42:44], "little")
                if qid != qp.conn.qid:
                    return qp.complete(req, spec.ST_CONNECT_INVALID_PARAM, 42)  # IPO: SQE byte 42
        req.xfer = op & 0x3
        if sqe.psdt != spec.PSDT_SGL:
            return qp.complete(req, spec.ST_INVALID_FIELD)
        sgl = spec.unpack_sgl(sqe.dptr)
        ident = (sgl.type << 4) | sgl.subtype
        if cmd.data_len == 0 and sgl.length == 0:
            return qp.execute(req)
        if ident != spec.SGL_TYPE_TRANSPORT:
            return qp.complete(req, spec.ST_SGL_INVALID_TYPE)
        if sgl.length != cmd.data_len:
            return qp.complete(req, spec.ST_DATA_SGL_LENGTH_INVALID)
        if sgl.length > qp.opts.max_io_size:  # bounded before any buffer is taken
            return qp.complete(req, spec.ST_DATA_SGL_LENGTH_INVALID)
        want_write = bool(req.xfer & XFER_H2C)
        if want_write != cmd.write or (not want_write and req.xfer and not cmd.read):
            return qp.complete(req, spec.ST_INVALID_FIELD)
        req.sgl_len = sgl.length
        if want_write:
            return qp.start_h2c(req)
        x.to(A.XState.EXECUTING)
        qp.execute(req)

    def data_done(self, nexus: LldNexus, xid: int, ok: bool) -> None:
        x = self.xchgs.get((id(nexus), xid))
        if x is None or not isinstance(x.request, Request):
            return
        qp = x.conn.qpair
        assert isinstance(qp, FcQpair)
        if not ok:  # the LLD aborted the exchange (bad data phase): no response follows
            self.xchgs.pop((id(nexus), xid), None)
            _bump(self.target, "fc_aborted_exchanges")
            return self._abort_exchange(x)
        try:
            qp.data_done(x.request, x, ok)
        except A.ExchangeError as e:
            log.warning("FC %s: %s", nexus.remote, e)
            qp.complete(x.request, spec.ST_DATA_TRANSFER_ERROR)
        except Exception as e:
            qp.crash(e, "FC write data")

    def abts(self, nexus: LldNexus, xid: int) -> None:
        x = self.xchgs.pop((id(nexus), xid), None)
        if x is not None:
            _bump(self.target, "fc_aborted_exchanges")
            self._abort_exchange(x)

    def _abort_exchange(self, x: A.Exchange) -> None:
        waiting = x.state in (A.XState.NEW, A.XState.DATA_OUT)
        if not x.done:
            x.state = A.XState.ABORTED
        x.conn.exchanges.pop(x.xid, None)
        req = x.request
        qp = x.conn.qpair
        if waiting and isinstance(req, Request) and isinstance(qp, FcQpair):
            qp.complete(req, spec.ST_ABORT_REQ)  # frees its buffers; nothing is sent

    def xchg_done(self, x: A.Exchange) -> None:
        self.xchgs.pop((id(x.path), x.xid), None)

    # ------------------------------------------------------------ teardown
    def connection_closed(self, qp: FcQpair) -> None:
        conn = qp.conn
        for x in list(conn.exchanges.values()):
            self.xchgs.pop((id(x.path), x.xid), None)
            if not x.done and x.path is not None:
                p = x.path
                if id(p) in self.paths:
                    p.abort(x.xid)
        st = self.nexuses.get((qp.path.local, qp.path.remote))
        assoc = conn.assoc
        if st is not None:
            st.nexus.drop_connection(conn)
            if conn.qid == 0 and assoc.assoc_id in st.nexus.assocs:
                # the admin queue is gone: so is the association
                for c in st.nexus.drop_association(assoc):
                    if isinstance(c.qpair, FcQpair):
                        c.qpair.close("FC association ended")

    def close_all(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for p in [*self.paths.values(), *self.unlogged]:
            close = getattr(p, "close", None)
            if close is not None:
                close()


class NvmfFcDriver:
    proto = FC.proto

    def __init__(self) -> None:
        self.reactors: dict[int, FcReactor] = {}

    def reactor(self, ctx: ReactorContext) -> FcReactor:
        fr = self.reactors.get(id(ctx))
        if fr is None or fr.ctx is not ctx:
            fr = FcReactor(ctx)
            self.reactors[id(ctx)] = fr
        return fr

    def accept(
        self, ctx: ReactorContext, sock: socket.socket, listener: str, preread: bytes = b""
    ) -> None:
        fr = self.reactor(ctx)
        opts = fr.target.opts_for(FC.trtype)
        if len(fr.paths) + len(fr.unlogged) >= opts.max_connections:
            _bump(fr.target, "fc_refused_paths")
            sock.close()
            return
        p = loopback.LoopbackPath(
            ctx.loop,
            sock,
            fr.on_login,
            max(_LOOPBACK_MAX_PAYLOAD, opts.max_io_size),
            preread,
            int(opts.raw.get("max_unsent_bytes", 4 << 20)),
        )
        if not p.closed and p.upcalls is None:
            fr.unlogged.add(p)
            fr.arm_timer()

    def on_config(self, ctx: ReactorContext) -> None:
        t = target_for(ctx)
        t.on_config()
        conf = ((getattr(ctx, "nvmf_config", None) or {}).get("transports") or {}).get(FC.trtype)
        fr = self.reactor(ctx)
        if conf is not None and fr.lld is None:
            lld = LLDS.get(str(conf.get("lld", loopback.NAME)))
            if lld is None:
                log.error("FC: low-level driver %r is not loaded here", conf.get("lld"))
                return
            fr.lld = lld
            lld.reactor_start(ctx, fr)

    def on_event(self, ctx: ReactorContext, op: str, args: dict[str, Any]) -> Any:
        return target_for(ctx).on_event(op, args)

    def shutdown(self, ctx: ReactorContext) -> None:
        fr = self.reactors.pop(id(ctx), None)
        t = drop_target(ctx)
        if t is not None:
            t.stopping = True
        if fr is not None:
            if fr.lld is not None:
                fr.lld.reactor_stop(ctx)
            fr.close_all()


register_driver(NvmfFcDriver())
