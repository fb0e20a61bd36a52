"""The transport-neutral NVMe-oF queue pair: what every transport's queue shares.

Owns the NVMe-level state of one queue (qid, SQ size, SQHD, the controller
and subsystem after Connect, counters, write-through) and the command path
the core runs for every transport: admission (``submit``: queue-depth
accounting, CID uniqueness, SQHD advance), routing (``execute``: fused
Compare-and-Write pairing, then router.dispatch to fabrics/admin/io),
completion (``complete`` / ``complete_with_data``: error log, buffer release,
then the transport's response), pool buffers (``acquire``), containment of
unexpected exceptions (``crash``) and teardown (``close``).

A transport subclasses `QueuePair` and implements the hooks marked
"transport hook" below (SPDK's req_complete / req_free / qpair_fini,
nvmet's queue_response / free). Call sequence for one command::

    transport receives a capsule -> req = Request(qp, sqe)
    qp.submit(req)            # False: refused (queue full -> qp.queue_full(),
                              # CID in use -> CMDID_CONFLICT sent); stop
    (transport checks its data descriptor: in-capsule data -> req.data;
     host-to-controller data elsewhere -> qp.start_h2c(req), which takes pool
     buffers then calls qp.fetch_data(req); when the data is in, the
     transport sets req.data / req.iov and calls qp.execute(req))
    qp.execute(req)           # the core runs the command
    ... req.complete(status) / req.complete_with_data(data)
        -> qp.send_data(req, data, status, result)   (controller-to-host data)
        -> qp.release_transfer(req)                   (transport resources)
        -> qp.send_response(req, status, result)      (unless send_data said
                                                       the data implied it)
        -> qp.wake()                                  (output appeared)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ...control.hostlog import HostLog
from ...shm.iobuf import IoBufs, IoVec
from ...shm.trace import REQ_DONE, TRACE, new_object_id, transport_group
from . import spec
from .request import DataLike, Request

if TYPE_CHECKING:
    from .core import Controller, NvmfTarget, Subsystem, TransportOpts
    from .transport import NvmfTransportOps

log = logging.getLogger(__name__)


# (router.dispatch, io.fused_gate), imported on first use: the router
# imports admin/fabrics/io, which import core, which imports this module
_ROUTE: list[Callable[[Request], None]] = []


def _load_route() -> list[Callable[[Request], None]]:
    from .io import fused_gate
    from .router import dispatch

    _ROUTE[:] = [dispatch, fused_gate]
    return _ROUTE


class Counters:
    """Per-queue / per-controller I/O counters (SMART data units / host commands)."""

    __slots__ = ("read_bytes", "write_bytes", "read_cmds", "write_cmds")

    def __init__(self) -> None:
        self.read_bytes = 0
        self.write_bytes = 0
        self.read_cmds = 0
        self.write_cmds = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class QueuePair:
    """NVMe queue bookkeeping and the command path shared by every transport."""

    def __init__(
        self,
        target: NvmfTarget,
        transport: NvmfTransportOps,
        listener: str,
        peer: str,
        adrfam: str = "",
    ) -> None:
        self.target = target
        self.transport = transport
        self.opts: TransportOpts = target.opts_for(transport.trtype)
        self.listener = listener  # the listener key (transport.listen)
        self.peer = peer  # "ADDR:PORT" (or a transport-specific address)
        self.adrfam = adrfam or ("IPv6" if ":" in peer.rpartition(":")[0] else "IPv4")
        self.qid: int = -1  # unknown until Connect
        self.sqsize = 0  # 0-based, from Connect
        self.sqhd = 0
        self.sq_flow_disabled = False
        self.ctrl: Controller | None = None
        self.subsys: Subsystem | None = None
        # (host NQN, subsystem NQN) of the TLS PSK identity (NVMe/TCP over TLS)
        self.tls_peer: tuple[str, str] | None = None
        self.cntlid = 0
        self.hostnqn = ""
        self.resv_id = ""  # host identifier for reservations (hex), from Connect
        self.preempted: set[Request] = set()  # to abort when they start: preempt and abort
        self.counters = Counters()
        self.closed = False
        self.crashed = False
        self.close_reason = ""
        self.connect_pending = False
        self.write_through = False  # VWC = 0 on the controller: every write is FUA
        self.auth: Any = None  # auth.TargetAuth when the host must authenticate (DH-HMAC-CHAP)
        self.auth_timer: Any = None
        self.reqs: dict[int, Request] = {}  # CID -> request in flight
        self.fused_first: Request | None = None
        self.iobufs: IoBufs | None = getattr(target.ctx, "iobufs", None)
        self.hlog = HostLog(log, f"nvmf-{transport.trtype.lower()} {peer}")
        # tracepoints: this transport's group bit and tpoint base, our object id
        self.tp_bit, self.tp_base = transport_group(transport.trtype)
        self.tp_id = new_object_id()
        target.qpairs.add(self)

    # ================================================================ transport hooks
    def send_response(self, req: Request, status: int, result: int) -> None:
        """Transport hook: queue the completion (CQE with ``self.sqhd``,
        ``max(self.qid, 0)``, ``req.cid``, ``status``, ``result``)."""
        raise NotImplementedError

    def send_data(self, req: Request, data: memoryview, status: int, result: int) -> bool:
        """Transport hook: queue ``data`` (already cut to ``req.sgl_len``) to
        the host. Returns True when the transport conveyed the successful
        completion with the data (TCP C2HData SUCCESS): no response follows."""
        raise NotImplementedError

    def fetch_data(self, req: Request) -> None:
        """Transport hook: get ``req.sgl_len`` bytes of host data into
        ``req.iov`` (pool buffers, when the reactor has a pool) or a bounded
        buffer (TCP: R2T + H2CData; RDMA: RDMA READ), then set ``req.data``
        (or leave a multi-chunk ``req.iov``) and call ``self.execute(req)``,
        or complete ``req`` with an error."""
        raise NotImplementedError

    def release_transfer(self, req: Request) -> None:
        """Transport hook: free the transport's per-request resources (transfer
        tags, bounce buffers); pool buffers are freed by the core. Called
        once the request is over, when it has ``req.buf``, a ``req.ttag`` or
        ``req.tp`` (nothing to do otherwise: the fast path skips the call)."""

    def pending_transfers(self) -> Iterable[Request]:
        """Transport hook: requests still waiting for host data (freed at close)."""
        return ()

    def hold_tx(self, iov: IoVec) -> None:
        """Transport hook: ``iov``'s bytes were just handed to ``send_data``;
        keep the buffers until they are on the wire, then release them to
        ``self.iobufs``. Default: the transport copied them, release now."""
        if self.iobufs is not None:
            self.iobufs.release(iov)

    def queue_full(self, req: Request) -> None:
        """Transport hook: the host sent more commands than the queue holds
        (a protocol error: TCP terminates the connection)."""
        self.abort(f"more than {self.queue_limit()} commands outstanding")

    def abort(self, reason: str) -> None:
        """Transport hook: fatal transport error: tell the host if the
        transport can (TCP C2HTermReq) and close the connection."""
        self.close(reason)

    def transport_close(self) -> None:
        """Transport hook, called once from ``close``: stop timers, arrange
        for the connection to close once queued output is out."""

    def wake(self) -> None:
        """Transport hook: output was queued outside the transport's own
        receive path (asynchronous completion): flush it soon."""

    # ================================================================ the core
    def queue_limit(self) -> int:
        if self.qid < 0:
            return self.opts.max_aq_depth
        return self.sqsize + 1

    def submit(self, req: Request) -> bool:
        """Admit a received command: queue depth, SQHD, CID uniqueness.
        False when it was not admitted (nothing more to do for it)."""
        if len(self.reqs) >= self.queue_limit():
            req.done = True
            self.queue_full(req)
            return False
        if self.qid >= 0:
            self.sqhd = (self.sqhd + 1) % (self.sqsize + 1)
        if req.cid in self.reqs:
            # answer without touching the command already using this CID
            req.done = True
            self.send_response(req, spec.status_field(0, spec.SC_CMDID_CONFLICT, dnr=True), 0)
            return False
        self.reqs[req.cid] = req
        return True

    def execute(self, req: Request) -> None:
        """Run a command whose data (if any) is here."""
        route = _ROUTE or _load_route()
        if self.fused_first is not None or req.sqe.fuse:
            route[1](req)  # io.fused_gate: pairs Compare + Write, then dispatches
            return
        route[0](req)  # router.dispatch

    def start_h2c(self, req: Request) -> None:
        """Host-to-controller data outside the capsule: pool buffers first
        (FIFO when the pool is empty), then the transport's ``fetch_data``."""
        if self.iobufs is None:
            return self.fetch_data(req)  # no pool on this reactor: bounded buffers
        try:
            self.acquire(req, req.sgl_len, req.got_iov)
        except ValueError:  # the whole pool could never hold it
            return self.complete(req, spec.ST_DATA_SGL_LENGTH_INVALID)

    def acquire(self, req: Request, nbytes: int, fn: Callable[[IoVec], None]) -> None:
        """Pool buffers for ``req`` (``req.iov``), then ``fn(iov)``: now, or
        first come first served once buffers are released (possibly from
        another connection's completion). A grant for a request that finished
        or a closed connection goes straight back; an exception in ``fn`` is
        contained to this connection. Raises ValueError when the whole pool
        could never hold ``nbytes``."""
        iob = self.iobufs
        assert iob is not None

        def grant(iov: IoVec) -> None:
            req.wait = None
            if req.done or self.closed:
                return iob.release(iov)
            req.iov = iov
            try:
                fn(iov)
            except Exception as e:
                if req.iov is iov:
                    req.iov = None
                    iob.release(iov)
                self.crash(e, "a pool buffer grant")

        w = iob.acquire(nbytes, grant)
        if w is not None:
            req.wait = w
            self.target.stats["iobuf_waits"] += 1

    # -- completion ----------------------------------------------------------------
    def finish(self, req: Request, status: int) -> bool:
        """The request is over: drop it, free its buffers, log an error.
        False when nothing is to be sent (done already, or the queue closed)."""
        if req.done:
            return False
        req.done = True
        reqs = self.reqs
        if reqs.get(req.cid) is req:
            del reqs[req.cid]
        # also after close: a bdev finished with the buffers (the usual
        # request holds none: only its data view is dropped, without the call)
        if (
            req.iov is None
            and req.wait is None
            and req.buf is None
            and not req.ttag
            and req.tp is None
        ):
            req.data = None
        else:
            self.release(req)
        if self.closed:
            return False
        if status and self.ctrl is not None:
            self.ctrl.record_error(
                max(self.qid, 0), req.cid, status, req.nsid, trtype=self.transport.trtype_code
            )
        return True

    def release(self, req: Request) -> None:
        req.data = None
        if req.iov is not None or req.wait is not None:
            iob = self.iobufs
            assert iob is not None
            if req.wait is not None:
                iob.cancel(req.wait)
                req.wait = None
            if req.iov is not None:
                iob.release(req.iov)
                req.iov = None
        if req.buf is not None or req.ttag or req.tp is not None:
            self.release_transfer(req)

    def complete(self, req: Request, status: int = 0, result: int = 0) -> None:
        if TRACE.mask & self.tp_bit:
            TRACE.rec(self.tp_base | REQ_DONE, self.tp_id, req.cid, 0, 0, status)
        try:
            if not self.finish(req, status):
                return
            self.send_response(req, status, result)
            self.wake()
        except Exception as e:
            self.crash(e, "a completion")

    def complete_with_data(
        self, req: Request, data: DataLike, status: int = 0, result: int = 0
    ) -> None:
        if TRACE.mask & self.tp_bit:
            TRACE.rec(self.tp_base | REQ_DONE, self.tp_id, req.cid, 0, 0, status)
        try:
            if req.done:
                return
            if self.closed:
                self.finish(req, status)
                return
            mv = data if type(data) is memoryview else memoryview(data)
            if len(mv) > req.sgl_len:
                mv = mv[: req.sgl_len]
            implied = self.send_data(req, mv, status, result)
            if not self.finish(req, status):
                return
            if not implied:
                self.send_response(req, status, result)
            self.wake()
        except Exception as e:
            self.crash(e, "a completion with data")

    # -- containment and teardown ---------------------------------------------------
    def crash(self, exc: BaseException, what: str) -> None:
        """Containment: an unexpected exception while handling ``what`` closes
        this connection only (requests and buffers freed), logs the traceback
        once and counts it (nvmf_get_stats)."""
        if self.crashed:
            return
        self.crashed = True
        self.target.stats["qpair_exceptions"] += 1
        self.hlog.event(
            logging.ERROR,
            "internal error while handling %s (%s: %s): closing the connection",
            what,
            type(exc).__name__,
            exc,
            exc_info=True,
        )
        try:
            self.close_reason = self.close_reason or f"internal error: {exc!r}"
            self.abort(self.close_reason)
            self.close(self.close_reason)
        except Exception:  # never let teardown itself escape
            log.exception("nvmf %s: teardown after an internal error failed", self.peer)
            self.closed = True

    def close(self, reason: str = "") -> None:
        """Stop the queue pair: requests waiting for data or pool buffers are
        freed now; one a bdev (or the supervisor) is working on frees its
        buffers when it completes, so no buffer is reused under an in-flight
        write. Then the transport closes its connection (``transport_close``)."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = self.close_reason or reason
        if self.auth_timer is not None:
            self.auth_timer.cancel()
            self.auth_timer = None
        idle = {id(r) for r in self.pending_transfers()}
        if self.fused_first is not None:
            idle.add(id(self.fused_first))
            self.fused_first = None
        for req in list(self.reqs.values()):
            if id(req) in idle or req.wait is not None or req.iov is None:
                req.done = True
                self.release(req)
        self.reqs.clear()
        self.transport_close()
        self.hlog.close()
        self.target.qpair_closed(self)

    # -- queries ------------------------------------------------------------------------
    def describe(self) -> dict[str, object]:
        """``nvmf_subsystem_get_qpairs`` entry (SPDK's shape)."""
        host, _, port = self.peer.rpartition(":")
        lhost, _, lport = self.listener.rpartition(":")
        tt = self.transport.trtype
        if lhost.startswith(tt + ":"):  # non-TCP keys carry their trtype
            lhost = lhost[len(tt) + 1 :]
        fam = self.adrfam
        d: dict[str, object] = {
            "cntlid": self.cntlid,
            "qid": self.qid,
            "state": "active" if not self.closed else "deleting",
            "thread": f"nvmf_tgt_poll_group_{self.target.ctx.reactor_id}",
            "hostnqn": self.hostnqn,
            "listen_address": {"trtype": tt, "adrfam": fam, "traddr": lhost, "trsvcid": lport},
            "peer_address": {"trtype": tt, "adrfam": fam, "traddr": host, "trsvcid": port},
        }
        if self.auth is not None:
            d["auth"] = self.auth.describe()
        return d

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.peer} qid={self.qid} cntlid={self.cntlid}>"
