"""Sans-I/O NVMe/TCP host queue pair.

Takes received bytes (``recv_buffer()``/``received(n)`` for ``recv_into``, or
``feed(data)``), produces outgoing buffers (``tx``, a list ready for
``sendmsg``) and completes commands through per-command callbacks. No
sockets, no clocks except the submit timestamp used for timeouts and latency.

Framing and PDU encoding reuse the direction-agnostic codec in
``transports/nvmf/pdu.py`` (the target uses the same module); this module
adds the host's state: IC negotiation, command ids, queue-depth flow
control, in-capsule data, R2T -> H2CData, C2HData reassembly.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

from crc32c import crc32c

from ..nvmf import pdu as P
from ..nvmf import spec as S

# ------------------------------------------------------------ status names
# host-generated statuses (path related, SCT 3) for commands the transport
# could not finish: the connection died, or the host gave up waiting
SC_HOST_PATH_ERROR = 0x70
SC_ABORTED_BY_HOST = 0x71
ST_HOST_PATH_ERROR = S.status_field(S.SCT_PATH, SC_HOST_PATH_ERROR)
ST_ABORTED_BY_HOST = S.status_field(S.SCT_PATH, SC_ABORTED_BY_HOST)

STATUS_NAMES: dict[tuple[int, int], str] = {
    **S.STATUS_NAMES,
    (0, 0x05): "Commands Aborted due to Power Loss Notification",
    (0, 0x1D): "Keep Alive Timer Expired",
    (0, 0x84): "Format in Progress",
    (1, 0x00): "Completion Queue Invalid",
    (1, 0x06): "Invalid Format",
    (1, 0x0A): "Asynchronous Event Request Limit Exceeded",
    (1, 0x0B): "Invalid Firmware Slot",
    (1, 0x0C): "Invalid Firmware Image",
    (1, 0x0F): "Feature Not Namespace Specific",
    (3, 0x00): "Internal Path Error",
    (3, 0x01): "Asymmetric Access Persistent Loss",
    (3, 0x02): "Asymmetric Access Inaccessible",
    (3, 0x03): "Asymmetric Access Transition",
    (3, 0x60): "Controller Pathing Error",
    (3, SC_HOST_PATH_ERROR): "Host Pathing Error",
    (3, SC_ABORTED_BY_HOST): "Command Aborted By Host",
}

FES_NAMES = {
    P.FES_INVALID_HEADER_FIELD: "Invalid PDU Header Field",
    P.FES_PDU_SEQUENCE_ERROR: "PDU Sequence Error",
    P.FES_HDGST_ERROR: "Header Digest Error",
    P.FES_DATA_OUT_OF_RANGE: "Data Transfer Out of Range",
    P.FES_DATA_LIMIT_EXCEEDED: "Data Transfer Limit Exceeded",
    P.FES_UNSUPPORTED_PARAMETER: "Unsupported Parameter",
}


def status_name(status: int) -> str:
    """Name of a CQE status field (16 bits: DNR, M, SCT, SC, P)."""
    sct, sc, _dnr = S.split_status(status)
    return STATUS_NAMES.get((sct, sc), f"SCT {sct:#x} SC {sc:#04x}")


def status_str(status: int) -> str:
    sct, sc, dnr = S.split_status(status)
    return f"{status_name(status)} (sct={sct:#x} sc={sc:#04x}{' dnr' if dnr else ''})"


def fes_name(fes: int) -> str:
    return FES_NAMES.get(fes, f"FES {fes:#x}")


IOV_MAX_SEND = 512  # iovecs per sendmsg (IOV_MAX is 1024 on Linux)


class NvmeStatusError(Exception):
    """A command completed with a non-zero status."""

    def __init__(self, status: int, what: str = "") -> None:
        self.status = status
        self.sct, self.sc, self.dnr = S.split_status(status)
        self.name = status_name(status)
        super().__init__(f"{what + ': ' if what else ''}{status_str(status)}")


class TransportError(Exception):
    """The queue pair is dead (TermReq, framing error, connection lost)."""

    def __init__(self, msg: str, fes: int = 0, fei: int = 0) -> None:
        super().__init__(msg)
        self.fes = fes
        self.fei = fei


class QueueFull(Exception):
    pass


# ------------------------------------------------------------ the request
Completion = Callable[["Request", int, int], Any]  # (req, status, result)


class Request:
    """One command slot; preallocated per CID and reused."""

    __slots__ = (
        "cid", "opcode", "cb", "rbuf", "wbuf", "xfer", "t0", "ctx", "hdr", "busy", "bad", "short_ok",
    )  # fmt: skip

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.opcode = 0
        self.cb: Completion | None = None
        self.rbuf: memoryview | None = None  # C2H destination
        self.wbuf: memoryview | None = None  # H2C source (after R2T)
        self.xfer = 0  # bytes received (reads)
        self.t0 = 0  # submit time, perf_counter_ns
        self.ctx: Any = None  # caller's cookie
        self.hdr = bytearray(72)  # CapsuleCmd CH + SQE, packed in place
        self.busy = False
        self.bad = False  # a C2HData PDU of this command failed its data digest
        self.short_ok = False  # less data than the buffer is a success (Authentication Receive)


_CAP_CH = struct.Struct("<BBBBI")
_SQE_RW = struct.Struct("<BBHIIIQQIBBBBIIIIII")  # SQE with SGL spelled out
_SGL_TRANSPORT = S.SGL_TYPE_TRANSPORT
_SGL_INCAPSULE = S.SGL_TYPE_INCAPSULE
_PSDT = S.PSDT_SGL << 6


_CH = P.CH
_DATA_FIELDS = struct.Struct("<HHII").unpack_from
_CQE = S.CQE.unpack_from
_C2H_DATA = P.C2H_DATA
_CAPSULE_RESP = P.CAPSULE_RESP
_LAST = P.FLAG_DATA_LAST
_SUCCESS = P.FLAG_DATA_SUCCESS
_C2H_FLAGS = _LAST | _SUCCESS
_ST_XFER = S.ST_DATA_TRANSFER_ERROR


def _align(n: int, pda: int) -> int:
    unit = (pda + 1) * 4
    return (n + unit - 1) // unit * unit


class HostQueue:
    """One NVMe/TCP queue pair, host side.

    Life cycle: ``start()`` queues the ICReq; once the ICResp is processed
    ``ic_done`` is True; then ``connect(...)`` (a Fabrics Connect command)
    and ordinary commands. ``tx`` holds buffers to send, in order.
    """

    def __init__(
        self,
        qid: int = 0,
        qsize: int = 32,
        hdgst: bool = False,
        ddgst: bool = False,
        hpda: int = 0,
        bufsize: int = 1 << 18,
    ) -> None:
        if not 2 <= qsize <= 65536:
            raise ValueError("qsize must be 2..65536")
        self.qid = qid
        self.qsize = qsize
        self.want_hdgst = hdgst
        self.want_ddgst = ddgst
        self.hpda = hpda
        self.hdgst = False
        self.ddgst = False
        self.cpda = 0
        self.maxh2cdata = 0
        self.ic_done = False
        self.connected = False
        self.cntlid = 0xFFFF
        self.icd_max = 0  # in-capsule data bytes the controller accepts (0 until known)
        self.reader = P.PduReader(role=P.HOST, bufsize=bufsize)
        self.reader.rx_pda = hpda
        self.tx: list[Any] = []
        self.failed: TransportError | None = None
        # one command slot is kept empty (SQ full when tail+1 == head)
        self.max_outstanding = qsize - 1
        self.slots = [Request(cid) for cid in range(self.max_outstanding)]
        self._free = list(range(self.max_outstanding - 1, -1, -1))
        self.outstanding = 0
        self.on_ic: Callable[[], Any] | None = None

    # ------------------------------------------------------------ setup
    def start(self) -> None:
        self.tx.append(P.encode_icreq(self.hpda, self.want_hdgst, self.want_ddgst, 0))

    def _on_icresp(self, pdu: P.Pdu) -> None:
        pfv, cpda, hd, dd, maxh2c = P.parse_ic(pdu.hdr)
        if pfv != 0:
            raise self._fatal(
                P.FES_INVALID_HEADER_FIELD, P.OFF_IC_PFV, f"ICResp PFV {pfv} unsupported"
            )
        if cpda > 31:
            raise self._fatal(
                P.FES_INVALID_HEADER_FIELD, P.OFF_IC_HPDA, f"ICResp CPDA {cpda} invalid"
            )
        if (hd and not self.want_hdgst) or (dd and not self.want_ddgst):
            raise self._fatal(
                P.FES_INVALID_HEADER_FIELD, P.OFF_IC_DGST, "ICResp enables a digest not asked for"
            )
        if maxh2c < 4096 or maxh2c % 4:
            raise self._fatal(
                P.FES_INVALID_HEADER_FIELD, P.OFF_IC_MAXR2T, f"ICResp MAXH2CDATA {maxh2c} invalid"
            )
        self.cpda = cpda
        self.hdgst = bool(hd)
        self.ddgst = bool(dd)
        self.maxh2cdata = maxh2c
        self.reader.hdgst = self.hdgst
        self.reader.ddgst = self.ddgst
        self.reader.ic_done = True
        self.ic_done = True
        if self.on_ic is not None:
            self.on_ic()

    # ---------------------------------------------------- submission
    @property
    def can_submit(self) -> bool:
        return bool(self._free) and self.failed is None

    def _alloc(self, cb: Completion | None, ctx: Any) -> Request:
        if self.failed is not None:
            raise self.failed
        if not self._free:
            raise QueueFull(f"queue {self.qid}: {self.max_outstanding} commands outstanding")
        r = self.slots[self._free.pop()]
        r.busy = True
        r.cb = cb
        r.ctx = ctx
        r.xfer = 0
        r.rbuf = None
        r.wbuf = None
        r.bad = False
        r.short_ok = False
        self.outstanding += 1
        return r

    def submit_sqe(
        self,
        sqe: bytes | bytearray,
        cb: Completion | None = None,
        ctx: Any = None,
        read_into: memoryview | bytearray | None = None,
        write_from: bytes | bytearray | memoryview | None = None,
        t0: int = 0,
    ) -> Request:
        """Submit a prepared 64-byte SQE (its CID and DPTR are filled in here).

        ``read_into``: the buffer C2HData lands in (controller-to-host data);
        ``write_from``: host-to-controller data, sent in the capsule when it
        fits in the controller's in-capsule size, else after R2T.
        """
        r = self._alloc(cb, ctx)
        h = r.hdr
        h[8:72] = sqe
        struct.pack_into("<H", h, 10, r.cid)
        h[9] = (h[9] & 0x3F) | _PSDT  # SGL for data
        r.opcode = h[8]
        data: Any = None
        if write_from is not None and len(write_from):
            wv = memoryview(write_from)
            if len(wv) <= self.icd_max:
                struct.pack_into("<QI3xB", h, 32, 0, len(wv), _SGL_INCAPSULE)
                data = wv
            else:
                struct.pack_into("<QI3xB", h, 32, 0, len(wv), _SGL_TRANSPORT)
                r.wbuf = wv
        elif read_into is not None and len(read_into):
            rv = memoryview(read_into)
            r.rbuf = rv if rv.ndim == 1 and rv.format == "B" else rv.cast("B")
            struct.pack_into("<QI3xB", h, 32, 0, len(rv), _SGL_TRANSPORT)
        else:
            struct.pack_into("<QI3xB", h, 32, 0, 0, _SGL_TRANSPORT)
        self._emit_capsule(r, data)
        r.t0 = t0 or time.perf_counter_ns()
        return r

    def _emit_capsule(self, r: Request, data: Any) -> None:
        hd = 4 if self.hdgst else 0
        flags = P.FLAG_HDGSTF if hd else 0
        h = r.hdr
        if data is None:
            _CAP_CH.pack_into(h, 0, P.CAPSULE_CMD, flags, 72, 0, 72 + hd)
            self.tx.append(h)
            if hd:
                self.tx.append(P.DIGEST.pack(crc32c(h)))
            return
        pdo = _align(72 + hd, self.cpda)
        dd = 4 if self.ddgst else 0
        if dd:
            flags |= P.FLAG_DDGSTF
        _CAP_CH.pack_into(h, 0, P.CAPSULE_CMD, flags, 72, pdo, pdo + len(data) + dd)
        tx = self.tx
        tx.append(h)
        if hd:
            tx.append(P.DIGEST.pack(crc32c(h)))
        if pdo > 72 + hd:
            tx.append(bytes(pdo - 72 - hd))
        tx.append(data)
        if dd:
            tx.append(P.DIGEST.pack(crc32c(data)))

    def submit(
        self,
        opcode: int,
        nsid: int = 0,
        cdws: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0),
        cb: Completion | None = None,
        ctx: Any = None,
        read_into: memoryview | bytearray | None = None,
        write_from: bytes | bytearray | memoryview | None = None,
    ) -> Request:
        return self.submit_sqe(S.pack_sqe(opcode, 0, nsid, cdws), cb, ctx, read_into, write_from)

    # ---- fast paths for the data commands (no per-I/O SQE object)
    def read(
        self,
        nsid: int,
        slba: int,
        nlb: int,
        dest: memoryview,
        cb: Completion | None,
        ctx: Any = None,
    ) -> Request:
        r = self._alloc(cb, ctx)
        r.rbuf = dest
        _SQE_RW.pack_into(
            r.hdr,
            8,
            S.IO_READ,
            _PSDT,
            r.cid,
            nsid,
            0,
            0,
            0,
            0,
            len(dest),
            0,
            0,
            0,
            _SGL_TRANSPORT,
            slba & 0xFFFFFFFF,
            slba >> 32,
            nlb - 1,
            0,
            0,
            0,
        )
        r.opcode = S.IO_READ
        self._emit_capsule(r, None)
        r.t0 = time.perf_counter_ns()
        return r

    def write(
        self,
        nsid: int,
        slba: int,
        nlb: int,
        data: memoryview,
        cb: Completion | None,
        ctx: Any = None,
        fua: bool = False,
    ) -> Request:
        """Write; ``fua`` sets Force Unit Access (CDW12 bit 30)."""
        r = self._alloc(cb, ctx)
        n = len(data)
        inc = n <= self.icd_max
        _SQE_RW.pack_into(
            r.hdr,
            8,
            S.IO_WRITE,
            _PSDT,
            r.cid,
            nsid,
            0,
            0,
            0,
            0,
            n,
            0,
            0,
            0,
            _SGL_INCAPSULE if inc else _SGL_TRANSPORT,
            slba & 0xFFFFFFFF,
            slba >> 32,
            (nlb - 1) | (0x40000000 if fua else 0),
            0,
            0,
            0,
        )
        r.opcode = S.IO_WRITE
        if inc:
            self._emit_capsule(r, data)
        else:
            r.wbuf = data
            self._emit_capsule(r, None)
        r.t0 = time.perf_counter_ns()
        return r

    # ---- fabrics
    def connect(
        self,
        subnqn: str,
        hostnqn: str,
        hostid: bytes,
        cntlid: int = 0xFFFF,
        kato_ms: int = 0,
        cb: Completion | None = None,
        disable_sqflow: bool = False,
    ) -> Request:
        """Fabrics Connect for this queue (admin: cntlid 0xFFFF = dynamic).

        ``disable_sqflow`` asks the controller to stop SQ flow control (the
        host never relies on SQHD); it may then end a read with a C2HData
        PDU carrying the SUCCESS flag instead of a separate CapsuleResp."""
        if len(hostid) != 16:
            raise ValueError("hostid must be 16 bytes")
        data = bytearray(S.CONNECT_DATA_SIZE)
        data[0:16] = hostid
        struct.pack_into("<H", data, S.CONNECT_DATA_OFF_CNTLID, cntlid)
        sn = subnqn.encode()
        hn = hostnqn.encode()
        if len(sn) > 255 or len(hn) > 255:
            raise ValueError("NQN longer than 255 bytes")
        data[256 : 256 + len(sn)] = sn
        data[512 : 512 + len(hn)] = hn
        sqe = bytearray(64)
        sqe[0] = S.FABRICS_OPCODE
        sqe[4] = S.FCTYPE_CONNECT
        # recfmt 0, qid, sqsize (0's based), cattr, kato
        cattr = S.CATTR_DISABLE_SQ_FLOW if disable_sqflow else 0
        struct.pack_into("<HHHBxI", sqe, 40, 0, self.qid, self.qsize - 1, cattr, kato_ms)
        # Connect data always travels in the capsule (the controller must accept it)
        saved = self.icd_max
        self.icd_max = max(saved, S.CONNECT_DATA_SIZE)
        try:
            return self.submit_sqe(bytes(sqe), self._connect_done(cb), None, write_from=data)
        finally:
            self.icd_max = saved

    def _connect_done(self, cb: Completion | None) -> Completion:
        def done(r: Request, status: int, result: int) -> None:
            if status == 0:
                self.connected = True
                if self.qid == 0:
                    self.cntlid = result & 0xFFFF
            if cb is not None:
                cb(r, status, result)

        return done

    def property_get(self, offset: int, size8: bool, cb: Completion | None = None) -> Request:
        sqe = bytearray(64)
        sqe[0] = S.FABRICS_OPCODE
        sqe[4] = S.FCTYPE_PROPERTY_GET
        struct.pack_into("<B3xI", sqe, 40, 1 if size8 else 0, offset)
        return self.submit_sqe(bytes(sqe), cb)

    def property_set(
        self, offset: int, value: int, size8: bool = False, cb: Completion | None = None
    ) -> Request:
        sqe = bytearray(64)
        sqe[0] = S.FABRICS_OPCODE
        sqe[4] = S.FCTYPE_PROPERTY_SET
        struct.pack_into("<B3xIQ", sqe, 40, 1 if size8 else 0, offset, value)
        return self.submit_sqe(bytes(sqe), cb)

    def auth_send(self, payload: bytes, cb: Completion | None = None) -> Request:
        """Authentication Send (fabrics 05h, SECP E9h, SPSP 01h/01h): one
        DH-HMAC-CHAP message (auth_host.HostAuth), in the capsule when it fits."""
        sqe = bytearray(64)
        sqe[0] = S.FABRICS_OPCODE
        sqe[4] = S.FCTYPE_AUTH_SEND
        struct.pack_into("<xBBBI", sqe, 40, 0x01, 0x01, 0xE9, len(payload))
        return self.submit_sqe(bytes(sqe), cb, None, write_from=payload)

    def auth_recv(self, into: bytearray, cb: Completion | None = None) -> Request:
        """Authentication Receive of ``len(into)`` bytes (the allocation length)."""
        sqe = bytearray(64)
        sqe[0] = S.FABRICS_OPCODE
        sqe[4] = S.FCTYPE_AUTH_RECV
        struct.pack_into("<xBBBI", sqe, 40, 0x01, 0x01, 0xE9, len(into))
        r = self.submit_sqe(bytes(sqe), cb, None, read_into=into)
        r.short_ok = True  # the message may be shorter; r.xfer says how long
        return r

    # ------------------------------------------------------ receive side
    def recv_buffer(self) -> memoryview:
        """Writable view to ``recv_into``; then call ``received(n)``."""
        return self.reader.get_buffer()

    def received(self, n: int) -> int:
        """Process ``n`` new bytes; returns the number of commands completed.
        Raises TransportError when the queue pair must be torn down."""
        self.reader.commit(n)
        return self._process()

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        mv = memoryview(data)
        done = 0
        while mv:
            buf = self.reader.get_buffer()
            k = min(len(buf), len(mv))
            buf[:k] = mv[:k]
            del buf
            mv = mv[k:]
            done += self.received(k)
        return done

    def _process(self) -> int:
        if self.failed is not None:
            raise self.failed
        done = 0
        reader = self.reader
        if self.ic_done and not (self.hdgst or self.ddgst or self.hpda) and reader.failed is None:
            done = self._fast_rx()
        try:
            for pdu in reader.pdus():
                t = pdu.type
                if t == P.CAPSULE_RESP:
                    done += self._on_resp(pdu)
                elif t == P.C2H_DATA:
                    done += self._on_c2h(pdu)
                elif t == P.R2T:
                    self._on_r2t(pdu)
                elif t == P.ICRESP:
                    self._on_icresp(pdu)
                elif t == P.C2H_TERM_REQ:
                    fes, fei = P.parse_term(pdu.hdr)
                    e = TransportError(
                        f"controller terminated the connection: C2HTermReq {fes_name(fes)} "
                        f"(FES {fes:#x}, FEI {fei})",
                        fes,
                        fei,
                    )
                    self.failed = e
                    raise e
        except P.PduError as pe:
            raise self._fatal(pe.fes, pe.fei, pe.msg, pe.header) from None
        return done

    def _fast_rx(self) -> int:
        """CapsuleResp and C2HData PDUs straight from the receive buffer (no
        Pdu objects). Stops at anything else or anything suspicious, which
        the general path then handles (and reports) exactly as before."""
        r = self.reader
        buf = r._buf
        s = r._start
        end = r._end
        slots = self.slots
        nslots = len(slots)
        ch_unpack = _CH.unpack_from
        done = 0
        mv = memoryview(buf)
        try:
            while end - s >= 24:
                t, fl, hl, pdo, plen = ch_unpack(buf, s)
                if t == _C2H_DATA:
                    if hl != 24 or pdo != 24 or fl & ~_C2H_FLAGS or end - s < plen:
                        return done
                    cid, _ttag, datao, datal = _DATA_FIELDS(buf, s + 8)
                    if datal != plen - 24 or not datal or cid >= nslots:
                        return done
                    req = slots[cid]
                    dst = req.rbuf
                    if not req.busy or dst is None or datao != req.xfer:
                        return done
                    if datao + datal > len(dst) or fl & _SUCCESS and not fl & _LAST:
                        return done
                    dst[datao : datao + datal] = mv[s + 24 : s + plen]
                    req.xfer = datao + datal
                    s += plen
                    r._start = s
                    if fl & _SUCCESS:
                        ok = req.xfer == len(dst) or req.short_ok
                        self._complete(req, 0 if ok else _ST_XFER, 0)
                        done += 1
                elif t == _CAPSULE_RESP:
                    if fl or hl != 24 or pdo or plen != 24:
                        return done
                    result, _sqhd, _sqid, cid, status = _CQE(buf, s + 8)
                    if cid >= nslots or not slots[cid].busy:
                        return done
                    req = slots[cid]
                    s += 24
                    r._start = s
                    status &= 0xFFFE  # no phase tag on fabrics
                    if status == 0:
                        if req.bad:
                            status = S.ST_TRANSIENT_TRANSPORT_ERROR
                        elif req.rbuf is not None and req.xfer != len(req.rbuf):
                            if not req.short_ok:
                                status = _ST_XFER  # success with data missing
                    self._complete(req, status, result)
                    done += 1
                else:
                    return done
                if self.failed is not None:
                    return done
            return done
        finally:
            del mv

    def _fatal(self, fes: int, fei: int, msg: str, hdr: bytes = b"") -> TransportError:
        """Queue an H2CTermReq and mark the queue failed."""
        if self.failed is None:
            self.tx.append(P.encode_term_req(P.H2C_TERM_REQ, fes, fei, hdr))
            self.failed = TransportError(f"protocol error: {msg} ({fes_name(fes)})", fes, fei)
        return self.failed

    def _req(self, cid: int, what: str, hdr: memoryview, off: int) -> Request:
        if cid >= len(self.slots) or not self.slots[cid].busy:
            raise self._fatal(
                P.FES_INVALID_HEADER_FIELD, off, f"{what} for unknown CID {cid}", bytes(hdr)
            )
        return self.slots[cid]

    def _complete(self, r: Request, status: int, result: int) -> None:
        r.busy = False
        cb = r.cb
        r.cb = None
        r.rbuf = None
        r.wbuf = None
        self.outstanding -= 1
        self._free.append(r.cid)
        if cb is not None:
            cb(r, status, result)

    def _on_resp(self, pdu: P.Pdu) -> int:
        result, _sqhd, _sqid, cid, status = S.CQE.unpack_from(pdu.hdr, 8)
        r = self._req(cid, "CapsuleResp", pdu.hdr, 20)
        status &= 0xFFFE  # no phase tag on fabrics
        if status == 0:
            if r.bad:
                status = S.ST_TRANSIENT_TRANSPORT_ERROR
            elif r.rbuf is not None and r.xfer != len(r.rbuf) and not r.short_ok:
                status = S.ST_DATA_TRANSFER_ERROR  # success with data missing
        self._complete(r, status, result)
        return 1

    def _on_c2h(self, pdu: P.Pdu) -> int:
        cid, _ttag, datao, datal = P.parse_data_hdr(pdu.hdr)
        r = self._req(cid, "C2HData", pdu.hdr, P.OFF_DATA_CCCID)
        dst = r.rbuf
        if dst is None or datao + datal > len(dst) or datao != r.xfer:
            raise self._fatal(
                P.FES_DATA_OUT_OF_RANGE,
                P.OFF_DATA_DATAO,
                f"C2HData offset {datao} length {datal} outside the read buffer",
                bytes(pdu.hdr),
            )
        assert pdu.data is not None
        dst[datao : datao + datal] = pdu.data
        r.xfer = datao + datal
        if not pdu.ddgst_ok:
            # bad data, not a bad stream: only this command fails (Transient
            # Transport Error), as the specification asks
            r.bad = True
        flags = pdu.flags
        if flags & P.FLAG_DATA_SUCCESS:
            if not flags & P.FLAG_DATA_LAST:
                raise self._fatal(
                    P.FES_INVALID_HEADER_FIELD,
                    P.OFF_FLAGS,
                    "SUCCESS without LAST_PDU",
                    bytes(pdu.hdr),
                )
            if r.bad:
                st = S.ST_TRANSIENT_TRANSPORT_ERROR
            elif r.xfer != len(dst) and not r.short_ok:
                st = S.ST_DATA_TRANSFER_ERROR
            else:
                st = 0
            self._complete(r, st, 0)
            return 1
        return 0

    def _on_r2t(self, pdu: P.Pdu) -> None:
        cid, ttag, off, length = P.parse_data_hdr(pdu.hdr)
        r = self._req(cid, "R2T", pdu.hdr, P.OFF_DATA_CCCID)
        src = r.wbuf
        if src is None or length == 0 or off + length > len(src):
            raise self._fatal(
                P.FES_DATA_OUT_OF_RANGE,
                P.OFF_DATA_DATAO,
                f"R2T offset {off} length {length} outside the write buffer",
                bytes(pdu.hdr),
            )
        chunk = self.maxh2cdata
        end = off + length
        tx = self.tx
        while off < end:
            n = min(chunk, end - off)
            P.encode_data(
                P.H2C_DATA,
                cid,
                ttag,
                off,
                src[off : off + n],
                last=off + n == end,
                hdgst=self.hdgst,
                ddgst=self.ddgst,
                pda=self.cpda,
                out=tx,
            )
            off += n

    # ------------------------------------------------------- teardown
    def abort_all(self, status: int = ST_HOST_PATH_ERROR) -> int:
        """Complete every outstanding command with ``status`` (connection lost)."""
        n = 0
        for r in self.slots:
            if r.busy:
                self._complete(r, status, 0)
                n += 1
        return n

    def expired(self, now_ns: int, timeout_ns: int) -> list[Request]:
        return [r for r in self.slots if r.busy and now_ns - r.t0 > timeout_ns]

    def take_tx(self) -> list[Any]:
        tx, self.tx = self.tx, []
        return tx


def advance(bufs: list[Any], sent: int) -> list[Any]:
    """Drop ``sent`` bytes from the front of a buffer list (partial sendmsg)."""
    i = 0
    while i < len(bufs):
        n = len(bufs[i]) if not isinstance(bufs[i], memoryview) else bufs[i].nbytes
        if sent < n:
            break
        sent -= n
        i += 1
    rest = bufs[i:]
    if sent and rest:
        rest[0] = memoryview(rest[0])[sent:]
    return rest
