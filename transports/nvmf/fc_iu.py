"""FC-NVMe information units (sans-I/O codec): the NVMe CMD IU and the responses.

FC-NVMe (T11 FC-NVMe / FC-NVMe-2) carries one NVMe command per FC exchange:

* the host opens the exchange with a **CMD IU** (96 bytes: FC-NVMe header,
  the 64-byte SQE, data length and direction, the connection id it was sent
  on and a command sequence number);
* data moves in **data phases** of the exchange: for a write the target asks
  for the data with a transfer-ready and the host sends it (FCP_XFER_RDY /
  FCP_DATA in FCP terms), for a read the target sends the data;
* the target closes the exchange with a response: the 12-byte all-zero
  **good response** when the command succeeded, moved exactly ``data_len`` bytes
  and no ERSP is due, or the 32-byte **ERSP IU** (extended response: response
  sequence number, bytes transferred, the full CQE) otherwise.

Multi-byte FC-NVMe fields are big-endian; the SQE and CQE inside stay
little-endian as NVMe defines them. Malformed input raises `IuError`
(a ValueError), never anything else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# FC-NVMe header constants (Linux include/linux/nvme-fc.h, SPDK nvmf_fc.h)
CMD_FORMAT_ID = 0xFD  # "SCSI id" in FC-NVMe-1: format identifier of the CMD IU
FC_TYPE_NVME = 0x28
CMD_IU_LEN = 96
CMD_IU_WORDS = CMD_IU_LEN // 4

FLAG_WRITE = 0x01  # host-to-controller data
FLAG_READ = 0x02  # controller-to-host data
FLAGS_DIRMASK = 0x03

ERSP_IU_LEN = 32
ERSP_IU_WORDS = ERSP_IU_LEN // 4
GOOD_RSP_LEN = 12  # NVME_FC_SIZEOF_ZEROS_RSP
GOOD_RSP = bytes(GOOD_RSP_LEN)

SQE_LEN = 64
CQE_LEN = 16

# scsi_id fc_id iu_len rsvd4[3] flags conn_id csn data_len
_CMD_HDR = struct.Struct(">BBH3xBQII")
# ersp_result rsvd iu_len rsn xfrd_len rsvd12
_ERSP_HDR = struct.Struct(">BxHIII")
_CQE_STATUS = struct.Struct("<H")  # CQE dword 3 high half (offset 14)


class IuError(ValueError):
    """A malformed FC-NVMe IU."""


@dataclass(frozen=True, slots=True)
class CmdIu:
    conn_id: int
    csn: int  # command sequence number
    data_len: int
    flags: int  # FLAG_WRITE / FLAG_READ / 0
    sqe: bytes  # 64 bytes, little-endian NVMe SQE

    @property
    def write(self) -> bool:
        return bool(self.flags & FLAG_WRITE)

    @property
    def read(self) -> bool:
        return bool(self.flags & FLAG_READ)


def encode_cmd_iu(conn_id: int, csn: int, data_len: int, flags: int, sqe: bytes) -> bytes:
    if len(sqe) != SQE_LEN:
        raise IuError(f"SQE must be {SQE_LEN} bytes, not {len(sqe)}")
    if flags & ~FLAGS_DIRMASK or flags == FLAGS_DIRMASK:
        raise IuError(f"invalid CMD IU flags {flags:#x}")
    if flags == 0 and data_len:
        raise IuError("data_len without a direction")
    hdr = _CMD_HDR.pack(CMD_FORMAT_ID, FC_TYPE_NVME, CMD_IU_WORDS, flags, conn_id, csn, data_len)
    return hdr + sqe + bytes(8)


def decode_cmd_iu(b: bytes | bytearray | memoryview) -> CmdIu:
    """Parse a CMD IU; IuError says what is wrong (the target answers it as
    SPDK does: the exchange is aborted, the command never reaches the core)."""
    if len(b) != CMD_IU_LEN:
        raise IuError(f"CMD IU length {len(b)}, expected {CMD_IU_LEN}")
    fmt, fc_id, words, flags, conn_id, csn, data_len = _CMD_HDR.unpack_from(b, 0)
    if fmt != CMD_FORMAT_ID:
        raise IuError(f"CMD IU format id {fmt:#x}, expected {CMD_FORMAT_ID:#x}")
    if fc_id != FC_TYPE_NVME:
        raise IuError(f"CMD IU FC id {fc_id:#x}, expected {FC_TYPE_NVME:#x}")
    if words != CMD_IU_WORDS:
        raise IuError(f"CMD IU length field {words} words, expected {CMD_IU_WORDS}")
    if flags & ~FLAGS_DIRMASK or (flags & FLAGS_DIRMASK) == FLAGS_DIRMASK:
        raise IuError(f"invalid CMD IU flags {flags:#x}")
    if not flags and data_len:
        raise IuError(f"data_len {data_len} without a data direction")
    sqe = bytes(b[_CMD_HDR.size : _CMD_HDR.size + SQE_LEN])
    return CmdIu(conn_id, csn, data_len, flags, sqe)


@dataclass(frozen=True, slots=True)
class ErspIu:
    rsn: int  # response sequence number
    xfrd_len: int
    cqe: bytes  # 16 bytes, little-endian NVMe CQE

    @property
    def status(self) -> int:
        """The CQE status field (16 bits incl. phase tag)."""
        return int(_CQE_STATUS.unpack_from(self.cqe, 14)[0])


def encode_ersp_iu(rsn: int, xfrd_len: int, cqe: bytes) -> bytes:
    if len(cqe) != CQE_LEN:
        raise IuError(f"CQE must be {CQE_LEN} bytes, not {len(cqe)}")
    return _ERSP_HDR.pack(0, ERSP_IU_WORDS, rsn, xfrd_len, 0) + cqe


def decode_response(b: bytes | bytearray | memoryview) -> ErspIu | None:
    """Decode a response IU: None for the good (all-zero) response, an
    `ErspIu` for an ERSP; IuError for anything else."""
    if len(b) == GOOD_RSP_LEN:
        if any(b):
            raise IuError("12-byte response with non-zero bytes")
        return None
    if len(b) != ERSP_IU_LEN:
        raise IuError(f"response IU length {len(b)}: neither a good response nor an ERSP")
    result, words, rsn, xfrd, _ = _ERSP_HDR.unpack_from(b, 0)
    if words != ERSP_IU_WORDS:
        raise IuError(f"ERSP length field {words} words, expected {ERSP_IU_WORDS}")
    if result:
        raise IuError(f"ERSP result {result:#x} is reserved")
    return ErspIu(rsn, xfrd, bytes(b[_ERSP_HDR.size :]))


def need_ersp(
    status: int, xfrd_len: int, data_len: int, cqe: bytes, sq_count: int, ersp_ratio: int
) -> bool:
    """Whether a completion needs a full ERSP rather than the good response
    (FC-NVMe 9.5.4, as SPDK's nvmf_fc_request_complete decides): a non-zero
    status, a short transfer, CQE dword 0/1 carrying a result, a fused
    command, or the ERSP ratio reached (the host must see SQHD now and then)."""
    if status & 0xFFFE or xfrd_len != data_len:
        return True
    if any(cqe[0:8]):  # command-specific result (dw0) or reserved dw1
        return True
    if ersp_ratio and sq_count % ersp_ratio == 0:
        return True
    return False
