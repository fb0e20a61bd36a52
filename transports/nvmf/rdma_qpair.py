"""NVMe/RDMA target queue pair: the sans-I/O state machine of one RC queue pair.

Owns: command capsules received into pre-posted buffers (SQE + in-capsule
data, ICDOFF 0), the SGL of each command (in-capsule data up to
``in_capsule_data_size``; one keyed SGL data block: RDMA READ of the host's
buffer before a host-to-controller command runs, RDMA WRITE into it ahead of
the response of a controller-to-host command), the response capsule (CQE
with SQHD) sent with SEND, and the queue depth the host asked for in the RDMA
CM private data (HSQSIZE + 1 receive buffers; a host that sends more
commands than that, or a capsule shorter than an SQE, is disconnected).

It never touches pyverbs: every verb goes through the `Verbs` object the
glue (rdma_verbs.py) or a test passes in, and completions come back as
method calls (``capsule``, ``read_done``, ``send_done``). Host data fetched
by RDMA READ lands in buffers of the reactor's shared pool (``ctx.iobufs``,
registered once per device); read data goes out by RDMA WRITE straight from
where the bdev returned it (the malloc bdev's shared memory, registered once
per device), or, when that memory is not registered (admin payloads built
in Python), from a pool buffer it is copied into. Buffers an RDMA operation
uses are released only when the SEND that ends the command completed (or
was flushed), so no RDMA operation ever reads or writes a buffer in reuse.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ...shm.iobuf import CHUNK, IoVec
from . import io, spec
from . import rdma_proto as R
from .core import NvmfTarget
from .qpair import QueuePair
from .request import XFER_H2C, Request
from .transport import NvmfTransportOps

log = logging.getLogger(__name__)


class Verbs(Protocol):
    """What a queue pair asks of the RDMA glue (one RC queue pair)."""

    def lkey(self, data: memoryview) -> int | None:
        """The local key covering ``data``, or None if it is not registered."""

    def post_read(self, req: RdmaRequest, views: list[memoryview], addr: int, key: int) -> None:
        """RDMA READ ``sum(len(views))`` bytes of the host's buffer; ``read_done`` follows."""

    def post_response(
        self, data: memoryview | None, addr: int, key: int, cqe: bytes, token: Any
    ) -> None:
        """RDMA WRITE ``data`` to the host (if any), then SEND ``cqe``;
        ``send_done(token, ok)`` follows once the SEND completed or flushed."""

    def repost(self, slot: int) -> None:
        """Receive buffer ``slot`` is free again: post it."""

    def disconnect(self) -> None:
        """Tear the connection down (rdma_disconnect; posted work flushes)."""


class RdmaRequest(Request):
    __slots__ = ("slot", "tx")

    def __init__(self, qp: RdmaQpair, sqe: spec.Sqe, slot: int) -> None:
        super().__init__(qp, sqe)
        self.slot = slot  # receive buffer holding the capsule (-1: given back)
        # (data, remote address, key) to RDMA WRITE before the response
        self.tx: tuple[memoryview, int, int] | None = None


class _Tx:
    """What one posted response keeps alive until its SEND completed."""

    __slots__ = ("iovs", "data")

    def __init__(self) -> None:
        self.iovs: list[IoVec] = []
        self.data: memoryview | None = None


class RdmaQpair(QueuePair):
    """One NVMe queue over one RC queue pair."""

    def __init__(
        self,
        target: NvmfTarget,
        transport: NvmfTransportOps,
        verbs: Verbs,
        depth: int,
        listener: str = "",
        peer: str = "",
        cm_qid: int = -1,
    ) -> None:
        super().__init__(target, transport, listener, peer)
        self.verbs = verbs
        self.depth = depth  # receive buffers the host may fill (HSQSIZE + 1)
        self.cm_qid = cm_qid  # QID of the RDMA CM private data
        self.stats = {"recv": 0, "rdma_read": 0, "rdma_write": 0, "send": 0, "bounce": 0}
        self.reading: dict[int, RdmaRequest] = {}  # id(req) -> request whose READ is posted
        self.sends = 0  # SENDs posted and not completed
        self._last_tx: _Tx | None = None  # the response just posted (hold_tx)
        self._pending_bounce: IoVec | None = None  # pool copy for the next response

    # ================================================================ input
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
            self.verbs.repost(slot)
            return self.abort(f"capsule of {nbytes} bytes")
        if len(self.reqs) >= self.depth:
            self.verbs.repost(slot)
            return self.abort(f"more than {self.depth} commands outstanding (HSQSIZE)")
        sqe = spec.unpack_sqe(buf, 0)
        req = RdmaRequest(self, sqe, slot)
        if not self.submit(req):
            return  # CID conflict answered (the slot went back with it) or aborted
        op = sqe.opcode
        if op == spec.FABRICS_OPCODE:
            op = buf[4]  # fctype: its low bits give the direction
            if op == spec.FCTYPE_CONNECT and 0 <= self.cm_qid != sqe.cdw10 >> 16:
                # the queue pair was set up (depth, AQ limits) for the QID of
                # its RDMA CM private data: a Connect for another is refused
                log.warning(
                    "nvmf-rdma %s: Connect for QID %d on the queue pair of QID %d",
                    self.peer,
                    sqe.cdw10 >> 16,
                    self.cm_qid,
                )
                return self.complete(
                    req,
                    spec.ST_CONNECT_INVALID_PARAM,
                    spec.connect_ipo(spec.CONNECT_OFF_QID, False),
                )
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
            return self.execute(req)
        if ident in (R.SGL_KEYED_ADDR, R.SGL_KEYED_INVALIDATE):
            k = R.unpack_keyed(sqe.dptr)
            if k.length > self.opts.max_io_size:
                return self.complete(req, spec.ST_DATA_SGL_LENGTH_INVALID)
            req.sgl_len = k.length
            req.tp = (k.address, k.key)
            if req.xfer & XFER_H2C and k.length:
                return self.start_h2c(req)  # pool buffers, then fetch_data
            return self.execute(req)
        sgl = spec.unpack_sgl(sqe.dptr)
        if sgl.length == 0 and ident == 0:
            return self.execute(req)  # an all-zero descriptor: no data
        # Segment / Last Segment descriptors: MSDBD is 1; other types unsupported
        return self.complete(req, spec.ST_SGL_INVALID_TYPE)

    def _stage_incapsule(self, req: RdmaRequest) -> None:
        """In-capsule data for an asynchronous bdev moves to a pool buffer, so
        the receive buffer goes back to the host at once."""
        view = req.data
        assert view is not None

        def got(iov: IoVec) -> None:
            v = iov.views[0][: len(view)]
            v[:] = view
            req.data = v
            if req.slot >= 0:
                self.verbs.repost(req.slot)
                req.slot = -1
            self.execute(req)

        self.acquire(req, len(view), got)

    # -- host data: RDMA READ ----------------------------------------------------
    def fetch_data(self, req: Request) -> None:
        assert isinstance(req, RdmaRequest) and req.tp is not None
        iov = req.iov
        if iov is None:  # no pool on this reactor: a buffer bounded by max_io_size
            req.buf = bytearray(req.sgl_len)
            views = [memoryview(req.buf)]
        else:
            views = _cut(iov.views, req.sgl_len)
        self.stats["rdma_read"] += 1
        self.reading[id(req)] = req
        addr, key = _keyed(req.tp)
        self.verbs.post_read(req, views, addr, key)

    def pending_transfers(self) -> list[Request]:
        return []  # a posted READ still writes into its buffers: freed by read_done

    def read_done(self, req: RdmaRequest, ok: bool) -> None:
        """The RDMA READ of ``req``'s data completed (``ok``) or failed/flushed."""
        try:
            self.reading.pop(id(req), None)
            if req.done or self.closed:
                req.done = True
                self.release(req)  # the READ is over: its buffers may go back
                return
            if not ok:
                self.complete(req, spec.ST_TRANSIENT_TRANSPORT_ERROR)
                return self.abort("RDMA READ failed")
            iov = req.iov
            if iov is None:
                assert req.buf is not None
                req.data = memoryview(req.buf)
            elif len(iov.views) == 1:
                req.data = iov.views[0][: req.sgl_len]
            elif req.opcode != spec.IO_WRITE or self.qid <= 0:
                # only Write moves chunk by chunk; others get one MDTS-bounded copy
                req.data = memoryview(b"".join(_cut(iov.views, req.sgl_len)))
            self.execute(req)
        except Exception as e:
            self.crash(e, "an RDMA READ completion")

    # -- responses: RDMA WRITE + SEND ---------------------------------------------
    def send_data(self, req: Request, data: memoryview, status: int, result: int) -> bool:
        assert isinstance(req, RdmaRequest)
        if not data.nbytes:
            return False
        if req.tp is None:  # data for a command that gave no keyed descriptor
            return False
        if self.verbs.lkey(data) is None:
            data = self._bounce(req, data)
        addr, key = _keyed(req.tp)  # kept here: finish() drops req.tp before the response
        req.tx = (data, addr, key)
        return False  # RDMA always sends the response capsule

    def _bounce(self, req: RdmaRequest, data: memoryview) -> memoryview:
        """Data in unregistered memory (admin payloads): into a pool buffer."""
        self.stats["bounce"] += 1
        iob = self.iobufs
        iov = iob.try_acquire(data.nbytes) if iob is not None else None
        if iov is None:
            # pool empty: a bounded private copy the glue registers for this WRITE
            return memoryview(bytearray(data))
        out = _cut(iov.views, data.nbytes)
        off = 0
        for v in out:
            v[:] = data[off : off + len(v)]
            off += len(v)
        self._pending_bounce = iov
        if len(out) == 1:
            return out[0]
        return memoryview(b"".join(out))  # > 1 chunk: only with max_io_size > CHUNK

    def send_response(self, req: Request, status: int, result: int) -> None:
        assert isinstance(req, RdmaRequest)
        if req.slot >= 0:
            # the receive buffer goes back first, so the host's next command
            # (sent once it sees this response) never finds the queue empty
            self.verbs.repost(req.slot)
            req.slot = -1
        if self.closed:
            return
        tx = _Tx()
        data: memoryview | None = None
        addr = key = 0
        if req.tx is not None:
            data, addr, key = req.tx
            req.tx = None
        bounce = self._pending_bounce
        if bounce is not None:
            tx.iovs.append(bounce)
            self._pending_bounce = None
        if data is not None:
            self.stats["rdma_write"] += 1
            tx.data = data
        cqe = R.pack_cqe(req.cid, status, result, self.sqhd, max(self.qid, 0))
        self.stats["send"] += 1
        self.sends += 1
        self._last_tx = tx
        self.verbs.post_response(data, addr, key, cqe, tx)

    def hold_tx(self, iov: IoVec) -> None:
        """Pool buffers just written from (a copying bdev's read data): keep
        them until the response's SEND completed."""
        tx = self._last_tx
        if tx is not None and not self.closed:
            tx.iovs.append(iov)
        elif self.iobufs is not None:
            self.iobufs.release(iov)

    def send_done(self, token: Any, ok: bool = True) -> None:
        """The SEND of a response completed (or was flushed): free what it used."""
        self.sends -= 1
        if isinstance(token, _Tx):
            if token is self._last_tx:
                self._last_tx = None
            iob = self.iobufs
            for iov in token.iovs:
                if iob is not None:
                    iob.release(iov)
            token.iovs = []
            token.data = None
        if not ok and not self.closed:
            self.close("SEND failed")

    def release_transfer(self, req: Request) -> None:
        req.buf = None
        req.tp = None  # the keyed SGL; a pending WRITE keeps its copy in req.tx

    # -- teardown -------------------------------------------------------------------
    def transport_close(self) -> None:
        self._last_tx = None
        try:
            self.verbs.disconnect()
        except Exception:
            log.debug("nvmf-rdma %s: disconnect failed", self.peer, exc_info=True)

    def flushed(self) -> None:
        """The glue destroyed the QP: no posted READ will complete any more."""
        for req in list(self.reading.values()):
            self.read_done(req, False)
        self.reading.clear()


def _keyed(tp: object) -> tuple[int, int]:
    """(address, key) of the keyed SGL stored in ``req.tp``."""
    if isinstance(tp, tuple) and len(tp) == 2:
        return int(tp[0]), int(tp[1])
    return 0, 0


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
