"""FC-NVMe link services (sans-I/O codec): Create Association, Create I/O
Connection, Disconnect, their accepts (LS_ACC) and rejects (LS_RJT).

FC-NVMe LS requests travel in FC-4 LS exchanges, each answered by one
response. A request is a 4-byte word 0 (``ls_cmd``), a big-endian descriptor
list length and a list of descriptors (tag, length, body). Layouts follow
FC-NVMe r1.14 / FC-NVMe-2 as Linux (include/linux/nvme-fc.h) and SPDK
(lib/nvmf/fc_ls.c) implement them:

* CASS (Create Association): CREATE_ASSOC_CMD descriptor (ERSP ratio,
  cntlid, admin SQ size, host id, host NQN, subsystem NQN), 1024 bytes;
  accepted with an RQST descriptor echoing word 0, the new ASSOC_ID and the
  CONN_ID of the admin connection.
* CIOC (Create I/O Connection): ASSOC_ID + CREATE_CONN_CMD (ERSP ratio, qid,
  SQ size); accepted with RQST + CONN_ID.
* DISC (Disconnect): ASSOC_ID + DISCONN_CMD; accepted with RQST.
* LS_RJT: RQST + RJT (reason code, explanation, vendor).

`decode_request` turns bytes into a typed request or raises `LsReject`
carrying the reason and explanation the target answers with
(`encode_reject`): bad input is always answered, never a crash.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# LS commands (word 0, byte 0)
LS_RSVD = 0x00
LS_RJT = 0x01
LS_ACC = 0x02
LS_CREATE_ASSOCIATION = 0x03
LS_CREATE_CONNECTION = 0x04
LS_DISCONNECT = 0x05

LS_NAMES = {
    LS_RJT: "LS_RJT",
    LS_ACC: "LS_ACC",
    LS_CREATE_ASSOCIATION: "Create Association",
    LS_CREATE_CONNECTION: "Create I/O Connection",
    LS_DISCONNECT: "Disconnect",
}

# descriptor tags
LSDESC_RQST = 0x1
LSDESC_RJT = 0x2
LSDESC_CREATE_ASSOC_CMD = 0x3
LSDESC_CREATE_CONN_CMD = 0x4
LSDESC_DISCONN_CMD = 0x5
LSDESC_CONN_ID = 0x6
LSDESC_ASSOC_ID = 0x7

# reject reason codes
RJT_RC_NONE = 0x00
RJT_RC_INVAL = 0x01  # invalid LS command code
RJT_RC_LOGIC = 0x03  # logical error
RJT_RC_UNAB = 0x09  # unable to perform the command request
RJT_RC_UNSUP = 0x0B  # command not supported
RJT_RC_INPROG = 0x0E  # command already in progress
RJT_RC_INV_ASSOC = 0x40  # invalid association id
RJT_RC_INV_CONN = 0x41  # invalid connection id
RJT_RC_INV_PARAM = 0x42  # invalid parameters
RJT_RC_INSUF_RES = 0x43  # insufficient resources
RJT_RC_INV_HOST = 0x44  # invalid or rejected host
RJT_RC_VENDOR = 0xFF

# reject explanations
RJT_EXP_NONE = 0x00
RJT_EXP_OXID_RXID = 0x17
RJT_EXP_INSUF_RES = 0x29
RJT_EXP_UNAB_DATA = 0x2A
RJT_EXP_INV_LEN = 0x2D
RJT_EXP_INV_ERSP_RAT = 0x40
RJT_EXP_INV_CTLR_ID = 0x41
RJT_EXP_INV_QUEUE_ID = 0x42
RJT_EXP_INV_SQSIZE = 0x43
RJT_EXP_INV_HOSTID = 0x44
RJT_EXP_INV_HOSTNQN = 0x45
RJT_EXP_INV_SUBNQN = 0x46

RJT_REASON_NAMES = {
    RJT_RC_NONE: "none",
    RJT_RC_INVAL: "invalid LS command",
    RJT_RC_LOGIC: "logical error",
    RJT_RC_UNAB: "unable to perform",
    RJT_RC_UNSUP: "not supported",
    RJT_RC_INPROG: "in progress",
    RJT_RC_INV_ASSOC: "invalid association id",
    RJT_RC_INV_CONN: "invalid connection id",
    RJT_RC_INV_PARAM: "invalid parameters",
    RJT_RC_INSUF_RES: "insufficient resources",
    RJT_RC_INV_HOST: "invalid host",
    RJT_RC_VENDOR: "vendor specific",
}
RJT_EXP_NAMES = {
    RJT_EXP_NONE: "none",
    RJT_EXP_OXID_RXID: "invalid OX_ID-RX_ID",
    RJT_EXP_INSUF_RES: "insufficient resources",
    RJT_EXP_UNAB_DATA: "unable to supply data",
    RJT_EXP_INV_LEN: "invalid payload length",
    RJT_EXP_INV_ERSP_RAT: "invalid ERSP ratio",
    RJT_EXP_INV_CTLR_ID: "invalid controller id",
    RJT_EXP_INV_QUEUE_ID: "invalid queue id",
    RJT_EXP_INV_SQSIZE: "invalid SQ size",
    RJT_EXP_INV_HOSTID: "invalid host id",
    RJT_EXP_INV_HOSTNQN: "invalid host NQN",
    RJT_EXP_INV_SUBNQN: "invalid subsystem NQN",
}

NQN_FIELD = 256
HOSTID_LEN = 16

_W0 = struct.Struct(">B3xI")  # ls_cmd, zeros, desc_list_len
_DESC = struct.Struct(">II")  # tag, len (of what follows)
# CREATE_ASSOC_CMD body after tag/len: ersp_ratio rsvd10 rsvd12[9] cntlid sqsize rsvd52
# hostid hostnqn subnqn rsvd584[432]
_CASS_BODY = struct.Struct(">H2x36xHH4x16s256s256s432x")
CASS_DESC_LEN = _CASS_BODY.size  # 1008
CASS_DESC_MIN_LEN = CASS_DESC_LEN - 432  # what Linux accepts (without the padding)
_CIOC_BODY = struct.Struct(">H2x36xHH4x")  # ersp_ratio qid sqsize
CIOC_DESC_LEN = _CIOC_BODY.size  # 48
DISC_DESC_LEN = 16  # FC-NVMe r1.x: reserved words (FC-NVMe-2 puts a scope/id there)
_U64 = struct.Struct(">Q")
_RQST_BODY = struct.Struct(">B3x4x")  # the echoed word 0 + reserved
_RJT_BODY = struct.Struct(">xBBB4x")  # reason, explanation, vendor

CASS_RQST_LEN = _W0.size + _DESC.size + CASS_DESC_LEN  # 1024
CIOC_RQST_LEN = _W0.size + 2 * _DESC.size + 8 + CIOC_DESC_LEN  # 80
DISC_RQST_LEN = _W0.size + 2 * _DESC.size + 8 + DISC_DESC_LEN  # 48
MAX_LS_LEN = 2048  # the loopback LLD refuses larger LS payloads before buffering them


class LsReject(Exception):
    """A request the target answers with LS_RJT (reason, explanation)."""

    def __init__(self, reason: int, explanation: int, msg: str, ls_cmd: int = 0) -> None:
        self.reason = reason
        self.explanation = explanation
        self.ls_cmd = ls_cmd
        super().__init__(
            f"{msg} (LS_RJT reason {reason:#04x} {RJT_REASON_NAMES.get(reason, '?')}, "
            f"explanation {explanation:#04x} {RJT_EXP_NAMES.get(explanation, '?')})"
        )


class LsError(ValueError):
    """A malformed LS response (host side)."""


@dataclass(frozen=True, slots=True)
class CreateAssociation:
    ersp_ratio: int
    cntlid: int
    sqsize: int
    hostid: bytes
    hostnqn: str
    subnqn: str


@dataclass(frozen=True, slots=True)
class CreateConnection:
    assoc_id: int
    ersp_ratio: int
    qid: int
    sqsize: int


@dataclass(frozen=True, slots=True)
class Disconnect:
    assoc_id: int


LsRequest = CreateAssociation | CreateConnection | Disconnect


@dataclass(frozen=True, slots=True)
class LsAccept:
    ls_cmd: int  # the request this accepts
    assoc_id: int | None = None
    conn_id: int | None = None


@dataclass(frozen=True, slots=True)
class LsRejected:
    ls_cmd: int
    reason: int
    explanation: int
    vendor: int = 0

    def __str__(self) -> str:
        return (
            f"{LS_NAMES.get(self.ls_cmd, hex(self.ls_cmd))} rejected: "
            f"{RJT_REASON_NAMES.get(self.reason, hex(self.reason))} / "
            f"{RJT_EXP_NAMES.get(self.explanation, hex(self.explanation))}"
        )


LsResponse = LsAccept | LsRejected


def _nqn(raw: bytes, exp: int, what: str, ls_cmd: int) -> str:
    s = raw.split(b"\0", 1)[0]
    if not s or len(s) >= NQN_FIELD:
        raise LsReject(RJT_RC_INV_PARAM, exp, f"{what} is empty or not NUL-terminated", ls_cmd)
    try:
        return s.decode("utf-8")
    except UnicodeDecodeError:
        raise LsReject(RJT_RC_INV_PARAM, exp, f"{what} is not UTF-8", ls_cmd) from None


def _desc(b: memoryview, off: int, tag: int, minlen: int, ls_cmd: int) -> tuple[memoryview, int]:
    if off + _DESC.size > len(b):
        raise LsReject(RJT_RC_INVAL, RJT_EXP_INV_LEN, "descriptor list truncated", ls_cmd)
    t, n = _DESC.unpack_from(b, off)
    if t != tag:
        raise LsReject(
            RJT_RC_INVAL, RJT_EXP_NONE, f"descriptor tag {t:#x}, expected {tag:#x}", ls_cmd
        )
    end = off + _DESC.size + n
    if n < minlen or end > len(b):
        raise LsReject(RJT_RC_INVAL, RJT_EXP_INV_LEN, f"descriptor {tag:#x} length {n}", ls_cmd)
    return b[off + _DESC.size : end], end


def _assoc_id(b: memoryview, off: int, ls_cmd: int) -> tuple[int, int]:
    body, end = _desc(b, off, LSDESC_ASSOC_ID, 8, ls_cmd)
    return int(_U64.unpack_from(body, 0)[0]), end


def decode_request(data: bytes | bytearray | memoryview) -> LsRequest:
    """Parse an LS request. Raises LsReject with the reason the target answers."""
    b = memoryview(bytes(data))
    if len(b) < _W0.size:
        raise LsReject(RJT_RC_INVAL, RJT_EXP_INV_LEN, f"LS request of {len(b)} bytes")
    ls_cmd, dlen = _W0.unpack_from(b, 0)
    if len(b) > MAX_LS_LEN:
        raise LsReject(RJT_RC_INVAL, RJT_EXP_INV_LEN, f"LS request of {len(b)} bytes", ls_cmd)
    if ls_cmd not in (LS_CREATE_ASSOCIATION, LS_CREATE_CONNECTION, LS_DISCONNECT):
        raise LsReject(RJT_RC_INVAL, RJT_EXP_NONE, f"LS command {ls_cmd:#x} not supported", ls_cmd)
    if dlen != len(b) - _W0.size:
        raise LsReject(
            RJT_RC_INVAL,
            RJT_EXP_INV_LEN,
            f"descriptor list length {dlen}, payload carries {len(b) - _W0.size}",
            ls_cmd,
        )
    off = _W0.size
    if ls_cmd == LS_CREATE_ASSOCIATION:
        body, off = _desc(b, off, LSDESC_CREATE_ASSOC_CMD, CASS_DESC_MIN_LEN, ls_cmd)
        if len(body) < CASS_DESC_LEN:
            body = memoryview(bytes(body) + bytes(CASS_DESC_LEN - len(body)))
        ersp, cntlid, sqsize, hostid, hostnqn, subnqn = _CASS_BODY.unpack_from(body, 0)
        req: LsRequest = CreateAssociation(
            ersp,
            cntlid,
            sqsize,
            hostid,
            _nqn(hostnqn, RJT_EXP_INV_HOSTNQN, "host NQN", ls_cmd),
            _nqn(subnqn, RJT_EXP_INV_SUBNQN, "subsystem NQN", ls_cmd),
        )
    elif ls_cmd == LS_CREATE_CONNECTION:
        assoc, off = _assoc_id(b, off, ls_cmd)
        body, off = _desc(b, off, LSDESC_CREATE_CONN_CMD, CIOC_DESC_LEN, ls_cmd)
        ersp, qid, sqsize = _CIOC_BODY.unpack_from(body, 0)
        req = CreateConnection(assoc, ersp, qid, sqsize)
    else:
        assoc, off = _assoc_id(b, off, ls_cmd)
        body, off = _desc(b, off, LSDESC_DISCONN_CMD, 0, ls_cmd)
        req = Disconnect(assoc)
    if off != len(b):
        raise LsReject(RJT_RC_INVAL, RJT_EXP_INV_LEN, "bytes after the last descriptor", ls_cmd)
    return req


def _wrap(ls_cmd: int, descs: bytes) -> bytes:
    return _W0.pack(ls_cmd, len(descs)) + descs


def _d(tag: int, body: bytes) -> bytes:
    return _DESC.pack(tag, len(body)) + body


def encode_request(req: LsRequest) -> bytes:
    if isinstance(req, CreateAssociation):
        hostnqn = req.hostnqn.encode()
        subnqn = req.subnqn.encode()
        if len(hostnqn) >= NQN_FIELD or len(subnqn) >= NQN_FIELD:
            raise ValueError("NQN longer than 255 bytes")
        hostid = req.hostid.ljust(HOSTID_LEN, b"\0")[:HOSTID_LEN]
        body = _CASS_BODY.pack(req.ersp_ratio, req.cntlid, req.sqsize, hostid, hostnqn, subnqn)
        return _wrap(LS_CREATE_ASSOCIATION, _d(LSDESC_CREATE_ASSOC_CMD, body))
    if isinstance(req, CreateConnection):
        return _wrap(
            LS_CREATE_CONNECTION,
            _d(LSDESC_ASSOC_ID, _U64.pack(req.assoc_id))
            + _d(LSDESC_CREATE_CONN_CMD, _CIOC_BODY.pack(req.ersp_ratio, req.qid, req.sqsize)),
        )
    return _wrap(
        LS_DISCONNECT,
        _d(LSDESC_ASSOC_ID, _U64.pack(req.assoc_id)) + _d(LSDESC_DISCONN_CMD, bytes(DISC_DESC_LEN)),
    )


def _rqst(ls_cmd: int) -> bytes:
    return _d(LSDESC_RQST, _RQST_BODY.pack(ls_cmd))


def encode_accept(acc: LsAccept) -> bytes:
    descs = _rqst(acc.ls_cmd)
    if acc.assoc_id is not None:
        descs += _d(LSDESC_ASSOC_ID, _U64.pack(acc.assoc_id))
    if acc.conn_id is not None:
        descs += _d(LSDESC_CONN_ID, _U64.pack(acc.conn_id))
    return _wrap(LS_ACC, descs)


def encode_reject(ls_cmd: int, reason: int, explanation: int, vendor: int = 0) -> bytes:
    return _wrap(
        LS_RJT, _rqst(ls_cmd) + _d(LSDESC_RJT, _RJT_BODY.pack(reason, explanation, vendor))
    )


def reject_for(err: LsReject) -> bytes:
    return encode_reject(err.ls_cmd, err.reason, err.explanation)


def decode_response(data: bytes | bytearray | memoryview) -> LsResponse:
    """Parse an LS_ACC/LS_RJT (host side). Raises LsError when malformed."""
    b = memoryview(bytes(data))
    if len(b) < _W0.size or len(b) > MAX_LS_LEN:
        raise LsError(f"LS response of {len(b)} bytes")
    cmd, dlen = _W0.unpack_from(b, 0)
    if dlen != len(b) - _W0.size:
        raise LsError(f"LS response descriptor list length {dlen}, carries {len(b) - _W0.size}")
    try:
        body, off = _desc(b, _W0.size, LSDESC_RQST, _RQST_BODY.size, cmd)
        (ls_cmd,) = _RQST_BODY.unpack_from(body, 0)
        if cmd == LS_RJT:
            body, off = _desc(b, off, LSDESC_RJT, _RJT_BODY.size, cmd)
            reason, exp, vendor = _RJT_BODY.unpack_from(body, 0)
            resp: LsResponse = LsRejected(ls_cmd, reason, exp, vendor)
        elif cmd == LS_ACC:
            assoc = conn = None
            if ls_cmd == LS_CREATE_ASSOCIATION:
                assoc, off = _assoc_id(b, off, cmd)
            if ls_cmd in (LS_CREATE_ASSOCIATION, LS_CREATE_CONNECTION):
                body, off = _desc(b, off, LSDESC_CONN_ID, 8, cmd)
                conn = int(_U64.unpack_from(body, 0)[0])
            resp = LsAccept(ls_cmd, assoc, conn)
        else:
            raise LsError(f"LS response command {cmd:#x} is neither LS_ACC nor LS_RJT")
    except LsReject as e:
        raise LsError(str(e)) from None
    if off != len(b):
        raise LsError("bytes after the last descriptor of the LS response")
    return resp
