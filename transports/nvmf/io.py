"""NVM command set on I/O queues, executed through the reactor's bdev channels.

Owns: Read, Write, Flush, Write Zeroes, Dataset Management (deallocate ->
``channel.unmap`` per range), Compare and fused Compare-and-Write, with the
status the specification gives each failure: Invalid Namespace or Format,
LBA Out of Range, Data SGL Length Invalid, Namespace Not Ready (hot-removed
bdev), Compare Failure, Write Fault / Unrecovered Read Error, Invalid
Command Opcode; on a path whose ANA group refuses I/O, ANA Inaccessible or
ANA Transition (ana.py), before anything else; then Reservation Conflict /
Command Aborted due to Preempt and Abort (reservation_io.gate, a local check
of the namespace's reservation view). The reservation commands themselves
(0Dh, 0Eh, 11h, 15h) are reservation_io.execute. Read data is handed to the
transport as the channel's memoryview (zero copy).

Write semantics (issue 9): FUA (CDW12 bit 30) on Write, Write Zeroes and the
write half of a fused Compare-and-Write, and every write of a queue whose
controller has the Volatile Write Cache off (``qp.write_through``), reaches
the channel as ``fua=True`` (Write Zeroes: the zeroes, then a flush), so
the data is durable before the command completes. Flush flushes.
Compare-and-Write is the channel's atomic ``compare_and_write`` (a range
lock every reactor honours); a miscompare writes nothing.
"""

from __future__ import annotations

import functools
import inspect
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...bdevs.base import IoChannel, IoStatus
from ...shm.iobuf import CHUNK, IoVec
from ...shm.trace import REQ_SUBMIT, TRACE
from ..context import ReactorContext
from . import ana, reservation_io, spec
from .reservation import RESV_OPCODES

if TYPE_CHECKING:
    from .core import Namespace
    from .qpair import QueuePair
    from .request import Request

IoCallback = Callable[[IoStatus], None]
ChannelOp = Callable[[IoCallback], None]

NSID_ALL = 0xFFFFFFFF
DSM_AD = 1 << 2  # attribute: deallocate
_RANGE = struct.Struct("<IIQ")


def status_of(st: IoStatus, is_read: bool = False) -> int:
    if st == IoStatus.SUCCESS:
        return 0
    if st == IoStatus.OUT_OF_RANGE:
        return spec.ST_LBA_OUT_OF_RANGE
    if st == IoStatus.REMOVED:
        return spec.ST_NS_NOT_READY
    if st == IoStatus.MISCOMPARE:
        return spec.ST_COMPARE_FAILURE
    if st == IoStatus.UNSUPPORTED:
        return spec.ST_INVALID_OPCODE
    if st == IoStatus.NOMEM:
        return spec.ST_INTERNAL  # no DNR: the host retries
    return spec.ST_READ_ERROR if is_read else spec.ST_WRITE_FAULT


def _open(ns: Namespace, ctx: ReactorContext) -> None:
    bdev = ns.bdev = ctx.bdev(ns.bdev_name)
    ch = ns.chan = ctx.channel(ns.bdev_name) if bdev is not None else None
    ns.copies = ch is not None and copies_reads(ch)


def async_copying_ns(qp: QueuePair, nsid: int) -> bool:
    """The namespace's bdev copies and completes later (aio, nvme): data the
    host sent in the capsule must not stay in the receive buffer meanwhile."""
    ns = qp.subsys.namespaces.get(nsid) if qp.subsys is not None else None
    if ns is None:
        return False
    if ns.chan is None:
        _open(ns, qp.target.ctx)
    return bool(ns.copies)


def _channel(req: Request) -> tuple[IoChannel | None, int, int]:
    """(channel, block_size, num_blocks) or (None, status, 0)."""
    ss = req.qp.subsys
    ns = ss.namespaces.get(req.nsid) if ss is not None else None
    if ns is None:
        return None, spec.ST_INVALID_NS, 0
    if ns.chan is None:
        _open(ns, req.qp.target.ctx)
    ch = ns.chan
    bdev = ns.bdev
    if ch is None or bdev is None or bdev.removed or ch.removed:
        ns.chan = None
        return None, spec.ST_NS_NOT_READY, 0
    return ch, bdev.block_size, bdev.num_blocks


def _lba(req: Request, nblocks: int) -> tuple[int, int, int]:
    """(slba, nlb, status) with the LBA range checked."""
    sqe = req.sqe
    slba = sqe.cdw10 | (sqe.cdw11 << 32)
    nlb = (sqe.cdw12 & 0xFFFF) + 1
    if slba + nlb > nblocks:
        return slba, nlb, spec.ST_LBA_OUT_OF_RANGE
    return slba, nlb, 0


def _ranged(req: Request) -> tuple[IoChannel, int, int, int] | None:
    """(channel, block_size, slba, nlb) for a command with an LBA range, or
    None after completing ``req`` with the status that says what was wrong."""
    ch, bs, nblocks = _channel(req)
    if ch is None:
        req.complete(bs)
        return None
    slba, nlb, st = _lba(req, nblocks)
    if st:
        req.complete(st)
        return None
    return ch, bs, slba, nlb


def execute(req: Request) -> None:
    op = req.opcode
    h = HANDLERS.get(op)
    if h is None:
        return req.complete(spec.ST_INVALID_OPCODE)
    ss = req.qp.subsys
    if ss is not None and ss.ana_reporting:
        st = ana.io_status(ss, req.qp.listener, req.nsid)
        if st:  # ANA Inaccessible / Transition on this path (no DNR: try another)
            return req.complete(st)
    req.qp.target.stats["completed_nvme_io"] += 1
    st = reservation_io.gate(req)  # reservation conflict / preempted
    if st:
        return req.complete(st)
    h(req)


ZERO_COPY_MODULES = (".malloc", ".null")


def copies_reads(ch: IoChannel) -> bool:
    """True when the channel copies read data into a buffer we give it
    (``read(..., into=)``: aio, nvme); malloc/null hand out their own memory."""
    declared = getattr(ch, "zero_copy_reads", None)
    if declared is not None:
        return not declared
    if type(ch).__module__.endswith(ZERO_COPY_MODULES):
        return False
    try:
        return "into" in inspect.signature(ch.read).parameters
    except (TypeError, ValueError):
        return False


def read(req: Request) -> None:
    r = _ranged(req)
    if r is None:
        return
    ch, bs, slba, nlb = r
    n = nlb * bs
    if n > req.sgl_len:
        return req.complete(spec.ST_DATA_SGL_LENGTH_INVALID)
    qp = req.qp
    c = qp.counters
    c.read_cmds += 1
    c.read_bytes += n

    def done(status: IoStatus, data: memoryview | None) -> None:
        if status:
            return req.complete(status_of(status, True))
        if data is None or len(data) < n:
            return req.complete(spec.ST_DATA_TRANSFER_ERROR)
        iov = req.iov
        if iov is None or qp.closed:
            return req.complete_with_data(data)
        req.iov = None  # from here the buffer belongs to the output, until sent
        req.complete_with_data(data)
        qp.hold_tx(iov)

    iob = qp.iobufs
    ns = qp.subsys.namespaces.get(req.nsid) if qp.subsys is not None else None
    if TRACE.mask & qp.tp_bit:
        TRACE.rec(qp.tp_base | REQ_SUBMIT, qp.tp_id, req.cid, slba, n)
    if iob is None or ns is None or not ns.copies or n > CHUNK:
        return ch.read(slba, nlb, done)

    def got(iov: IoVec) -> None:  # C2H staging from the pool (FIFO when empty)
        ch.read(slba, nlb, done, into=iov.views[0])

    qp.acquire(req, n, got)


def write(req: Request) -> None:
    r = _ranged(req)
    if r is None:
        return
    ch, bs, slba, nlb = r
    n = nlb * bs
    data = req.data
    iov = req.iov
    multi = data is None and iov is not None and len(iov.views) > 1
    have = iov.nbytes if multi and iov is not None else (0 if data is None else len(data))
    if have < n:
        return req.complete(spec.ST_DATA_SGL_LENGTH_INVALID)
    qp = req.qp
    c = qp.counters
    c.write_cmds += 1
    c.write_bytes += n
    fua = req.fua
    if TRACE.mask & qp.tp_bit:
        TRACE.rec(qp.tp_base | REQ_SUBMIT, qp.tp_id, req.cid, slba, n)
    if multi:
        assert iov is not None
        # an R2T transfer in several pool chunks: one channel write per chunk
        ops: list[ChannelOp] = []
        off = 0
        for v in iov.views:
            if off >= n:
                break
            part = v[: n - off] if off + len(v) > n else v
            ops.append(_chunk_op(ch, slba + off // bs, part, fua))
            off += len(part)
        return _fan_out(req, ops)
    assert data is not None
    if len(data) > n:
        data = data[:n]
    _write(ch, slba, data, lambda s: req.complete(status_of(s)), fua)


def _chunk_op(ch: IoChannel, slba: int, part: memoryview, fua: bool) -> ChannelOp:
    return lambda cb: _write(ch, slba, part, cb, fua)


def _write(ch: IoChannel, slba: int, data: memoryview, cb: IoCallback, fua: bool) -> None:
    if fua:
        ch.write(slba, data, cb, fua=True)
    else:
        ch.write(slba, data, cb)


def flush(req: Request) -> None:
    qp = req.qp
    if req.nsid == NSID_ALL and qp.subsys is not None:
        chans = []
        for ns in qp.subsys.namespaces.values():
            c = qp.target.ctx.channel(ns.bdev_name)
            if c is not None:
                chans.append(c)
        _fan_out(req, [c.flush for c in chans])
        return
    ch, bs, _ = _channel(req)
    if ch is None:
        return req.complete(bs)
    ch.flush(lambda s: req.complete(status_of(s)))


def write_zeroes(req: Request) -> None:
    r = _ranged(req)
    if r is None:
        return
    ch, bs, slba, nlb = r
    if not req.fua:
        return ch.write_zeroes(slba, nlb, lambda s: req.complete(status_of(s)))

    def zeroed(s: IoStatus) -> None:
        if s:
            return req.complete(status_of(s))
        ch.flush(lambda fs: req.complete(status_of(fs)))  # FUA: durable before completion

    ch.write_zeroes(slba, nlb, zeroed)


def dataset_management(req: Request) -> None:
    ch, bs, nblocks = _channel(req)
    if ch is None:
        return req.complete(bs)
    nr = (req.sqe.cdw10 & 0xFF) + 1
    data = req.data
    if data is None or len(data) < nr * 16:
        return req.complete(spec.ST_DATA_SGL_LENGTH_INVALID)
    if not req.sqe.cdw11 & DSM_AD:
        return req.complete(0)  # only hints (IDR/IDW): nothing to do
    ranges = []
    for i in range(nr):
        _cattr, nlb, slba = _RANGE.unpack_from(data, i * 16)
        if slba + nlb > nblocks:
            return req.complete(spec.ST_LBA_OUT_OF_RANGE)
        if nlb:
            ranges.append((slba, nlb))
    if not getattr(ch.bdev, "supports_unmap", True):
        return req.complete(0)  # deallocate is advisory
    _fan_out(req, [functools.partial(ch.unmap, s, n) for s, n in ranges])


def _fan_out(req: Request, ops: list[ChannelOp]) -> None:
    """Run several channel operations, complete with the first failure."""
    left = [len(ops)]
    first = [0]
    if not ops:
        return req.complete(0)

    def one(s: IoStatus) -> None:
        if s and not first[0]:
            first[0] = status_of(s)
        left[0] -= 1
        if left[0] == 0:
            req.complete(first[0])

    for op in ops:
        op(one)


def compare(req: Request) -> None:
    r = _ranged(req)
    if r is None:
        return
    ch, bs, slba, nlb = r
    n = nlb * bs
    data = req.data
    if data is None or len(data) < n:
        return req.complete(spec.ST_DATA_SGL_LENGTH_INVALID)
    ch.compare(slba, data[:n], lambda s, *_first_diff: req.complete(status_of(s)))


# ------------------------------------------------------------------ fused
def fused_gate(req: Request) -> None:
    """Pair a fused first command (Compare) with the fused second (Write)
    that must follow it in submission order on the same queue."""
    qp = req.qp
    first = qp.fused_first
    if first is not None:
        qp.fused_first = None
        if req.sqe.fuse != spec.FUSE_SECOND:
            first.complete(spec.ST_FUSED_MISSING)
            if req.sqe.fuse == spec.FUSE_FIRST:
                return fused_gate(req)
            from .router import dispatch  # router imports io

            return dispatch(req)
        return compare_and_write(first, req)
    if req.sqe.fuse == spec.FUSE_FIRST:
        if qp.qid == 0 or req.opcode != spec.IO_COMPARE:
            return req.complete(spec.ST_INVALID_FIELD)
        qp.fused_first = req
        return
    # a second half without a first
    req.complete(spec.ST_FUSED_MISSING)


def compare_and_write(cmp: Request, wr: Request) -> None:
    if wr.opcode != spec.IO_WRITE or wr.nsid != cmp.nsid:
        cmp.complete(spec.ST_FUSED_FAIL)
        return wr.complete(spec.ST_INVALID_FIELD)
    rst = reservation_io.gate(cmp) or reservation_io.gate(wr)
    if rst:  # the write half decides for both: neither runs
        cmp.complete(rst)
        return wr.complete(spec.ST_FUSED_FAIL)
    ch, bs, nblocks = _channel(cmp)
    if ch is None:
        cmp.complete(bs)
        return wr.complete(spec.ST_FUSED_FAIL)
    slba, nlb, st = _lba(cmp, nblocks)
    wslba, wnlb, wst = _lba(wr, nblocks)
    if st or wst or (slba, nlb) != (wslba, wnlb):
        cmp.complete(st or spec.ST_INVALID_FIELD)
        return wr.complete(wst or spec.ST_FUSED_FAIL)
    n = nlb * bs
    if cmp.data is None or len(cmp.data) < n or wr.data is None or len(wr.data) < n:
        cmp.complete(spec.ST_DATA_SGL_LENGTH_INVALID)
        return wr.complete(spec.ST_FUSED_FAIL)
    c = wr.qp.counters
    c.write_cmds += 1
    c.write_bytes += n

    def done(s: IoStatus, first_diff: int = -1) -> None:
        # cb(status, first_diff) per the bdev contract (first_diff unused:
        # NVMe's Compare Failure carries no offset)
        if s == IoStatus.MISCOMPARE:
            cmp.complete(spec.ST_COMPARE_FAILURE)
            wr.complete(spec.ST_FUSED_FAIL)
        elif s:
            cmp.complete(status_of(s))
            wr.complete(spec.ST_FUSED_FAIL)
        else:
            cmp.complete(0)
            wr.complete(0)

    if wr.fua:
        ch.compare_and_write(slba, cmp.data[:n], wr.data[:n], done, fua=True)
    else:
        ch.compare_and_write(slba, cmp.data[:n], wr.data[:n], done)


HANDLERS = {
    spec.IO_READ: read,
    spec.IO_WRITE: write,
    spec.IO_FLUSH: flush,
    spec.IO_WRITE_ZEROES: write_zeroes,
    spec.IO_DSM: dataset_management,
    spec.IO_COMPARE: compare,
    **dict.fromkeys(RESV_OPCODES, reservation_io.execute),
}
