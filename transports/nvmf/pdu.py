"""NVMe/TCP PDU codec (NVMe/TCP Transport Specification 1.0), direction-agnostic.

Owns the wire format only: the 8-byte common header, every PDU type's fixed
header, header/data digests (CRC32C), PDO padding, an incremental framer
(`PduReader`) and encoders that return lists of buffers for ``sendmsg`` so
payload memoryviews are never concatenated. The host side (initiator) uses
the same module with ``PduReader(role=HOST)``.

Errors found while framing are raised as `PduError` carrying the Fatal Error
Status (FES) and Fatal Error Information (FEI: byte offset of the offending
header field) that the receiver puts in its TermReq. A data digest mismatch is
not fatal: the PDU is yielded with ``ddgst_ok=False`` so the receiver can fail
the one command (Transient Transport Error) as the specification asks.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from crc32c import crc32c

# ------------------------------------------------------------------ types
ICREQ = 0x00
ICRESP = 0x01
H2C_TERM_REQ = 0x02
C2H_TERM_REQ = 0x03
CAPSULE_CMD = 0x04
CAPSULE_RESP = 0x05
H2C_DATA = 0x06
C2H_DATA = 0x07
R2T = 0x09

TYPE_NAMES = {
    ICREQ: "ICReq",
    ICRESP: "ICResp",
    H2C_TERM_REQ: "H2CTermReq",
    C2H_TERM_REQ: "C2HTermReq",
    CAPSULE_CMD: "CapsuleCmd",
    CAPSULE_RESP: "CapsuleResp",
    H2C_DATA: "H2CData",
    C2H_DATA: "C2HData",
    R2T: "R2T",
}

# common header flags
FLAG_HDGSTF = 0x01
FLAG_DDGSTF = 0x02
FLAG_DATA_LAST = 0x04
FLAG_DATA_SUCCESS = 0x08

# fixed header lengths (HLEN)
HLEN = {
    ICREQ: 128,
    ICRESP: 128,
    H2C_TERM_REQ: 24,
    C2H_TERM_REQ: 24,
    CAPSULE_CMD: 72,
    CAPSULE_RESP: 24,
    H2C_DATA: 24,
    C2H_DATA: 24,
    R2T: 24,
}
# PDU types that never carry digests
NO_DIGEST_TYPES = frozenset((ICREQ, ICRESP, H2C_TERM_REQ, C2H_TERM_REQ))
# PDU types that may carry data; data PDUs must
DATA_TYPES = frozenset((CAPSULE_CMD, H2C_DATA, C2H_DATA, H2C_TERM_REQ, C2H_TERM_REQ))
TERM_REQ_MAX_DATA = 128  # a TermReq echoes at most 128 bytes of the bad PDU
# what each side may receive
HOST_TO_CTRL = frozenset((ICREQ, H2C_TERM_REQ, CAPSULE_CMD, H2C_DATA))
CTRL_TO_HOST = frozenset((ICRESP, C2H_TERM_REQ, CAPSULE_RESP, C2H_DATA, R2T))
CONTROLLER = "controller"  # role: receives host-to-controller PDUs
HOST = "host"

# Fatal Error Status values
FES_INVALID_HEADER_FIELD = 0x01
FES_PDU_SEQUENCE_ERROR = 0x02
FES_HDGST_ERROR = 0x03
FES_DATA_OUT_OF_RANGE = 0x04
FES_DATA_LIMIT_EXCEEDED = 0x05  # also "R2T limit exceeded"
FES_UNSUPPORTED_PARAMETER = 0x06

# header field offsets, for FEI
OFF_TYPE = 0
OFF_FLAGS = 1
OFF_HLEN = 2
OFF_PDO = 3
OFF_PLEN = 4
OFF_IC_PFV = 8
OFF_IC_HPDA = 10  # ICReq HPDA / ICResp CPDA
OFF_IC_DGST = 11
OFF_IC_MAXR2T = 12  # ICReq MAXR2T / ICResp MAXH2CDATA
OFF_DATA_CCCID = 8
OFF_DATA_TTAG = 10
OFF_DATA_DATAO = 12
OFF_DATA_DATAL = 16

CH = struct.Struct("<BBBBI")
IC = struct.Struct("<BBBBIHBBI112x")  # ICReq and ICResp share the layout
DATA_HDR = struct.Struct("<BBBBIHHII4x")  # H2CData, C2HData, R2T
TERM = struct.Struct("<BBBBIHI10x")
RESP_HDR = struct.Struct("<BBBBIQHHHH")  # CapsuleResp header + CQE in one pack
DIGEST = struct.Struct("<I")
_DATA_FIELDS = struct.Struct("<HHII")


class PduError(Exception):
    """A fatal framing error: the receiver sends a TermReq and closes."""

    def __init__(self, fes: int, fei: int, msg: str, header: bytes = b"") -> None:
        super().__init__(msg)
        self.fes = fes
        self.fei = fei
        self.msg = msg
        self.header = header  # the offending PDU header, echoed in the TermReq


class Pdu:
    """One complete PDU. ``hdr`` is the fixed header (HLEN bytes, without
    digest); ``data`` the payload (None when there is none). Both are views
    into the reader's buffer, valid as long as they are referenced."""

    __slots__ = ("type", "flags", "hlen", "pdo", "plen", "hdr", "data", "ddgst_ok")

    def __init__(
        self,
        type: int,
        flags: int,
        hlen: int,
        pdo: int,
        plen: int,
        hdr: memoryview,
        data: memoryview | None,
        ddgst_ok: bool = True,
    ) -> None:
        self.type = type
        self.flags = flags
        self.hlen = hlen
        self.pdo = pdo
        self.plen = plen
        self.hdr = hdr
        self.data = data
        self.ddgst_ok = ddgst_ok

    def __repr__(self) -> str:
        dl = 0 if self.data is None else len(self.data)
        return f"<Pdu {TYPE_NAMES.get(self.type, self.type)} flags={self.flags:#x} plen={self.plen} data={dl}>"


def digest(data: bytes | bytearray | memoryview) -> bytes:
    return DIGEST.pack(crc32c(data))


def _align(n: int, pda: int) -> int:
    """Round the data offset up to a multiple of (PDA+1)*4 bytes."""
    unit = (pda + 1) * 4
    return (n + unit - 1) // unit * unit


# ------------------------------------------------------------- decoders
def parse_ic(hdr: bytes | memoryview) -> tuple[int, int, int, int, int]:
    """ICReq -> (pfv, hpda, dgst, maxr2t); ICResp -> (pfv, cpda, dgst, maxh2cdata).
    Returned as (pfv, pda, hdgst, ddgst, value)."""
    _t, _f, _h, _p, _pl, pfv, pda, dgst, val = IC.unpack_from(hdr, 0)
    return pfv, pda, dgst & 1, (dgst >> 1) & 1, val


def parse_data_hdr(hdr: bytes | memoryview) -> tuple[int, int, int, int]:
    """H2CData/C2HData -> (cccid, ttag, datao, datal); R2T -> (cccid, ttag, r2to, r2tl)."""
    return _DATA_FIELDS.unpack_from(hdr, 8)


def parse_term(hdr: bytes | memoryview) -> tuple[int, int]:
    """TermReq -> (fes, fei)."""
    _t, _f, _h, _p, _pl, fes, fei = TERM.unpack_from(hdr, 0)
    return fes, fei


# --------------------------------------------------------------- reader
class PduReader:
    """Incremental framer. Either ``feed(data)`` or ``get_buffer()`` +
    ``commit(n)`` (for ``recv_into``), then iterate ``pdus()``.

    Validation depends on the negotiated state, which the owner updates:
    ``ic_done`` (set after ICReq/ICResp), ``hdgst``/``ddgst`` and ``rx_pda``
    (the data alignment the sender must honour: CPDA on the controller,
    HPDA on the host), ``max_data`` (largest payload accepted per type).
    """

    def __init__(
        self,
        role: str = CONTROLLER,
        max_data: dict[int, int] | None = None,
        bufsize: int = 1 << 18,
    ) -> None:
        self.role = role
        self.accepts = HOST_TO_CTRL if role == CONTROLLER else CTRL_TO_HOST
        self.ic_type = ICREQ if role == CONTROLLER else ICRESP
        self.ic_done = False
        self.hdgst = False
        self.ddgst = False
        self.rx_pda = 0
        self.max_data = max_data if max_data is not None else {}
        self.max_plen = 1 << 24  # bounds buffer growth whatever the type
        self._buf = bytearray(bufsize)
        self._start = 0  # first unparsed byte
        self._end = 0  # end of received bytes
        self._need = 8  # bytes the next PDU needs in one piece (at least)
        self.failed: PduError | None = None

    # -- buffer management --------------------------------------------------
    def _exported(self) -> bool:
        """True while any memoryview of the buffer is alive (a PDU still in
        use, e.g. a write an asynchronous bdev has not finished): then the
        buffer must not be overwritten."""
        try:
            self._buf.append(0)
            self._buf.pop()
            return False
        except BufferError:
            return True

    def _make_room(self, want: int) -> None:
        """Ensure ``want`` bytes fit from ``_start``; move or replace the
        buffer (never overwrite bytes a live view may reference)."""
        pending = self._end - self._start
        cap = len(self._buf)
        if self._start + want <= cap and self._end < cap:
            return
        size = max(cap, want)
        if self._start == 0 and size == cap:
            return
        if size == cap and not self._exported():
            if pending:
                self._buf[:pending] = self._buf[self._start : self._end]
        else:
            nb = bytearray(size)
            nb[:pending] = self._buf[self._start : self._end]
            self._buf = nb
        self._start, self._end = 0, pending

    def reserve(self, size: int) -> None:
        """Grow the buffer to ``size`` bytes (keeping unparsed bytes); a
        connection starts small and grows once the IC exchange is done, so an
        idle or half-open connection holds only a few KiB."""
        if size <= len(self._buf):
            return
        pending = self._end - self._start
        nb = bytearray(size)
        nb[:pending] = self._buf[self._start : self._end]
        self._buf = nb
        self._start, self._end = 0, pending

    @property
    def capacity(self) -> int:
        return len(self._buf)

    def get_buffer(self) -> memoryview:
        """Writable view of the free space (drop it before the next call)."""
        if self._start == self._end and self._start:
            # everything parsed: restart at 0 unless old PDUs are still in use
            if self._exported():
                self._buf = bytearray(len(self._buf))
            self._start = self._end = 0
        self._make_room(max(self._need, 4096))
        return memoryview(self._buf)[self._end :]

    def commit(self, n: int) -> None:
        self._end += n

    def feed(self, data: bytes | bytearray | memoryview) -> list[Pdu]:
        """Copy ``data`` in and return the complete PDUs (test/host helper)."""
        out: list[Pdu] = []
        mv = memoryview(data)
        while mv:
            buf = self.get_buffer()
            n = min(len(buf), len(mv))
            buf[:n] = mv[:n]
            del buf
            self.commit(n)
            mv = mv[n:]
            out.extend(self.pdus())
        return out

    @property
    def buffered(self) -> int:
        return self._end - self._start

    # -- framing --------------------------------------------------------------
    def _fail(self, fes: int, fei: int, msg: str, hdr: memoryview) -> PduError:
        e = PduError(fes, fei, msg, bytes(hdr[:TERM_REQ_MAX_DATA]))
        self.failed = e
        return e

    def pdus(self) -> Iterator[Pdu]:
        while True:
            pdu = self.next_pdu()
            if pdu is None:
                return
            yield pdu

    def next_pdu(self) -> Pdu | None:
        """The next complete PDU (consumed), or None until more bytes arrive."""
        if self.failed is not None:
            raise self.failed
        avail = self._end - self._start
        if avail < 8:
            self._need = 8
            return None
        s = self._start
        buf = self._buf
        ptype, flags, hlen, pdo, plen = CH.unpack_from(buf, s)
        mv = memoryview(buf)
        try:
            self._check_header(ptype, flags, hlen, pdo, plen, mv[s : s + 8])
            if avail < plen:
                self._need = plen
                return None
            pdu = self._build(mv, s, ptype, flags, hlen, pdo, plen)
        finally:
            del mv
        self._start = s + plen
        return pdu

    def _check_header(
        self, ptype: int, flags: int, hlen: int, pdo: int, plen: int, ch: memoryview
    ) -> None:
        if ptype not in self.accepts:
            raise self._fail(
                FES_INVALID_HEADER_FIELD, OFF_TYPE, f"unexpected PDU type {ptype:#x}", ch
            )
        # a TermReq may come at any time, even in answer to a bad IC PDU
        if (ptype == self.ic_type) == self.ic_done and ptype not in (H2C_TERM_REQ, C2H_TERM_REQ):
            what = "a second IC PDU" if self.ic_done else f"{TYPE_NAMES[ptype]} before IC exchange"
            raise self._fail(FES_PDU_SEQUENCE_ERROR, OFF_TYPE, what, ch)
        if hlen != HLEN[ptype]:
            raise self._fail(
                FES_INVALID_HEADER_FIELD,
                OFF_HLEN,
                f"{TYPE_NAMES[ptype]} HLEN {hlen} != {HLEN[ptype]}",
                ch,
            )
        hd = 4 if (self.hdgst and ptype not in NO_DIGEST_TYPES) else 0
        if ptype not in NO_DIGEST_TYPES and bool(flags & FLAG_HDGSTF) != bool(hd):
            raise self._fail(
                FES_INVALID_HEADER_FIELD, OFF_FLAGS, "HDGSTF does not match negotiation", ch
            )
        base = hlen + hd
        if plen > self.max_plen:
            raise self._fail(FES_DATA_LIMIT_EXCEEDED, OFF_PLEN, f"PLEN {plen} too large", ch)
        if ptype in (H2C_TERM_REQ, C2H_TERM_REQ):
            if plen < hlen or plen > hlen + TERM_REQ_MAX_DATA:
                raise self._fail(FES_INVALID_HEADER_FIELD, OFF_PLEN, f"TermReq PLEN {plen}", ch)
            return
        if ptype not in DATA_TYPES or plen == base:
            if plen != base:
                raise self._fail(
                    FES_INVALID_HEADER_FIELD,
                    OFF_PLEN,
                    f"{TYPE_NAMES[ptype]} PLEN {plen} != {base}",
                    ch,
                )
            if ptype in (H2C_DATA, C2H_DATA):
                raise self._fail(FES_INVALID_HEADER_FIELD, OFF_PLEN, "data PDU without data", ch)
            if flags & FLAG_DDGSTF:
                raise self._fail(
                    FES_INVALID_HEADER_FIELD, OFF_FLAGS, "DDGSTF on a PDU without data", ch
                )
            return
        # a PDU with data
        if plen < base:
            raise self._fail(FES_INVALID_HEADER_FIELD, OFF_PLEN, f"PLEN {plen} < header {base}", ch)
        dd = 4 if self.ddgst else 0
        if bool(flags & FLAG_DDGSTF) != bool(dd):
            raise self._fail(
                FES_INVALID_HEADER_FIELD, OFF_FLAGS, "DDGSTF does not match negotiation", ch
            )
        if pdo < base or pdo != _align(pdo, self.rx_pda) or pdo + dd >= plen:
            raise self._fail(
                FES_INVALID_HEADER_FIELD, OFF_PDO, f"PDO {pdo} invalid (PLEN {plen})", ch
            )
        dlen = plen - pdo - dd
        limit = self.max_data.get(ptype)
        if limit is not None and dlen > limit:
            raise self._fail(
                FES_DATA_LIMIT_EXCEEDED,
                OFF_PLEN,
                f"{dlen} bytes of data exceed the limit {limit}",
                ch,
            )

    def _build(
        self, buf: memoryview, s: int, ptype: int, flags: int, hlen: int, pdo: int, plen: int
    ) -> Pdu:
        hdr = buf[s : s + hlen]
        hd = 4 if (self.hdgst and ptype not in NO_DIGEST_TYPES) else 0
        if hd:
            got = DIGEST.unpack_from(buf, s + hlen)[0]
            if got != crc32c(hdr):
                raise self._fail(FES_HDGST_ERROR, hlen, "header digest mismatch", hdr)
        if ptype in (H2C_TERM_REQ, C2H_TERM_REQ):
            data = buf[s + hlen : s + plen] if plen > hlen else None
            return Pdu(ptype, flags, hlen, pdo, plen, hdr, data)
        if plen == hlen + hd:
            return Pdu(ptype, flags, hlen, pdo, plen, hdr, None)
        dd = 4 if self.ddgst else 0
        data = buf[s + pdo : s + plen - dd]
        ok = True
        if dd:
            ok = DIGEST.unpack_from(buf, s + plen - 4)[0] == crc32c(data)
        if ptype in (H2C_DATA, C2H_DATA):
            datal = _DATA_FIELDS.unpack_from(hdr, 8)[3]
            if datal != len(data):
                raise self._fail(
                    FES_INVALID_HEADER_FIELD, OFF_DATA_DATAL, f"DATAL {datal} != {len(data)}", hdr
                )
        return Pdu(ptype, flags, hlen, pdo, plen, hdr, data, ok)


# -------------------------------------------------------------- encoders
Buffers = list[bytes | bytearray | memoryview]


def encode_icreq(
    hpda: int = 0, hdgst: bool = False, ddgst: bool = False, maxr2t: int = 0, pfv: int = 0
) -> bytes:
    dg = int(hdgst) | (int(ddgst) << 1)
    return IC.pack(ICREQ, 0, 128, 0, 128, pfv, hpda, dg, maxr2t)


def encode_icresp(cpda: int, hdgst: bool, ddgst: bool, maxh2cdata: int, pfv: int = 0) -> bytes:
    dg = int(hdgst) | (int(ddgst) << 1)
    return IC.pack(ICRESP, 0, 128, 0, 128, pfv, cpda, dg, maxh2cdata)


def encode_term_req(ptype: int, fes: int, fei: int, offending: bytes = b"") -> bytes:
    """H2CTermReq/C2HTermReq echoing up to 128 bytes of the offending header."""
    extra = offending[:TERM_REQ_MAX_DATA]
    return TERM.pack(ptype, 0, 24, 0, 24 + len(extra), fes, fei) + extra


def _with_data(
    header: bytes,
    hlen: int,
    data: bytes | bytearray | memoryview | None,
    hdgst: bool,
    ddgst: bool,
    pda: int,
    out: Buffers,
) -> Buffers:
    # header is already packed with the final pdo/plen
    out.append(header)
    if hdgst:
        out.append(digest(header))
    if data is not None and len(data):
        pad = header[3] - hlen - (4 if hdgst else 0)
        if pad:
            out.append(bytes(pad))
        out.append(data)
        if ddgst:
            out.append(digest(data))
    return out


def _lens(hlen: int, dlen: int, hdgst: bool, ddgst: bool, pda: int) -> tuple[int, int, int]:
    """(flags, pdo, plen) for a PDU with ``dlen`` payload bytes."""
    hd = 4 if hdgst else 0
    flags = FLAG_HDGSTF if hdgst else 0
    if not dlen:
        return flags, 0, hlen + hd
    pdo = _align(hlen + hd, pda)
    dd = 4 if ddgst else 0
    if ddgst:
        flags |= FLAG_DDGSTF
    return flags, pdo, pdo + dlen + dd


def encode_capsule_cmd(
    sqe: bytes,
    data: bytes | bytearray | memoryview | None = None,
    hdgst: bool = False,
    ddgst: bool = False,
    cpda: int = 0,
) -> Buffers:
    dlen = 0 if data is None else len(data)
    flags, pdo, plen = _lens(72, dlen, hdgst, ddgst, cpda)
    header = CH.pack(CAPSULE_CMD, flags, 72, pdo, plen) + sqe
    return _with_data(header, 72, data, hdgst, ddgst, cpda, [])


def encode_capsule_resp(
    cid: int, status: int = 0, result: int = 0, sqhd: int = 0, sqid: int = 0, hdgst: bool = False
) -> Buffers:
    if hdgst:
        header = RESP_HDR.pack(
            CAPSULE_RESP, FLAG_HDGSTF, 24, 0, 28, result, sqhd, sqid, cid, status
        )
        return [header, digest(header)]
    return [RESP_HDR.pack(CAPSULE_RESP, 0, 24, 0, 24, result, sqhd, sqid, cid, status)]


def encode_data(
    ptype: int,
    cccid: int,
    ttag: int,
    offset: int,
    data: bytes | bytearray | memoryview,
    last: bool = True,
    success: bool = False,
    hdgst: bool = False,
    ddgst: bool = False,
    pda: int = 0,
    out: Buffers | None = None,
) -> Buffers:
    """H2CData or C2HData carrying ``data`` (not copied) at ``offset``."""
    flags, pdo, plen = _lens(24, len(data), hdgst, ddgst, pda)
    if last:
        flags |= FLAG_DATA_LAST
    if success:
        flags |= FLAG_DATA_SUCCESS
    header = DATA_HDR.pack(ptype, flags, 24, pdo, plen, cccid, ttag, offset, len(data))
    return _with_data(header, 24, data, hdgst, ddgst, pda, [] if out is None else out)


def encode_r2t(cccid: int, ttag: int, offset: int, length: int, hdgst: bool = False) -> Buffers:
    flags = FLAG_HDGSTF if hdgst else 0
    header = DATA_HDR.pack(R2T, flags, 24, 0, 28 if hdgst else 24, cccid, ttag, offset, length)
    return [header, digest(header)] if hdgst else [header]
