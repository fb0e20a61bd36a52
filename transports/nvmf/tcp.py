"""NVMe/TCP target queue pair: the sans-I/O state machine of one connection.

Owns: the ICReq/ICResp negotiation (PFV, HPDA/CPDA, digests, MAXR2T,
MAXH2CDATA), command capsules with in-capsule data, R2T + H2CData for larger
host-to-controller transfers, C2HData (split at the C2H unit, SUCCESS flag
when the host disabled SQ flow control), CapsuleResp with SQHD, queue-depth
enforcement and the C2HTermReq for every fatal framing error.

The driver feeds received bytes (``get_buffer``/``received`` for recv_into,
or ``feed``), then sends ``take_output()`` (a list of buffers for sendmsg) and
closes the socket once ``want_close`` is set and the output is drained.
``wake`` is called whenever output appears outside ``received`` (completions
from asynchronous bdevs or supervisor replies).

Read data goes out as the memoryview the bdev channel returned: no copy.

Hostile hosts (issue 8): every buffer a host can make us hold is bounded.
R2T transfers take their buffer from the reactor's pool (``ctx.iobufs``)
before the R2T goes out; when the pool is empty the command waits (FIFO) and
gets its R2T once a buffer is free. The receive buffer is 8 KiB until the IC
exchange is done. A connection that has not completed ICReq + Connect within
``connect_timeout_ms`` is closed, and so is one whose H2CData does not arrive
within ``h2c_data_timeout_ms`` of the R2T (the command fails first). Parsing
stops while more than ``max_unsent_bytes`` of output wait for the socket (the
driver then stops reading, `paused`). An unexpected exception in a handler,
a completion or a timer closes only this connection (`crash`).

Memory one connection can make the reactor hold, outside the pool: the
receive buffer (``2 * (max_io_size + 256)``, 257 KiB by default), at most
``max_unsent_bytes`` + one command's data (MDTS) of unsent output, and the
queue-depth-bounded request objects; inside the pool: at most queue depth x
MDTS of R2T buffers, shared FIFO with every other connection of the reactor.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Callable

from ...runtime.loop import Timer
from ...shm import trace as _tr
from ...shm.iobuf import CHUNK, IoVec
from ...shm.trace import G_NVMF_TCP, TRACE
from ...shm.trace import TP_NVMF_TCP as _TP
from . import ana, io, spec
from . import pdu as P
from .core import NvmfTarget
from .qpair import QueuePair
from .request import FAST_SQE, FUA, XFER_C2H, XFER_H2C, Request
from .tcp_ops import TCP

log = logging.getLogger(__name__)

HPDA_MAX = 31
IC_BUFSIZE = 8192  # receive buffer before the IC exchange (an ICReq is 128 bytes)
__all__ = ["FUA", "Request", "TcpQpair"]


_FAST_SQE = FAST_SQE
# CapsuleCmd common header without digests or data, as one integer
_CH_NODATA = P.CH.unpack(P.CH.pack(P.CAPSULE_CMD, 0, 72, 0, 72))
# the SQE fields a Read/Write needs: opcode flags cid nsid [cdw2 cdw3 mptr]
# sgl(addr len type) cdw10 cdw11 cdw12
_RW = struct.Struct("<BBHI16xQI3xBIII")
_SGL_TRANSPORT = spec.SGL_TYPE_TRANSPORT
_SGL_INCAPSULE = spec.SGL_TYPE_INCAPSULE
_FLAGS_SGL = spec.PSDT_SGL << 6
_IO_READ = spec.IO_READ
_IO_WRITE = spec.IO_WRITE
_C2H_SUCCESS_LAST = P.FLAG_DATA_LAST | P.FLAG_DATA_SUCCESS
_RESP_PACK = P.RESP_HDR.pack
_CH_UNPACK_FROM = P.CH.unpack_from
_RW_UNPACK_FROM = _RW.unpack_from
_DATA_PACK = P.DATA_HDR.pack


class TcpQpair(QueuePair):
    def __init__(
        self,
        target: NvmfTarget,
        listener: str = "",
        peer: str = "",
        wake: Callable[[], None] | None = None,
        on_close: Callable[[TcpQpair], None] | None = None,
    ) -> None:
        super().__init__(target, TCP, listener, peer)
        opts = self.opts
        self.maxh2cdata = opts.max_io_size
        self.c2h_unit = max(4096, min(opts.io_unit_size, opts.max_io_size))
        self.bufsize = max(1 << 18, 2 * (opts.max_io_size + 256))
        self.reader = P.PduReader(
            P.CONTROLLER,
            max_data={P.CAPSULE_CMD: opts.admin_icd, P.H2C_DATA: self.maxh2cdata},
            bufsize=IC_BUFSIZE,
        )
        self.hdgst = False
        self.ddgst = False
        self.hpda = 0
        self.cpda = 0
        self.maxr2t = 0
        self.ic_done = False
        self.out: list[bytes | bytearray | memoryview] = []
        self.want_close = False
        self._wake_cb = wake
        self.on_close = on_close
        self.ttags: dict[int, Request] = {}
        self._next_ttag = 0
        self._pool: list[bytearray] = []
        self._cur_hdr: bytes | memoryview = (
            b""  # header of the capsule being admitted (for a TermReq)
        )
        ctx = target.ctx
        # backpressure: response bytes produced since take_output / held unsent by the driver
        self.out_bytes = 0
        self.backlog = 0
        self.paused = False
        self._h2c_timer: Timer | None = None
        self._conn_timer: Timer | None = None
        # pool buffers whose bytes are queued for the socket: released once
        # the driver reports them sent (byte marks of the taken output)
        self.taken_total = 0
        self.last_taken = 0
        self._hold_now: list[IoVec] = []
        self._held: deque[tuple[int, list[IoVec]]] = deque()
        if opts.connect_timeout > 0:
            self._conn_timer = ctx.loop.call_later(opts.connect_timeout, self._connect_timeout)

    # ------------------------------------------------------------ input side
    def get_buffer(self) -> memoryview:
        return self.reader.get_buffer()

    def received(self, n: int) -> None:
        self.reader.commit(n)
        self.process()

    def feed_input(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` in and process it (output stays in ``out``)."""
        mv = memoryview(data)
        while mv and not self.want_close:
            buf = self.get_buffer()
            n = min(len(buf), len(mv))
            buf[:n] = mv[:n]
            del buf
            mv = mv[n:]
            self.received(n)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | bytearray | memoryview]:
        """Feed bytes, return the output produced (sans-I/O tests; the output
        counts as sent at once, so backpressure pauses are resumed here)."""
        out: list[bytes | bytearray | memoryview] = []
        mv = memoryview(data)
        while mv and not self.want_close:
            buf = self.get_buffer()
            n = min(len(buf), len(mv))
            buf[:n] = mv[:n]
            del buf
            mv = mv[n:]
            self.received(n)
            while self.paused and not self.want_close:
                out += self.take_output()
                self.resume()
        return out + self.take_output()

    def take_output(self) -> list[bytes | bytearray | memoryview]:
        out, self.out = self.out, []
        self.out_bytes = 0
        n = self.last_taken = sum(map(len, out))
        self.taken_total += n
        if self._hold_now:
            self._held.append((self.taken_total, self._hold_now))
            self._hold_now = []
        if self._wake_cb is None:  # no driver (sans-I/O use): taken counts as sent
            self.sent_upto(self.taken_total)
        return out

    # -- transmit buffers from the pool -------------------------------------------
    def hold_tx(self, iov: IoVec) -> None:
        """``iov``'s bytes were just queued in ``out``: keep the buffers until sent."""
        if self.closed:
            assert self.iobufs is not None
            self.iobufs.release(iov)
        else:
            self._hold_now.append(iov)

    def sent_upto(self, total: int) -> None:
        """The driver has sent ``total`` bytes of taken output in all."""
        held = self._held
        while held and held[0][0] <= total:
            iob = self.iobufs
            assert iob is not None  # only pool buffers are held
            for iov in held.popleft()[1]:
                iob.release(iov)

    def release_tx(self) -> None:
        """Nothing more will be sent (the socket is closed): free what was held."""
        iob = self.iobufs
        if iob is None:
            return  # nothing can be held without a pool
        for _mark, iovs in self._held:
            for iov in iovs:
                iob.release(iov)
        self._held.clear()
        for iov in self._hold_now:
            iob.release(iov)
        self._hold_now = []

    @property
    def over_limit(self) -> bool:
        return self.out_bytes + self.backlog > self.opts.max_unsent_bytes

    def resume(self) -> None:
        """The driver drained our output below the bound: parse what is buffered."""
        if self.paused:
            self.paused = False
            self.process()

    def process(self) -> None:
        if self.want_close or self.closed or self.paused:
            return
        reader = self.reader
        try:
            while True:
                if self.fast_ok:
                    self._fast_loop()
                    if self.paused or self.want_close:
                        return
                if self.out_bytes + self.backlog > self.opts.max_unsent_bytes:  # over_limit
                    self.paused = True  # stop parsing until the output drains
                    return
                if reader._start == reader._end and reader.failed is None:
                    # all of it parsed (the usual end of a per-command recv):
                    # what next_pdu would say, without the call
                    reader._need = 8
                    return
                pdu = reader.next_pdu()
                if pdu is None:
                    return
                self._handle(pdu)
                if self.want_close:
                    return
        except P.PduError as e:
            self.fatal(e.fes, e.fei, e.msg, e.header)
        except Exception as e:
            self.crash(e, "a PDU")

    def abort(self, reason: str) -> None:
        """A fatal error without a framing cause (an internal error):
        C2HTermReq, then close once it is flushed."""
        if not self.want_close:
            self.out.append(P.encode_term_req(P.C2H_TERM_REQ, P.FES_PDU_SEQUENCE_ERROR, 0, b""))
            self.target.stats["c2h_term_reqs"] += 1
            self.want_close = True
        self.close(reason)

    def queue_full(self, req: Request) -> None:
        self.fatal(
            P.FES_PDU_SEQUENCE_ERROR,
            0,
            f"more than {self.queue_limit()} commands outstanding",
            bytes(self._cur_hdr),
        )

    # -- timers ----------------------------------------------------------------
    def _clock(self) -> float:
        clock: Callable[[], float] = getattr(self.target, "clock", time.monotonic)
        return clock()

    def _connect_timeout(self) -> None:
        self._conn_timer = None
        try:
            if self.closed or self.qid >= 0:
                return
            if self.connect_pending:
                # the supervisor is answering our Connect: look again shortly
                self._conn_timer = self.target.ctx.loop.call_later(1.0, self._connect_timeout)
                return
            self.target.stats["connect_timeouts"] += 1
            self.hlog.event(
                logging.WARNING,
                "no ICReq + Connect within %.1f s: closing the connection",
                self.opts.connect_timeout,
            )
            self.close("connect timeout")
        except Exception as e:
            self.crash(e, "the connect timer")

    def _arm_h2c_timer(self) -> None:
        t = self.opts.h2c_data_timeout
        if self._h2c_timer is not None or t <= 0 or not self.ttags or self.closed:
            return
        first = min(r.deadline for r in self.ttags.values())
        delay = max(0.0, first - self._clock())
        self._h2c_timer = self.target.ctx.loop.call_later(delay, self.check_h2c_timeouts)

    def check_h2c_timeouts(self) -> None:
        """Fail every R2T transfer whose data is overdue and close the
        connection (the host stalled); re-arm for the next deadline."""
        self._h2c_timer = None
        try:
            if self.closed or self.want_close:
                return
            now = self._clock()
            late = [r for r in self.ttags.values() if r.deadline <= now]
            if not late:
                return self._arm_h2c_timer()
            self.target.stats["h2c_timeouts"] += len(late)
            self.hlog.event(
                logging.WARNING,
                "H2CData for %d command(s) not received within %.1f s of the R2T "
                "(first CID %d): failing them and closing the connection",
                len(late),
                self.opts.h2c_data_timeout,
                late[0].cid,
            )
            for r in late:
                self.complete(r, spec.ST_TRANSIENT_TRANSPORT_ERROR)
            self.close_reason = "H2CData timeout"
            self.want_close = True
            self.reader.failed = self.reader.failed or P.PduError(0, 0, "H2CData timeout")
            self.wake()
        except Exception as e:
            self.crash(e, "the H2CData timer")

    def _fast_loop(self) -> None:
        """Read/Write commands on an I/O queue, straight from the receive
        buffer: no Pdu/Sqe objects, no dispatch chain. Anything unusual
        (other opcodes, fused, bad SGL or LBA range, duplicate CID, queue
        full, unknown namespace) stops here and takes the general path,
        which produces the exact status."""
        r = self.reader
        buf = r._buf
        end = r._end
        s = r._start
        reqs = self.reqs
        limit = self.sqsize + 1
        subsys = self.subsys
        assert subsys is not None  # fast_ok checked it
        namespaces = subsys.namespaces
        icd = -1  # the in-capsule data limit: looked up at the first write
        max_io = self.opts.max_io_size
        ch_unpack = _CH_UNPACK_FROM
        rw_unpack = _RW_UNPACK_FROM
        limit_out = self.opts.max_unsent_bytes - self.backlog
        wt = self.write_through
        traced = TRACE.mask & G_NVMF_TCP  # tracepoints of this batch (one test per command)
        n_io = 0
        try:
            while end - s >= 72:
                if self.out_bytes > limit_out:
                    self.paused = True  # backpressure: stop until the output drains
                    return
                t, fl, hl, pdo, plen = ch_unpack(buf, s)
                if t != 4 or fl or hl != 72:
                    return
                op, flags, cid, nsid, addr, sgl_len, ident, c10, c11, c12 = rw_unpack(buf, s + 8)
                if flags != _FLAGS_SGL or cid in reqs or len(reqs) >= limit:
                    return
                # what io._channel checks, for a namespace whose channel is open
                ns = namespaces.get(nsid)
                if ns is None or ns.copies:
                    return  # (a copying bdev reads into pool buffers: general path)
                rv = ns.resv  # a reservation is held: the general path answers a conflict
                if rv is not None and not rv.allows(self.resv_id, op != _IO_READ):
                    return
                ch = ns.chan
                bdev = ns.bdev
                if ch is None or bdev is None or ch.removed or bdev.removed:
                    return
                slba = c10 | (c11 << 32)
                nlb = (c12 & 0xFFFF) + 1
                n = nlb * bdev.block_size
                if slba + nlb > bdev.num_blocks:
                    return
                if op == _IO_READ:
                    # anything unusual (incl. a read above max_io_size, which
                    # the general path refuses) leaves the fast path
                    if (
                        plen != 72
                        or pdo
                        or ident != _SGL_TRANSPORT
                        or n > sgl_len
                        or sgl_len > max_io
                    ):
                        return
                    if traced:
                        self._tr_fast(cid, op, slba, n, plen)
                    s += 72
                    r._start = s
                    self.sqhd = (self.sqhd + 1) % limit
                    req = Request(self, _FAST_SQE, cid, op, nsid)
                    req.sgl_len = n
                    req.xfer = XFER_C2H
                    reqs[cid] = req
                    c = self.counters
                    c.read_cmds += 1
                    c.read_bytes += n
                    n_io += 1
                    ch.read(slba, nlb, req.read_done)
                elif op == _IO_WRITE:
                    # in-capsule data only; R2T writes take the general path
                    if icd < 0:
                        icd = min(
                            r.max_data.get(P.CAPSULE_CMD, 1 << 30), self.opts.in_capsule_data_size
                        )
                    if ident != _SGL_INCAPSULE or sgl_len != n or addr or n > icd:
                        return
                    if pdo != 72 or plen != 72 + n or end - s < plen:
                        return
                    if traced:
                        self._tr_fast(cid, op, slba, n, plen)
                    req = Request(self, _FAST_SQE, cid, op, nsid)
                    req.data = memoryview(buf)[s + 72 : s + plen]
                    s += plen
                    r._start = s
                    self.sqhd = (self.sqhd + 1) % limit
                    req.sgl_len = n
                    req.xfer = XFER_H2C
                    reqs[cid] = req
                    c = self.counters
                    c.write_cmds += 1
                    c.write_bytes += n
                    n_io += 1
                    if wt or c12 & FUA:
                        ch.write(slba, req.data, req.write_done, fua=True)
                    else:
                        ch.write(slba, req.data, req.write_done)
                else:
                    return
                if self.want_close:
                    return
        finally:
            if n_io:
                self.target.stats["completed_nvme_io"] += n_io

    def _tr_fast(self, cid: int, op: int, slba: int, n: int, plen: int) -> None:
        """Tracepoints of a fast-path command: it is parsed and handed to the
        bdev in one step (the timestamps differ by the recording only)."""
        t, o = TRACE, self.tp_id
        t.rec(_TP | _tr.REQ_PDU, o, cid, 0, plen, 4)
        t.rec(_TP | _tr.REQ_NEW, o, cid, slba, n, op)
        t.rec(_TP | _tr.REQ_SUBMIT, o, cid, slba, n)

    def _tr_capsule(self, req: Request, pdu: P.Pdu) -> None:
        sqe = req.sqe
        lba = sqe.cdw10 | sqe.cdw11 << 32 if self.qid > 0 else 0
        n = spec.unpack_sgl(sqe.dptr).length
        TRACE.rec(
            _TP | _tr.REQ_PDU, self.tp_id, req.cid, 0, len(pdu.hdr) + len(pdu.data or b""), pdu.type
        )
        TRACE.rec(_TP | _tr.REQ_NEW, self.tp_id, req.cid, lba, n, sqe.opcode)

    @property
    def fast_ok(self) -> bool:
        """The fast path applies: an I/O queue, no digests, no fused pair open."""
        return (
            self.qid > 0
            and self.subsys is not None
            and not self.hdgst
            and not self.ddgst
            and self.cpda == 0
            and self.fused_first is None
            and not self.closed
            and not ana.refuses_io(self.subsys, self.listener)
            and (self.auth is None or self.auth.authenticated)
        )

    def fatal(self, fes: int, fei: int, msg: str, header: bytes = b"") -> None:
        """Send a C2HTermReq and close after it is flushed."""
        if self.want_close:
            return
        self.hlog.event(logging.WARNING, "fatal error (FES %#x, FEI %d): %s", fes, fei, msg)
        st = self.target.stats
        st["c2h_term_reqs"] += 1
        if fes == P.FES_HDGST_ERROR:
            st["hdgst_errors"] += 1
        self.out.append(P.encode_term_req(P.C2H_TERM_REQ, fes, fei, header))
        self.close_reason = msg
        self.want_close = True
        self.reader.failed = self.reader.failed or P.PduError(fes, fei, msg)
        self.wake()

    def wake(self) -> None:
        if self._wake_cb is not None:
            self._wake_cb()

    def _handle(self, pdu: P.Pdu) -> None:
        t = pdu.type
        if t == P.CAPSULE_CMD:
            self._capsule(pdu)
        elif t == P.H2C_DATA:
            self._h2c_data(pdu)
        elif t == P.ICREQ:
            self._icreq(pdu)
        elif t == P.H2C_TERM_REQ:
            fes, fei = P.parse_term(pdu.hdr)
            self.hlog.event(
                logging.INFO, "host terminated the connection (FES %#x FEI %d)", fes, fei
            )
            self.close_reason = "H2CTermReq"
            self.target.stats["h2c_term_reqs"] += 1
            self.want_close = True
            self.wake()

    def _icreq(self, pdu: P.Pdu) -> None:
        pfv, hpda, hd, dd, maxr2t = P.parse_ic(pdu.hdr)
        if pfv != 0:
            return self.fatal(
                P.FES_INVALID_HEADER_FIELD, P.OFF_IC_PFV, f"ICReq PFV {pfv}", bytes(pdu.hdr)
            )
        if hpda > HPDA_MAX:
            return self.fatal(
                P.FES_INVALID_HEADER_FIELD, P.OFF_IC_HPDA, f"ICReq HPDA {hpda}", bytes(pdu.hdr)
            )
        self.hpda = hpda
        self.maxr2t = maxr2t
        self.hdgst, self.ddgst = bool(hd), bool(dd)
        self.out.append(P.encode_icresp(self.cpda, self.hdgst, self.ddgst, self.maxh2cdata))
        r = self.reader
        r.ic_done = True
        r.hdgst, r.ddgst, r.rx_pda = self.hdgst, self.ddgst, self.cpda
        r.reserve(self.bufsize)  # now the host may send full-size PDUs
        self.ic_done = True

    # -- commands ------------------------------------------------------------
    def _capsule(self, pdu: P.Pdu) -> None:
        sqe = spec.unpack_sqe(pdu.hdr, 8)
        req = Request(self, sqe)
        if TRACE.mask & G_NVMF_TCP:
            self._tr_capsule(req, pdu)
        self._cur_hdr = pdu.hdr
        admitted = self.submit(req)  # queue depth, SQHD, CID uniqueness (core)
        self._cur_hdr = b""
        if not admitted:
            return
        op = sqe.opcode
        if op == spec.FABRICS_OPCODE:
            op = spec.u8(pdu.hdr, 8 + 4)  # fctype: its low bits give the direction
        req.xfer = op & 0x3
        if sqe.psdt != spec.PSDT_SGL:
            return self.complete(req, spec.ST_INVALID_FIELD)
        sgl = spec.unpack_sgl(sqe.dptr)
        ident = (sgl.type << 4) | sgl.subtype
        data = pdu.data
        if ident == spec.SGL_TYPE_INCAPSULE:
            limit = self.opts.admin_icd if self.qid <= 0 else self.opts.in_capsule_data_size
            if sgl.length > limit:
                return self.complete(req, spec.ST_DATA_SGL_LENGTH_INVALID)
            have = 0 if data is None else len(data)
            if sgl.address > have:
                return self.complete(req, spec.ST_SGL_INVALID_OFFSET)
            if sgl.length > have - sgl.address:
                return self.complete(req, spec.ST_DATA_SGL_LENGTH_INVALID)
            if not pdu.ddgst_ok:
                self.target.stats["ddgst_errors"] += 1
                return self.complete(req, spec.ST_TRANSIENT_TRANSPORT_ERROR)
            req.sgl_len = sgl.length
            if sgl.length and data is not None:
                req.data = data[sgl.address : sgl.address + sgl.length]
                if (
                    self.qid > 0
                    and self.iobufs is not None
                    and sgl.length <= CHUNK
                    and io.async_copying_ns(self, req.nsid)
                ):
                    return self._stage_incapsule(req)
            return self.execute(req)
        if ident == spec.SGL_TYPE_TRANSPORT:
            if data is not None:
                return self.complete(req, spec.ST_INVALID_FIELD)
            if sgl.length > self.opts.max_io_size:
                return self.complete(req, spec.ST_DATA_SGL_LENGTH_INVALID)
            req.sgl_len = sgl.length
            if req.xfer & XFER_H2C and sgl.length:
                return self.start_h2c(req)  # pool buffers, then fetch_data (R2T)
            return self.execute(req)
        if sgl.length == 0 and ident == 0:
            return self.execute(req)  # an all-zero descriptor: no data
        return self.complete(req, spec.ST_SGL_INVALID_TYPE)

    def _stage_incapsule(self, req: Request) -> None:
        """In-capsule data for an asynchronous bdev moves to a pool buffer
        (FIFO, so commands that wait keep their order, fused pairs included),
        so the receive buffer is never pinned by commands in flight."""
        view = req.data
        assert view is not None

        def got(iov: IoVec) -> None:
            v = iov.views[0]
            v[:] = view
            req.data = v
            self.execute(req)
            self.wake()

        self.acquire(req, len(view), got)

    def fetch_data(self, req: Request) -> None:
        """Ask the host for the data: an R2T (H2CData then arrives in _h2c_data)."""
        ttag = self._next_ttag
        while True:
            ttag = (ttag + 1) & 0xFFFF
            if ttag and ttag not in self.ttags:  # 0 means "no R2T" (req.ttag)
                break
        self._next_ttag = ttag
        req.ttag = ttag
        self.ttags[ttag] = req
        # one R2T for the whole transfer (max_io_size == MAXH2CDATA)
        self.out.extend(P.encode_r2t(req.cid, ttag, 0, req.sgl_len, self.hdgst))
        if self.opts.h2c_data_timeout > 0:
            req.deadline = self._clock() + self.opts.h2c_data_timeout
            self._arm_h2c_timer()

    def _h2c_data(self, pdu: P.Pdu) -> None:
        cccid, ttag, datao, datal = P.parse_data_hdr(pdu.hdr)
        req = self.ttags.get(ttag)
        hdr = bytes(pdu.hdr)
        if req is None:
            return self.fatal(
                P.FES_INVALID_HEADER_FIELD, P.OFF_DATA_TTAG, f"unknown TTAG {ttag}", hdr
            )
        if cccid != req.cid:
            return self.fatal(
                P.FES_INVALID_HEADER_FIELD, P.OFF_DATA_CCCID, f"CCCID {cccid} != {req.cid}", hdr
            )
        if datao != req.xfer_off:
            return self.fatal(
                P.FES_DATA_OUT_OF_RANGE, P.OFF_DATA_DATAO, f"DATAO {datao} != {req.xfer_off}", hdr
            )
        if datao + datal > req.sgl_len:
            return self.fatal(
                P.FES_DATA_OUT_OF_RANGE, P.OFF_DATA_DATAL, f"data beyond {req.sgl_len} bytes", hdr
            )
        assert pdu.data is not None
        if not pdu.ddgst_ok:
            self.target.stats["ddgst_errors"] += 1
            req.data_err = True
        iov = req.iov
        if iov is not None:
            _copy_in(iov, datao, pdu.data)  # into the pool buffers
        elif datao == 0 and datal == req.sgl_len:
            req.data = pdu.data  # zero copy: the whole transfer in one PDU
        else:
            if req.buf is None:
                req.buf = self._get_buf(req.sgl_len)
            req.buf[datao : datao + datal] = pdu.data
        req.xfer_off = datao + datal
        if TRACE.mask & G_NVMF_TCP:
            TRACE.rec(_TP | _tr.REQ_H2C, self.tp_id, req.cid, datao, datal)
        if req.xfer_off < req.sgl_len:
            return
        del self.ttags[ttag]
        if iov is not None:
            if len(iov.views) == 1:
                req.data = iov.views[0][: req.sgl_len]
            elif req.opcode != spec.IO_WRITE or self.qid <= 0:
                # only Write moves chunk by chunk; other commands with more
                # than one chunk (Compare above 128 KiB) get one MDTS-bounded copy
                req.data = memoryview(b"".join(iov.views))[: req.sgl_len]
        elif req.buf is not None:
            req.data = memoryview(req.buf)[: req.sgl_len]
        if req.data_err:
            return self.complete(req, spec.ST_TRANSIENT_TRANSPORT_ERROR)
        self.execute(req)

    def _get_buf(self, n: int) -> bytearray:
        if self._pool and n <= self.opts.max_io_size:
            return self._pool.pop()
        return bytearray(max(n, self.opts.max_io_size) if n <= self.opts.max_io_size else n)

    def release_transfer(self, req: Request) -> None:
        if req.buf is not None:
            if len(self._pool) < 8 and len(req.buf) == self.opts.max_io_size:
                self._pool.append(req.buf)
            req.buf = None
        if req.ttag and self.ttags.get(req.ttag) is req:
            del self.ttags[req.ttag]

    def pending_transfers(self) -> list[Request]:
        return list(self.ttags.values())

    # ------------------------------------------------------------ output side
    def send_response(self, req: Request, status: int, result: int) -> None:
        if TRACE.mask & G_NVMF_TCP:
            TRACE.rec(_TP | _tr.REQ_RESP, self.tp_id, req.cid, 0, 0, status)
        self.out_bytes += 24
        if not self.hdgst:
            self.out.append(
                _RESP_PACK(
                    P.CAPSULE_RESP,
                    0,
                    24,
                    0,
                    24,
                    result,
                    self.sqhd,
                    max(self.qid, 0),
                    req.cid,
                    status,
                )
            )
            return
        self.out.extend(
            P.encode_capsule_resp(req.cid, status, result, self.sqhd, max(self.qid, 0), self.hdgst)
        )

    def send_data(self, req: Request, mv: memoryview, status: int, result: int) -> bool:
        """C2HData PDUs (split at the C2H unit); True when the last one
        carries SUCCESS (the host disabled SQ flow control): no CapsuleResp."""
        n = len(mv)
        self.out_bytes += n
        success = (
            status == 0
            and result == 0
            and self.sq_flow_disabled
            and self.opts.c2h_success
            and n > 0
        )
        if TRACE.mask & G_NVMF_TCP:
            TRACE.rec(_TP | _tr.REQ_DATA, self.tp_id, req.cid, 0, n, success)
        unit = self.c2h_unit
        if 0 < n <= unit and not (self.hdgst or self.ddgst or self.hpda):
            # the common case: one C2HData PDU, header packed here
            flags = _C2H_SUCCESS_LAST if success else P.FLAG_DATA_LAST
            out = self.out
            out.append(_DATA_PACK(P.C2H_DATA, flags, 24, 24, 24 + n, req.cid, 0, 0, n))
            out.append(mv)
        elif n <= unit:
            if n:
                P.encode_data(
                    P.C2H_DATA,
                    req.cid,
                    0,
                    0,
                    mv,
                    True,
                    success,
                    self.hdgst,
                    self.ddgst,
                    self.hpda,
                    self.out,
                )
        else:
            off = 0
            while off < n:
                chunk = mv[off : off + unit]
                last = off + len(chunk) >= n
                P.encode_data(
                    P.C2H_DATA,
                    req.cid,
                    0,
                    off,
                    chunk,
                    last,
                    success and last,
                    self.hdgst,
                    self.ddgst,
                    self.hpda,
                    self.out,
                )
                off += len(chunk)
        return success

    # ------------------------------------------------------------ teardown
    def transport_close(self) -> None:
        """From QueuePair.close: stop the timers, close the socket once the
        queued output is out (the driver, via on_close)."""
        self.want_close = True
        for t in (self._conn_timer, self._h2c_timer):
            if t is not None:
                t.cancel()
        self._conn_timer = self._h2c_timer = None
        self.ttags.clear()
        if self._wake_cb is None:
            self.release_tx()  # sans-I/O: nothing is still being sent
        if self.on_close is not None:
            self.on_close(self)

    def __repr__(self) -> str:
        return f"<TcpQpair {self.peer} qid={self.qid} cntlid={self.cntlid}>"


def _copy_in(iov: IoVec, off: int, data: memoryview) -> None:
    """Copy ``data`` to byte ``off`` of a transfer's pool chunks."""
    i, o = divmod(off, CHUNK)
    pos, n = 0, len(data)
    views = iov.views
    while pos < n:
        v = views[i]
        k = min(len(v) - o, n - pos)
        v[o : o + k] = data[pos : pos + k]
        pos += k
        i += 1
        o = 0
