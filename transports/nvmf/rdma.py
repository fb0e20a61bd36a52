"""NVMe/RDMA target queue pair: the sans-I/O state machine of one RC queue pair.

Owns: command capsules received into pre-posted buffers (SQE + in-capsule
data at offset 0, ICDOFF 0), the SGL of each command (in-capsule data up to
``in_capsule_data_size``; one keyed SGL data block: RDMA READ of the host's
buffer before a host-to-controller command runs, RDMA WRITE into it before
the response of a controller-to-host command), the response capsule (CQE
with SQHD) sent with SEND, and the queue depth the host asked for in the RDMA
CM private data (HSQSIZE + 1 receive buffers; a host that sends more
commands than that is disconnected).

It never touches pyverbs: every verb goes through the `Verbs` object the
glue (rdma_verbs.py) or a test passes in, and completions come back as
method calls (``capsule``, ``read_done``, ``send_done``). Data the host
sends by RDMA READ lands in buffers of the reactor's shared pool
(``ctx.iobufs``, registered once per reactor); read data goes out by RDMA
WRITE straight from where the bdev returned it (the malloc bdev's shared
memory, registered once per reactor), or, when that memory is not
registered (admin payloads built in Python), from a pool buffer it is
copied into. Buffers are released only when the SEND that ends the command
completed, so no RDMA operation ever reads or writes a buffer in reuse.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ...bdevs.base import IoStatus
from ...control.hostlog import HostLog
from ...shm.iobuf import CHUNK, IoBufs, IoVec
from . import io, spec
from . import rdma_proto as R
from .core import NvmfTarget, QueuePair
from .tcp import XFER_H2C, Request, dispatch

log = logging.getLogger(__name__)


class Verbs(Protocol):
    """What a queue pair asks of the RDMA glue (one RC queue pair)."""

    def registered(self, data: memoryview) -> bool:
        """``data`` lies in memory registered with this queue pair's PD."""

    def post_read(self, req: RdmaRequest, views: list[memoryview], addr: int, key: int) -> None:
        """RDMA READ ``sum(len(views))`` bytes from the host; ``read_done`` follows."""

    def post_response(
        self,
        req: RdmaRequest | None,
        data: memoryview | None,
        addr: int,
        key: int,
        cqe: bytes,
    ) -> None:
        """RDMA WRITE ``data`` to the host (if any), then SEND ``cqe``;
        ``send_done(req)`` follows once the SEND completed (or flushed)."""

    def repost(self, slot: int) -> None:
        """Receive buffer ``slot`` is free again: post it."""

    def disconnect(self) -> None:
        """Tear the connection down (rdma_disconnect; completions flush)."""


class RdmaRequest(Request):
    __slots__ = ("slot", "raddr", "rkey", "xfer_len", "sending")

    def __init__(self, qp: RdmaQpair, sqe: spec.Sqe, slot: int) -> None:
        super().__init__(qp, sqe)  # type: ignore[arg-type]
        self.slot = slot
        self.raddr = 0
        self.rkey = 0
        self.xfer_len = 0
        self.sending = False

    def got_iov(self, iov: IoVec) -> None:  # pool buffers for an RDMA READ
        qp = self.qp
        assert isinstance(qp, RdmaQpair)
        qp._start_read(self, iov)


class RdmaQpair(QueuePair):
    """One NVMe queue over one RC queue pair."""

    trtype = "RDMA"
    sgls = R.SGLS  # Identify SGLS: keyed SGL data blocks, in-capsule offsets

    def __init__(
        self,
        target: NvmfTarget,
        opts: Any,
        verbs: Verbs,
        depth: int,
        listener: str = "",
        peer: str = "",
        cm_qid: int = -1,
    ) -> None:
        super().__init__(target, listener, peer)
        self.opts = opts
        self.verbs = verbs
        self.depth = depth  # receive buffers the host may fill (HSQSIZE + 1)
        self.cm_qid = cm_qid  # QID of the RDMA CM private data
        self.reqs: dict[int, RdmaRequest] = {}
        self.fused_first: Request | None = None
        self.iobufs: IoBufs | None = getattr(target.ctx, "iobufs", None)
        self.hlog = HostLog(log, f"nvmf-rdma {peer}")
        self.want_close = False
        self.close_reason = ""
        self.crashed = False
        self.sends = 0  # SENDs posted and not completed
        self.stats = {"recv": 0, "rdma_read": 0, "rdma_write": 0, "send": 0, "bounce": 0}
        target.qpairs.add(self)

    # --------------------------------------------------------------- input
    def capsule(self, slot: int, buf: memoryview, nbytes: int) -> None:
        """A command capsule of ``nbytes`` arrived in receive buffer ``slot``."""
        try:
            self._capsule(slot, buf, nbytes)
        except Exception as e:
            self.crash(e, "a command capsule")

    def _capsule(self, slot: int, buf: memoryview, nbytes: int) -> None:
        self.stats["recv"] += 1
        if self.closed:
            return
        if nbytes < R.SQE_SIZE:
            self.hlog.event(logging.WARNING, "capsule of %d bytes: disconnecting", nbytes)
            self.verbs.repost(slot)
            return self.close("short capsule")
        if len(self.reqs) >= self.depth:
            self.hlog.event(
                logging.WARNING,
                "more than %d commands outstanding (HSQSIZE): disconnecting",
                self.depth,
            )
            self.verbs.repost(slot)
            return self.close("queue overrun")
        sqe = spec.unpack_sqe(buf, 0)
        if self.qid >= 0:
            self.sqhd = (self.sqhd + 1) % (self.sqsize + 1)
        req = RdmaRequest(self, sqe, slot)
        if sqe.cid in self.reqs:
            # answer without touching the command already using this CID
            req.done = True
            self._respond(req, spec.status_field(0, spec.SC_CMDID_CONFLICT, dnr=True), 0, None)
            return
        self.reqs[sqe.cid] = req
        op = sqe.opcode
        if op == spec.FABRICS_OPCODE:
            op = buf[4]  # fctype: its low bits give the direction
        req.xfer = op & 0x3
        if sqe.psdt != spec.PSDT_SGL:
            return self.complete(req, spec.ST_INVALID_FIELD)
        ident = R.sgl_ident(sqe.dptr)
        if ident == R.SGL_INCAPSULE:
            sgl = spec.unpack_sgl(sqe.dptr)
            have = nbytes - R.SQE_SIZE
            if sgl.length > self.opts.in_capsule_data_size:
                return self.complete(req, spec.ST_DATA_SGL_LENGTH_INVALID)
            if sgl.address > have:
                return self.complete(req, spec.ST_SGL_INVALID_OFFSET)
            if sgl.length > have - sgl.address:
                return self.complete(req, spec.ST_DATA_SGL_LENGTH_INVALID)
            req.sgl_len = sgl.length
            if sgl.length:
                start = R.SQE_SIZE + sgl.address
                req.data = buf[start : start + sgl.length]
                if (
                    self.qid > 0
                    and self.iobufs is not None
                    and sgl.length <= CHUNK
                    and io.async_copying_ns(self, req.nsid)
                ):
                    return self._stage_incapsule(req)
            return self._execute(req)
        if ident in (R.SGL_KEYED_ADDR, R.SGL_KEYED_INVALIDATE):
            k = R.unpack_keyed(sqe.dptr)
            if k.length > self.opts.max_io_size:
                return self.complete(req, spec.ST_DATA_SGL_LENGTH_INVALID)
            req.sgl_len = k.length
            req.raddr, req.rkey = k.address, k.key
            if req.xfer & XFER_H2C and k.length:
                return self._start_h2c(req)
            return self._execute(req)
        sgl = spec.unpack_sgl(sqe.dptr)
        if sgl.length == 0 and ident == 0:
            return self._execute(req)  # an all-zero descriptor: no data
        if sgl.type in (spec.SGL_SEGMENT, spec.SGL_LAST_SEGMENT):
            return self.complete(req, spec.ST_SGL_INVALID_TYPE)  # MSDBD is 1
        return self.complete(req, spec.ST_SGL_INVALID_TYPE)

    def _stage_incapsule(self, req: RdmaRequest) -> None:
        """In-capsule data for an asynchronous bdev moves to a pool buffer so
        the receive buffer goes back to the host at once."""
        view = req.data
        assert view is not None

        def got(iov: IoVec) -> None:
            v = iov.views[0]
            v[: len(view)] = view
            req.data = v[: len(view)]
            self.verbs.repost(req.slot)
            req.slot = -1
            self._execute(req)

        self._acquire(req, len(view), got)

    def _execute(self, req: RdmaRequest) -> None:
        if self.fused_first is not None or req.sqe.fuse:
            io.fused_gate(req)
            return
        dispatch(req)

    def _acquire(self, req: RdmaRequest, nbytes: int, fn: Any) -> None:
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
                self.crash(e, "a pool buffer grant")

        w = iob.acquire(nbytes, grant)
        if w is not None:
            req.wait = w
            self.target.stats["iobuf_waits"] += 1

    def _start_h2c(self, req: RdmaRequest) -> None:
        if self.iobufs is None:
            return self.complete(req, spec.ST_INTERNAL)
        try:
            self._acquire(req, req.sgl_len, req.got_iov)
        except ValueError:  # the whole pool could never hold it
            return self.complete(req, spec.ST_DATA_SGL_LENGTH_INVALID)

    def _start_read(self, req: RdmaRequest, iov: IoVec) -> None:
        views = _cut(iov.views, req.sgl_len)
        self.stats["rdma_read"] += 1
        self.verbs.post_read(req, views, req.raddr, req.rkey)

    def read_done(self, req: RdmaRequest, ok: bool) -> None:
        """The RDMA READ of ``req``'s data completed (``ok``) or failed."""
        try:
            if req.done or self.closed:
                if self.closed:
                    self._release(req)
                return
            if not ok:
                self.complete(req, spec.ST_DATA_TRANSFER_ERROR)
                return self.close("RDMA READ failed")
            iov = req.iov
            assert iov is not None
            if len(iov.views) == 1:
                req.data = iov.views[0][: req.sgl_len]
            elif req.opcode != spec.IO_WRITE or self.qid <= 0:
                req.data = memoryview(b"".join(_cut(iov.views, req.sgl_len)))
            self._execute(req)
        except Exception as e:
            self.crash(e, "an RDMA READ completion")

    # --------------------------------------------------------------- output
    def complete(self, req: Request, status: int = 0, result: int = 0) -> None:
        try:
            assert isinstance(req, RdmaRequest)
            if not self._finish(req, status):
                return
            self._respond(req, status, result, None)
        except Exception as e:
            self.crash(e, "a completion")

    def complete_with_data(
        self, req: Request, data: bytes | bytearray | memoryview, status: int = 0, result: int = 0
    ) -> None:
        try:
            assert isinstance(req, RdmaRequest)
            if req.done:
                return
            if self.closed:
                self._finish(req, status)
                return
            if self.qid <= 0:
                self.target.stats["admin_data_bytes"] += len(data)
            n = min(len(data), req.sgl_len)
            mv = data if isinstance(data, memoryview) else memoryview(data)
            mv = mv[:n]
            if n and not self.verbs.registered(mv):
                return self._bounce(req, mv, status, result)
            if not self._finish(req, status):
                return
            self._respond(req, status, result, mv if n else None)
        except Exception as e:
            self.crash(e, "a completion with data")

    def _bounce(self, req: RdmaRequest, mv: memoryview, status: int, result: int) -> None:
        """Data in unregistered memory (built by admin code): copy it into a
        pool buffer (registered) and write from there."""
        self.stats["bounce"] += 1
        if req.iov is not None:  # reuse the request's own buffers
            return self._bounce_into(req, req.iov, mv, status, result)
        data = bytes(mv)  # bounded by the SGL length (<= MDTS)

        def got(iov: IoVec) -> None:
            self._bounce_into(req, iov, memoryview(data), status, result)

        try:
            self._acquire(req, len(data), got)
        except ValueError:
            self.complete(req, spec.ST_DATA_SGL_LENGTH_INVALID)

    def _bounce_into(
        self, req: RdmaRequest, iov: IoVec, mv: memoryview, status: int, result: int
    ) -> None:
        views = iov.views
        if len(mv) <= len(views[0]):
            v = views[0][: len(mv)]
            v[:] = mv
            out = v
        else:  # more than one chunk: send them one WRITE each
            out = None
            off = 0
            for v in views:
                k = min(len(v), len(mv) - off)
                if k <= 0:
                    break
                v[:k] = mv[off : off + k]
                off += k
        if not self._finish(req, status, keep_iov=True):
            return
        if out is not None:
            self._respond(req, status, result, out)
        else:
            self._respond_chunks(req, status, result, _cut(views, len(mv)))

    def _finish(self, req: RdmaRequest, status: int, keep_iov: bool = False) -> bool:
        if req.done:
            return False
        req.done = True
        if self.reqs.get(req.cid) is req:
            del self.reqs[req.cid]
        if req.wait is not None:
            assert self.iobufs is not None
            self.iobufs.cancel(req.wait)
            req.wait = None
        if self.closed:
            self._release(req)
            return False
        if status and self.ctrl is not None:
            self.ctrl.record_error(max(self.qid, 0), req.cid, status, req.nsid)
        return True

    def _respond(self, req: RdmaRequest, status: int, result: int, data: memoryview | None) -> None:
        if req.slot >= 0:
            # the receive buffer goes back first, so the host's next command
            # (sent once it sees this response) never finds the queue empty
            self.verbs.repost(req.slot)
            req.slot = -1
        req.data = None
        cqe = R.pack_cqe(req.cid, status, result, self.sqhd, max(self.qid, 0))
        if data is not None:
            self.stats["rdma_write"] += 1
        self.stats["send"] += 1
        self.sends += 1
        req.sending = True
        self.verbs.post_response(req, data, req.raddr, req.rkey, cqe)

    def _respond_chunks(
        self, req: RdmaRequest, status: int, result: int, views: list[memoryview]
    ) -> None:
        off = 0
        for v in views[:-1]:
            self.stats["rdma_write"] += 1
            self.verbs.post_response(None, v, req.raddr + off, req.rkey, b"")
            off += len(v)
        self._respond_at(req, status, result, views[-1], req.raddr + off)

    def _respond_at(
        self, req: RdmaRequest, status: int, result: int, last: memoryview, addr: int
    ) -> None:
        saved = req.raddr
        req.raddr = addr
        try:
            self._respond(req, status, result, last)
        finally:
            req.raddr = saved

    def send_done(self, req: RdmaRequest | None, ok: bool = True) -> None:
        """The SEND of ``req``'s response completed: its buffers are free."""
        if req is None:
            return
        self.sends -= 1
        req.sending = False
        self._release(req)
        if not ok and not self.closed:
            self.close("SEND failed")

    def _release(self, req: RdmaRequest) -> None:
        req.data = None
        iob = self.iobufs
        if req.wait is not None and iob is not None:
            iob.cancel(req.wait)
            req.wait = None
        if req.iov is not None and iob is not None and not req.sending:
            iob.release(req.iov)
            req.iov = None

    # --------------------------------------------------------------- teardown
    def crash(self, exc: BaseException, what: str) -> None:
        if self.crashed:
            return
        self.crashed = True
        self.target.stats["qpair_exceptions"] += 1
        self.hlog.event(
            logging.ERROR,
            "internal error while handling %s (%s: %s): disconnecting",
            what,
            type(exc).__name__,
            exc,
            exc_info=True,
        )
        try:
            self.close(f"internal error: {exc!r}")
        except Exception:
            log.exception("nvmf-rdma %s: teardown after an internal error failed", self.peer)
            self.closed = True

    def close(self, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.want_close = True
        self.close_reason = self.close_reason or reason
        if self.fused_first is not None:
            self.fused_first.done = True
            self._release(self.fused_first)  # type: ignore[arg-type]
            self.fused_first = None
        for req in list(self.reqs.values()):
            if req.wait is not None or req.iov is None:
                req.done = True
                self._release(req)
        self.reqs.clear()
        self.hlog.close()
        self.target.qpair_closed(self)
        try:
            self.verbs.disconnect()
        except Exception:
            log.debug("nvmf-rdma %s: disconnect failed", self.peer, exc_info=True)

    def flushed(self) -> None:
        """The glue destroyed the QP: every posted operation is gone."""
        for req in list(self.reqs.values()):
            req.sending = False
            self._release(req)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        for k in ("listen_address", "peer_address"):
            d[k]["trtype"] = "RDMA"
            d[k]["traddr"] = d[k]["traddr"].removeprefix("rdma:")
        return d

    def __repr__(self) -> str:
        return f"<RdmaQpair {self.peer} qid={self.qid} cntlid={self.cntlid}>"


def _cut(views: list[memoryview], n: int) -> list[memoryview]:
    """The first ``n`` bytes of a list of chunks."""
    out: list[memoryview] = []
    for v in views:
        if n <= 0:
            break
        k = min(len(v), n)
        out.append(v[:k])
        n -= k
    return out


def io_status(status: IoStatus) -> int:
    return io.status_of(status)
