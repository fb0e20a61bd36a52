"""The transport-neutral NVMe-oF request: one command in flight on a queue pair.

A transport builds a `Request` from a received command capsule (the SQE, or
for its own fast path the decoded cid/opcode/nsid with ``FAST_SQE``), fills
the data fields (``sgl_len``, ``xfer``, ``data`` / ``iov``) and hands it to
``qp.submit(req)`` + ``qp.execute(req)`` (qpair.py). The core completes it
with ``req.complete(status, result)`` or ``req.complete_with_data(data)``;
both end in the queue pair's transport hooks.

Fields a transport uses for its own data movement: ``ttag`` (TCP transfer
tag / RDMA work request id; 0 = none), ``xfer_off`` (bytes of host data
received so far), ``buf`` (a bounded bytearray when the reactor has no pool),
``data_err`` (a digest or transfer error seen on the data), ``deadline``
(host data must have arrived by then) and ``tp`` (anything else the transport
keeps per request, e.g. an RDMA keyed SGL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...bdevs.base import IoStatus
from ...shm.iobuf import IoVec, IoWait
from . import spec
from .io import status_of

if TYPE_CHECKING:
    from .qpair import QueuePair

XFER_NONE, XFER_H2C, XFER_C2H = 0, 1, 2  # data direction: opcode bits 1:0
FUA = 1 << 30  # CDW12 bit 30 of Write / Write Zeroes / Compare

DataLike = bytes | bytearray | memoryview


class Request:
    """One command in flight on a queue pair."""

    __slots__ = (
        "qp",
        "sqe",
        "cid",
        "opcode",
        "nsid",
        "sgl_len",
        "xfer",
        "data",
        "ttag",
        "xfer_off",
        "buf",
        "done",
        "data_err",
        "fused",
        "ctx",
        "iov",
        "wait",
        "deadline",
        "tp",
    )

    def __init__(
        self, qp: QueuePair, sqe: spec.Sqe, cid: int = 0, opcode: int = 0, nsid: int = 0
    ) -> None:
        # a transport's fast path passes FAST_SQE and the decoded fields
        self.qp = qp
        self.sqe = sqe
        if sqe is not FAST_SQE:
            cid, opcode, nsid = sqe.cid, sqe.opcode, sqe.nsid
        self.cid = cid
        self.opcode = opcode
        self.nsid = nsid
        self.sgl_len = 0  # bytes the host's data descriptor covers
        self.xfer = XFER_NONE
        self.data: memoryview | None = None  # host data, once all of it is here
        self.ttag = 0
        self.xfer_off = 0
        self.buf: bytearray | None = None
        self.done = False
        self.data_err = False
        self.fused: Request | None = None
        self.ctx: object = None  # command-specific state of the core (e.g. connect)
        self.iov: IoVec | None = None  # pool buffers of the data
        self.wait: IoWait | None = None  # queued for pool buffers
        self.deadline = 0.0
        self.tp: object = None  # transport-private per-request state

    def complete(self, status: int = 0, result: int = 0) -> None:
        self.qp.complete(self, status, result)

    def complete_with_data(self, data: DataLike, status: int = 0, result: int = 0) -> None:
        qp = self.qp
        if qp.qid <= 0:  # admin payloads built: what the bounds tests count
            qp.target.stats["admin_data_bytes"] += len(data)
        qp.complete_with_data(self, data, status, result)

    @property
    def fua(self) -> bool:
        """FUA asked (CDW12 bit 30) or the controller is in write-through (VWC = 0)."""
        return bool(self.sqe.cdw12 & FUA) or self.qp.write_through

    # bound-method callbacks of the fast paths (no closure per command)
    def read_done(self, status: IoStatus, data: memoryview | None) -> None:
        qp = self.qp
        try:
            if status:
                return qp.complete(self, status_of(status, True))
            if data is None or len(data) < self.sgl_len:
                return qp.complete(self, spec.ST_DATA_TRANSFER_ERROR)
            qp.complete_with_data(self, data)
        except Exception as e:
            qp.crash(e, "a read completion")

    def write_done(self, status: IoStatus) -> None:
        try:
            self.qp.complete(self, status_of(status) if status else 0)
        except Exception as e:
            self.qp.crash(e, "a write completion")

    def got_iov(self, iov: IoVec) -> None:
        """The pool granted this transfer its buffers: fetch the host data."""
        self.qp.fetch_data(self)
        self.qp.wake()

    def __repr__(self) -> str:
        return f"<Request cid={self.cid} op={self.opcode:#x} nsid={self.nsid} len={self.sgl_len}>"


FAST_SQE = spec.Sqe(0, 0, 0, 0, 0, 0, 0, bytes(16), 0, 0, 0, 0, 0, 0)
