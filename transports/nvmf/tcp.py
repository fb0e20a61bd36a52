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
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

from ...bdevs.base import IoStatus
from . import admin, fabrics, io, spec
from . import pdu as P
from .core import NvmfTarget, QueuePair

log = logging.getLogger(__name__)

HPDA_MAX = 31
XFER_NONE, XFER_H2C, XFER_C2H = 0, 1, 2


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
        "h2c_off",
        "buf",
        "done",
        "ddgst_err",
        "fused",
        "ctx",
    )

    def __init__(
        self, qp: TcpQpair, sqe: spec.Sqe, cid: int = 0, opcode: int = 0, nsid: int = 0
    ) -> None:
        # the Read/Write fast path passes _FAST_SQE and the decoded fields
        self.qp = qp
        self.sqe = sqe
        if sqe is not _FAST_SQE:
            cid, opcode, nsid = sqe.cid, sqe.opcode, sqe.nsid
        self.cid = cid
        self.opcode = opcode
        self.nsid = nsid
        self.sgl_len = 0
        self.xfer = XFER_NONE
        self.data: memoryview | None = None  # host data, once complete
        self.ttag = 0
        self.h2c_off = 0
        self.buf: bytearray | None = None
        self.done = False
        self.ddgst_err = False
        self.fused: Request | None = None
        self.ctx: Any = None  # command-specific state (e.g. connect)

    def complete(self, status: int = 0, result: int = 0) -> None:
        self.qp.complete(self, status, result)

    def complete_with_data(
        self, data: bytes | bytearray | memoryview, status: int = 0, result: int = 0
    ) -> None:
        self.qp.complete_with_data(self, data, status, result)

    # bound-method callbacks of the fast path (no closure per command)
    def read_done(self, status: IoStatus, data: memoryview | None) -> None:
        if status:
            return self.qp.complete(self, io.status_of(status, True))
        if data is None or len(data) < self.sgl_len:
            return self.qp.complete(self, spec.ST_DATA_TRANSFER_ERROR)
        self.qp.complete_with_data(self, data)

    def write_done(self, status: IoStatus) -> None:
        self.qp.complete(self, io.status_of(status) if status else 0)


_FAST_SQE = spec.Sqe(0, 0, 0, 0, 0, 0, 0, bytes(16), 0, 0, 0, 0, 0, 0)
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
        super().__init__(target, listener, peer)
        opts = target.opts
        self.opts = opts
        self.maxh2cdata = opts.max_io_size
        self.c2h_unit = max(4096, min(opts.io_unit_size, opts.max_io_size))
        self.reader = P.PduReader(
            P.CONTROLLER,
            max_data={P.CAPSULE_CMD: opts.admin_icd, P.H2C_DATA: self.maxh2cdata},
            bufsize=max(1 << 18, 2 * (opts.max_io_size + 256)),
        )
        self.hdgst = False
        self.ddgst = False
        self.hpda = 0
        self.cpda = 0
        self.maxr2t = 0
        self.ic_done = False
        self.out: list[Any] = []
        self.want_close = False
        self.wake = wake
        self.on_close = on_close
        self.reqs: dict[int, Request] = {}
        self.ttags: dict[int, Request] = {}
        self._next_ttag = 0
        self._pool: list[bytearray] = []
        self.fused_first: Request | None = None
        self.close_reason = ""
        target.qpairs.add(self)

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

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Feed bytes, return the output produced (sans-I/O tests)."""
        self.feed_input(data)
        return self.take_output()

    def take_output(self) -> list[Any]:
        out, self.out = self.out, []
        return out

    def process(self) -> None:
        if self.want_close or self.closed:
            return
        reader = self.reader
        try:
            while True:
                if self.fast_ok:
                    self._fast_loop()
                pdu = reader.next_pdu()
                if pdu is None:
                    return
                self._handle(pdu)
                if self.want_close:
                    return
        except P.PduError as e:
            self.fatal(e.fes, e.fei, e.msg, e.header)

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
        namespaces = self.subsys.namespaces  # type: ignore[union-attr]
        icd = min(r.max_data.get(P.CAPSULE_CMD, 1 << 30), self.opts.in_capsule_data_size)
        max_io = self.opts.max_io_size
        ch_unpack = P.CH.unpack_from
        rw_unpack = _RW.unpack_from
        n_io = 0
        try:
            while end - s >= 72:
                t, fl, hl, pdo, plen = ch_unpack(buf, s)
                if t != 4 or fl or hl != 72:
                    return
                op, flags, cid, nsid, addr, sgl_len, ident, c10, c11, c12 = rw_unpack(buf, s + 8)
                if flags != _FLAGS_SGL or cid in reqs or len(reqs) >= limit:
                    return
                # what io._channel checks, for a namespace whose channel is open
                ns = namespaces.get(nsid)
                if ns is None:
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
                    if ident != _SGL_INCAPSULE or sgl_len != n or addr or n > icd:
                        return
                    if pdo != 72 or plen != 72 + n or end - s < plen:
                        return
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
                    ch.write(slba, req.data, req.write_done)
                else:
                    return
                if self.want_close:
                    return
        finally:
            if n_io:
                self.target.stats["completed_nvme_io"] += n_io

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
        )

    def fatal(self, fes: int, fei: int, msg: str, header: bytes = b"") -> None:
        """Send a C2HTermReq and close after it is flushed."""
        if self.want_close:
            return
        log.warning("nvmf-tcp %s: fatal error (FES %#x, FEI %d): %s", self.peer, fes, fei, msg)
        self.out.append(P.encode_term_req(P.C2H_TERM_REQ, fes, fei, header))
        self.close_reason = msg
        self.want_close = True
        self.reader.failed = self.reader.failed or P.PduError(fes, fei, msg)
        self._wake()

    def _wake(self) -> None:
        if self.wake is not None:
            self.wake()

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
            log.info(
                "nvmf-tcp %s: host terminated the connection (FES %#x FEI %d)", self.peer, fes, fei
            )
            self.close_reason = "H2CTermReq"
            self.want_close = True
            self._wake()

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
        self.ic_done = True

    # -- commands ------------------------------------------------------------
    def queue_limit(self) -> int:
        if self.qid < 0:
            return self.opts.max_aq_depth
        return self.sqsize + 1

    def _capsule(self, pdu: P.Pdu) -> None:
        sqe = spec.unpack_sqe(pdu.hdr, 8)
        if len(self.reqs) >= self.queue_limit():
            return self.fatal(
                P.FES_PDU_SEQUENCE_ERROR,
                0,
                f"more than {self.queue_limit()} commands outstanding",
                bytes(pdu.hdr),
            )
        if self.qid >= 0:
            self.sqhd = (self.sqhd + 1) % (self.sqsize + 1)
        req = Request(self, sqe)
        if sqe.cid in self.reqs:
            # answer without touching the command already using this CID
            req.done = True
            self._send_resp(req.cid, spec.status_field(0, spec.SC_CMDID_CONFLICT, dnr=True), 0)
            return
        self.reqs[sqe.cid] = req
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
                return self.complete(req, spec.ST_TRANSIENT_TRANSPORT_ERROR)
            req.sgl_len = sgl.length
            if sgl.length and data is not None:
                req.data = data[sgl.address : sgl.address + sgl.length]
            return self._execute(req)
        if ident == spec.SGL_TYPE_TRANSPORT:
            if data is not None:
                return self.complete(req, spec.ST_INVALID_FIELD)
            if sgl.length > self.opts.max_io_size:
                return self.complete(req, spec.ST_DATA_SGL_LENGTH_INVALID)
            req.sgl_len = sgl.length
            if req.xfer & XFER_H2C and sgl.length:
                return self._send_r2t(req)
            return self._execute(req)
        if sgl.length == 0 and ident == 0:
            return self._execute(req)  # an all-zero descriptor: no data
        return self.complete(req, spec.ST_SGL_INVALID_TYPE)

    def _execute(self, req: Request) -> None:
        if self.fused_first is not None or req.sqe.fuse:
            io.fused_gate(req)
            return
        dispatch(req)

    def _send_r2t(self, req: Request) -> None:
        ttag = self._next_ttag
        while True:
            ttag = (ttag + 1) & 0xFFFF
            if ttag not in self.ttags:
                break
        self._next_ttag = ttag
        req.ttag = ttag
        self.ttags[ttag] = req
        # one R2T for the whole transfer (max_io_size == MAXH2CDATA)
        self.out.extend(P.encode_r2t(req.cid, ttag, 0, req.sgl_len, self.hdgst))

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
        if datao != req.h2c_off:
            return self.fatal(
                P.FES_DATA_OUT_OF_RANGE, P.OFF_DATA_DATAO, f"DATAO {datao} != {req.h2c_off}", hdr
            )
        if datao + datal > req.sgl_len:
            return self.fatal(
                P.FES_DATA_OUT_OF_RANGE, P.OFF_DATA_DATAL, f"data beyond {req.sgl_len} bytes", hdr
            )
        assert pdu.data is not None
        if not pdu.ddgst_ok:
            req.ddgst_err = True
        if datao == 0 and datal == req.sgl_len:
            req.data = pdu.data  # zero copy: the whole transfer in one PDU
        else:
            if req.buf is None:
                req.buf = self._get_buf(req.sgl_len)
            req.buf[datao : datao + datal] = pdu.data
        req.h2c_off = datao + datal
        if req.h2c_off < req.sgl_len:
            return
        del self.ttags[ttag]
        if req.buf is not None:
            req.data = memoryview(req.buf)[: req.sgl_len]
        if req.ddgst_err:
            return self.complete(req, spec.ST_TRANSIENT_TRANSPORT_ERROR)
        self._execute(req)

    def _get_buf(self, n: int) -> bytearray:
        if self._pool and n <= self.opts.max_io_size:
            return self._pool.pop()
        return bytearray(max(n, self.opts.max_io_size) if n <= self.opts.max_io_size else n)

    def _release(self, req: Request) -> None:
        req.data = None
        if req.buf is not None:
            if len(self._pool) < 8 and len(req.buf) == self.opts.max_io_size:
                self._pool.append(req.buf)
            req.buf = None
        if req.ttag and self.ttags.get(req.ttag) is req:
            del self.ttags[req.ttag]

    # ------------------------------------------------------------ output side
    def _send_resp(self, cid: int, status: int, result: int) -> None:
        if not self.hdgst:
            self.out.append(
                _RESP_PACK(
                    P.CAPSULE_RESP, 0, 24, 0, 24, result, self.sqhd, max(self.qid, 0), cid, status
                )
            )
            return
        self.out.extend(
            P.encode_capsule_resp(cid, status, result, self.sqhd, max(self.qid, 0), self.hdgst)
        )

    def _finish(self, req: Request, status: int) -> bool:
        if req.done or self.closed:
            return False
        req.done = True
        if self.reqs.get(req.cid) is req:
            del self.reqs[req.cid]
        self._release(req)
        if status and self.ctrl is not None:
            self.ctrl.record_error(max(self.qid, 0), req.cid, status, req.nsid)
        return True

    def complete(self, req: Request, status: int = 0, result: int = 0) -> None:
        if not self._finish(req, status):
            return
        self._send_resp(req.cid, status, result)
        self._wake()

    def complete_with_data(
        self, req: Request, data: bytes | bytearray | memoryview, status: int = 0, result: int = 0
    ) -> None:
        if req.done or self.closed:
            return
        n = min(len(data), req.sgl_len)
        mv = data if isinstance(data, memoryview) else memoryview(data)
        if n < len(mv):
            mv = mv[:n]
        success = (
            status == 0
            and result == 0
            and self.sq_flow_disabled
            and self.opts.c2h_success
            and n > 0
        )
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
        if not self._finish(req, status):
            return
        if not success:
            self._send_resp(req.cid, status, result)
        self._wake()

    # ------------------------------------------------------------ teardown
    def close(self, reason: str = "") -> None:
        """Stop the queue pair (the driver closes the socket via on_close)."""
        if self.closed:
            return
        self.closed = True
        self.want_close = True
        self.close_reason = self.close_reason or reason
        for req in list(self.reqs.values()):
            req.done = True
            req.data = None
        self.reqs.clear()
        self.ttags.clear()
        self.target.qpair_closed(self)
        if self.on_close is not None:
            self.on_close(self)

    def __repr__(self) -> str:
        return f"<TcpQpair {self.peer} qid={self.qid} cntlid={self.cntlid}>"


def dispatch(req: Request) -> None:
    """Route a command whose data (if any) has arrived."""
    qp = req.qp
    if req.opcode == spec.FABRICS_OPCODE:
        fabrics.execute(req)
    elif qp.qid > 0:
        io.execute(req)
    elif qp.qid == 0 and qp.ctrl is not None:
        admin.execute(req)
    else:
        # no Connect yet: only the fabrics Connect command is allowed
        qp.complete(req, spec.ST_CMD_SEQ_ERROR)
