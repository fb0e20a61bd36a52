"""iSCSI PDU codec (RFC 7143 section 11): the 48-byte BHS, AHS, data segment,
padding and CRC32C digests.

Every BHS shares one layout: opcode, three opcode-specific bytes, TotalAHSLength
+ DataSegmentLength, eight bytes (LUN / ISID+TSIH), the ITT, then seven 32-bit
words whose meaning depends on the opcode. We decode all PDUs into that generic
shape (`Pdu`) and give the opcode-specific names as properties, which keeps the
hot path to a single ``struct.unpack_from``.

Encoders return lists of buffers for ``sendmsg`` so Data-In payload views are
never concatenated.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import crc32c

Buffer = bytes | bytearray | memoryview

BHS_LEN = 48
_HDR = struct.Struct(">4BIQ8I")  # opcode f1 b2 b3 ahs|dlen lun itt w20..w44
_U32 = struct.Struct("<I")  # digests go on the wire little-endian (as Linux/SPDK do)

# initiator opcodes
OP_NOP_OUT = 0x00
OP_SCSI_CMD = 0x01
OP_TMF_REQ = 0x02
OP_LOGIN_REQ = 0x03
OP_TEXT_REQ = 0x04
OP_DATA_OUT = 0x05
OP_LOGOUT_REQ = 0x06
OP_SNACK = 0x10
# target opcodes
OP_NOP_IN = 0x20
OP_SCSI_RESP = 0x21
OP_TMF_RESP = 0x22
OP_LOGIN_RESP = 0x23
OP_TEXT_RESP = 0x24
OP_DATA_IN = 0x25
OP_LOGOUT_RESP = 0x26
OP_R2T = 0x31
OP_ASYNC = 0x32
OP_REJECT = 0x3F

INITIATOR_OPS = frozenset(
    {
        OP_NOP_OUT,
        OP_SCSI_CMD,
        OP_TMF_REQ,
        OP_LOGIN_REQ,
        OP_TEXT_REQ,
        OP_DATA_OUT,
        OP_LOGOUT_REQ,
        OP_SNACK,
    }
)

RSVD_TAG = 0xFFFFFFFF

# flag bits in byte 1
F_FINAL = 0x80
F_READ = 0x40  # SCSI command
F_WRITE = 0x20
F_CONT = 0x40  # login / text
F_TRANSIT = 0x80  # login
F_ACK = 0x40  # Data-In
F_OVERFLOW = 0x04
F_UNDERFLOW = 0x02
F_STATUS = 0x01

# Reject reasons (RFC 7143 11.17.1)
REJ_DATA_DIGEST = 0x02
REJ_SNACK = 0x03
REJ_PROTOCOL = 0x04
REJ_NOT_SUPPORTED = 0x05
REJ_IMMEDIATE = 0x06
REJ_TASK_IN_PROGRESS = 0x07
REJ_INVALID_DATA_ACK = 0x08
REJ_INVALID_FIELD = 0x09
REJ_OUT_OF_RESOURCES = 0x0A
REJ_WAITING_LOGOUT = 0x0C

MAX_AHS_LEN = 255 * 4


class PduError(Exception):
    """A malformed PDU. ``reason`` is the Reject reason; ``fatal`` means the
    byte stream can no longer be framed (the connection must close)."""

    def __init__(self, reason: int, message: str, bhs: bytes = b"", fatal: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.bhs = bhs
        self.fatal = fatal


class Pdu:
    """A decoded PDU. ``data`` (and ``bhs``) may be views into the reader's
    buffer: valid only until the reader is asked for more space."""

    __slots__ = (
        "opcode",
        "immediate",
        "f1",
        "b2",
        "b3",
        "ahs_len",
        "dlen",
        "lun",
        "itt",
        "w20",
        "w24",
        "w28",
        "w32",
        "w36",
        "w40",
        "w44",
        "bhs",
        "ahs",
        "data",
    )

    def __init__(self, bhs: Buffer, ahs: Buffer = b"", data: Buffer = b"") -> None:
        (b0, f1, b2, b3, lens, lun, itt, w20, w24, w28, w32, w36, w40, w44) = _HDR.unpack_from(bhs)
        self.opcode = b0 & 0x3F
        self.immediate = bool(b0 & 0x40)
        self.f1 = f1
        self.b2 = b2
        self.b3 = b3
        self.ahs_len = (lens >> 24) * 4
        self.dlen = lens & 0xFFFFFF
        self.lun = lun
        self.itt = itt
        self.w20 = w20
        self.w24 = w24
        self.w28 = w28
        self.w32 = w32
        self.w36 = w36
        self.w40 = w40
        self.w44 = w44
        self.bhs = bhs
        self.ahs = ahs
        self.data = data

    # --- generic names ------------------------------------------------------
    @property
    def final(self) -> bool:
        return bool(self.f1 & F_FINAL)

    @property
    def ttt(self) -> int:
        return self.w20

    @property
    def cmdsn(self) -> int:
        return self.w24

    @property
    def exp_statsn(self) -> int:
        return self.w28

    # --- SCSI command -------------------------------------------------------
    @property
    def edtl(self) -> int:
        return self.w20

    @property
    def cdb(self) -> bytes:
        cdb = bytes(self.bhs[32:48])
        # an extended CDB AHS (type 1) carries the bytes beyond 16
        ahs = bytes(self.ahs)
        while len(ahs) >= 4:
            alen = int.from_bytes(ahs[0:2], "big")
            if ahs[2] == 1:
                cdb += ahs[4 : 4 + alen - 1]
            ahs = ahs[4 + ((alen + 3) & ~3) :]
        return cdb

    # --- Data-Out -----------------------------------------------------------
    @property
    def datasn(self) -> int:
        return self.w36

    @property
    def buffer_offset(self) -> int:
        return self.w40

    # --- login / text -------------------------------------------------------
    @property
    def transit(self) -> bool:
        return bool(self.f1 & F_TRANSIT)

    @property
    def cont(self) -> bool:
        return bool(self.f1 & F_CONT)

    @property
    def csg(self) -> int:
        return (self.f1 >> 2) & 3

    @property
    def nsg(self) -> int:
        return self.f1 & 3

    @property
    def isid(self) -> int:
        return self.lun >> 16

    @property
    def tsih(self) -> int:
        return self.lun & 0xFFFF

    @property
    def cid(self) -> int:
        return self.w20 >> 16

    # --- TMF / logout -------------------------------------------------------
    @property
    def function(self) -> int:
        return self.f1 & 0x7F

    @property
    def ref_task_tag(self) -> int:
        return self.w20

    def __repr__(self) -> str:
        return f"Pdu(op=0x{self.opcode:02x} itt=0x{self.itt:08x} dlen={self.dlen})"


def lun_to_int(lun_field: int) -> int:
    """SAM LUN (8 bytes, first level) -> LUN number; peripheral (00b) and flat
    (01b) addressing. Anything else returns 0xFFFF (no such LUN)."""
    top = lun_field >> 48
    method = top >> 14
    if method == 1:
        return top & 0x3FFF
    if method == 0 and (top >> 8) == 0:
        return top & 0xFF
    return 0xFFFF


def int_to_lun(lun: int) -> int:
    if lun < 256:
        return lun << 48
    return ((0x4000 | (lun & 0x3FFF)) << 48) & 0xFFFFFFFFFFFFFFFF


def pad_len(n: int) -> int:
    return (-n) & 3


_PADS = (b"", b"\0", b"\0\0", b"\0\0\0")


def encode(
    opcode: int,
    f1: int = 0,
    b2: int = 0,
    b3: int = 0,
    lun: int = 0,
    itt: int = 0,
    w: Sequence[int] = (0, 0, 0, 0, 0, 0, 0),
    data: Sequence[Buffer] | Buffer = (),
    header_digest: bool = False,
    data_digest: bool = False,
    immediate: bool = False,
) -> list[Buffer]:
    """Build one PDU as a list of buffers (BHS, [HD], data pieces, pad, [DD])."""
    if isinstance(data, bytes | bytearray | memoryview):
        pieces: Sequence[Buffer] = (data,) if len(data) else ()
    else:
        pieces = data
    dlen = 0
    for p in pieces:
        dlen += len(p)
    bhs = bytearray(BHS_LEN)
    _HDR.pack_into(bhs, 0, opcode | (0x40 if immediate else 0), f1, b2, b3, dlen, lun, itt, *w)
    out: list[Buffer] = [bhs]
    if header_digest:
        out.append(_U32.pack(crc32c.crc32c(bhs)))
    if dlen:
        out.extend(pieces)
        pad = _PADS[pad_len(dlen)]
        if pad:
            out.append(pad)
        if data_digest:
            crc = 0
            for p in pieces:
                crc = crc32c.crc32c(p, crc)
            if pad:
                crc = crc32c.crc32c(pad, crc)
            out.append(_U32.pack(crc))
    return out


def encode_request(
    opcode: int,
    f1: int = 0,
    lun: int = 0,
    itt: int = 0,
    w: Sequence[int] = (0, 0, 0, 0, 0, 0, 0),
    data: Buffer = b"",
    b2: int = 0,
    b3: int = 0,
    immediate: bool = False,
    header_digest: bool = False,
    data_digest: bool = False,
) -> bytes:
    """Initiator-side helper (tests, tools): one PDU as bytes."""
    return b"".join(
        bytes(x)
        for x in encode(
            opcode, f1, b2, b3, lun, itt, w, data, header_digest, data_digest, immediate
        )
    )


class PduReader:
    """Incremental PDU framer over a receive buffer filled with ``recv_into``.

    Use: ``n = sock.recv_into(reader.recv_buffer()); for pdu in reader.feed(n)``.
    Data segments are views into the buffer, valid until the next
    ``recv_buffer()``; the consumer copies what it keeps (e.g. write data into
    the task buffer), which is the only copy on the receive path.
    """

    def __init__(
        self,
        max_recv_dlen: int = 8192,
        header_digest: bool = False,
        data_digest: bool = False,
        min_size: int = 256 * 1024,
    ) -> None:
        self.max_recv_dlen = max_recv_dlen
        self.header_digest = header_digest
        self.data_digest = data_digest
        self._min_size = min_size
        self._buf = bytearray(self._needed_size())
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self.broken = False

    def _max_pdu(self) -> int:
        return BHS_LEN + MAX_AHS_LEN + 4 + self.max_recv_dlen + 3 + 4

    def _needed_size(self) -> int:
        return max(self._min_size, 2 * self._max_pdu())

    def release(self) -> None:
        """Give the receive buffer back (the connection is gone)."""
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self._min_size = 0
        self.broken = True

    def grow_to(self, min_size: int) -> None:
        """Raise the buffer's minimum size (applied by the next set_limits)."""
        self._min_size = max(self._min_size, min_size)

    def set_limits(self, max_recv_dlen: int, header_digest: bool, data_digest: bool) -> None:
        """Apply negotiated values (after login)."""
        self.max_recv_dlen = max_recv_dlen
        self.header_digest = header_digest
        self.data_digest = data_digest
        need = self._needed_size()
        if need > len(self._buf):
            nb = bytearray(need)
            n = self._end - self._start
            nb[:n] = self._view[self._start : self._end]
            self._buf, self._view = nb, memoryview(nb)
            self._start, self._end = 0, n

    @property
    def pending(self) -> int:
        return self._end - self._start

    def recv_buffer(self) -> memoryview:
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._buf) - self._end < self._max_pdu():
            n = self._end - self._start
            self._buf[0:n] = self._view[self._start : self._end]
            self._start, self._end = 0, n
        return self._view[self._end :]

    def advance(self, n: int) -> None:
        """Account ``n`` bytes received into `recv_buffer` without framing
        them yet (the batched READ path looks at them first)."""
        self._end += n

    def feed(self, n: int) -> list[Pdu | PduError]:
        """Account ``n`` received bytes; return the complete PDUs. A malformed
        PDU appears in the list as a `PduError`; after a fatal one nothing
        more is framed."""
        self._end += n
        out: list[Pdu | PduError] = []
        while not self.broken:
            try:
                pdu = self._next()
            except PduError as e:
                out.append(e)
                if e.fatal:
                    self.broken = True
                continue
            if pdu is None:
                break
            out.append(pdu)
        return out

    def feed_bytes(self, data: Buffer) -> list[Pdu | PduError]:
        """Copy ``data`` in and frame it (tests, pre-read handoff bytes)."""
        out: list[Pdu | PduError] = []
        mv = memoryview(data)
        while len(mv) and not self.broken:
            buf = self.recv_buffer()
            k = min(len(buf), len(mv))
            buf[:k] = mv[:k]
            mv = mv[k:]
            # PDUs must be consumed before more bytes are copied in: copy their views
            for p in self.feed(k):
                if isinstance(p, Pdu):
                    p.bhs = bytes(p.bhs)
                    p.ahs = bytes(p.ahs)
                    p.data = bytes(p.data)
                out.append(p)
        return out

    def _next(self) -> Pdu | None:
        avail = self._end - self._start
        if avail < BHS_LEN:
            return None
        s = self._start
        v = self._view
        bhs = v[s : s + BHS_LEN]
        b0 = bhs[0]
        lens = int.from_bytes(bhs[4:8], "big")
        ahs_len = (lens >> 24) * 4
        dlen = lens & 0xFFFFFF
        if dlen > self.max_recv_dlen:
            raise PduError(
                REJ_PROTOCOL,
                f"DataSegmentLength {dlen} exceeds MaxRecvDataSegmentLength {self.max_recv_dlen}",
                bytes(bhs),
            )
        hd = 4 if self.header_digest else 0
        dpad = dlen + pad_len(dlen)
        dd = 4 if (self.data_digest and dlen) else 0
        total = BHS_LEN + ahs_len + hd + dpad + dd
        if avail < total:
            return None
        if (b0 & 0x3F) not in INITIATOR_OPS or b0 & 0x80:
            # framing is intact: skip the PDU, the caller answers with a Reject
            self._start = s + total
            raise PduError(
                REJ_NOT_SUPPORTED,
                f"opcode 0x{b0 & 0x3F:02x} not valid from an initiator",
                bytes(bhs),
                fatal=False,
            )
        if hd:
            got = _U32.unpack_from(v, s + BHS_LEN + ahs_len)[0]
            if got != crc32c.crc32c(v[s : s + BHS_LEN + ahs_len]):
                raise PduError(REJ_PROTOCOL, "header digest error", bytes(bhs))
        ds = s + BHS_LEN + ahs_len + hd
        self._start = s + total
        if dd:
            got = _U32.unpack_from(v, ds + dpad)[0]
            if got != crc32c.crc32c(v[ds : ds + dpad]):
                # the framing is intact: the caller rejects this PDU and goes on
                raise PduError(REJ_DATA_DIGEST, "data digest error", bytes(bhs), fatal=False)
        return Pdu(bhs, v[s + BHS_LEN : s + BHS_LEN + ahs_len], v[ds : ds + dlen])
