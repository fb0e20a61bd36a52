"""NVMe/RDMA transport binding: the sans-I/O codec (NVMe-oF 1.1 section 7.3,
"NVMe Transport Binding Specification" RDMA part; Linux include/linux/nvme-rdma.h).

Owns: the RDMA CM private data of a connection request (RECFMT, QID,
HRQSIZE, HSQSIZE, CNTLID), of the accept (RECFMT, CRQSIZE) and of a reject
(RECFMT, STS with the NVMe/RDMA reject status codes), their validation
against the target's limits, the keyed SGL data block descriptor and the
in-capsule data descriptor of a command capsule, and the Identify fields the
RDMA transport reports. No I/O, no pyverbs: rdma.py (queue pair) and
rdma_verbs.py (glue) use it, and so does the host side (nvmf_host/rdma*.py).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from . import spec

RECFMT = 0  # the only record format defined
# RDMA CM private data sizes for RDMA_PS_TCP: connect 56 bytes, accept 196 bytes
CM_REQ = struct.Struct("<HHHHH22x")  # 32 bytes
CM_REP = struct.Struct("<HH28x")  # 32 bytes (Linux reads the first 8)
CM_REJ = struct.Struct("<HH")

# RDMA_CM_REJECT status codes (NVMe/RDMA transport binding, figure "RDMA_CM_REJECT")
REJ_INVALID_LEN = 0x01
REJ_INVALID_RECFMT = 0x02
REJ_INVALID_QID = 0x03
REJ_INVALID_HSQSIZE = 0x04
REJ_INVALID_HRQSIZE = 0x05
REJ_NO_RESOURCES = 0x06
REJ_INVALID_IRD = 0x07
REJ_INVALID_ORD = 0x08
REJ_INVALID_CNTLID = 0x09
REJECT_NAMES = {
    REJ_INVALID_LEN: "invalid private data length",
    REJ_INVALID_RECFMT: "invalid RECFMT",
    REJ_INVALID_QID: "invalid QID",
    REJ_INVALID_HSQSIZE: "invalid HSQSIZE",
    REJ_INVALID_HRQSIZE: "invalid HRQSIZE",
    REJ_NO_RESOURCES: "no resources",
    REJ_INVALID_IRD: "invalid IRD",
    REJ_INVALID_ORD: "invalid ORD",
    REJ_INVALID_CNTLID: "invalid CNTLID",
}

SQE_SIZE = 64
CQE_SIZE = 16
AQ_DEPTH_MAX = 32  # NVME_AQ_DEPTH of Linux; SPDK's admin queue limit over RDMA is the -a option
MAX_RD_ATOMIC = 16  # RDMA READs a queue pair keeps outstanding (initiator depth)

# SGL identifiers a command capsule may carry over RDMA
SGL_KEYED_ADDR = (spec.SGL_KEYED_DATA_BLOCK << 4) | spec.SGL_SUBTYPE_ADDRESS  # 0x40
SGL_KEYED_INVALIDATE = (spec.SGL_KEYED_DATA_BLOCK << 4) | 0xF  # 0x4F
SGL_INCAPSULE = spec.SGL_TYPE_INCAPSULE  # 0x01, address = offset into the capsule data
KEYED = struct.Struct("<Q3sIB")  # address, 24-bit length, key, identifier

# Identify Controller SGLS for RDMA: SGLs supported (bit 0), keyed SGL data
# block (bit 2), address as offset for in-capsule data (bit 20)
SGLS = 0x1 | (1 << 2) | (1 << 20)


class ConnectRequest(NamedTuple):
    recfmt: int
    qid: int
    hrqsize: int  # host receive queue size (number of CQEs it can take)
    hsqsize: int  # 0's based host send queue size
    cntlid: int


class CmError(Exception):
    """A connection request to refuse with an RDMA_CM_REJECT status."""

    def __init__(self, sts: int, msg: str) -> None:
        super().__init__(msg)
        self.sts = sts


def pack_connect(qid: int, hrqsize: int, hsqsize: int, cntlid: int = 0) -> bytes:
    return CM_REQ.pack(RECFMT, qid, hrqsize, hsqsize, cntlid)


def parse_connect(data: bytes | memoryview | None) -> ConnectRequest:
    """Decode a host's RDMA_CM_REQUEST private data (CmError when malformed)."""
    if data is None or len(data) < 10:
        raise CmError(REJ_INVALID_LEN, f"private data of {0 if data is None else len(data)} bytes")
    recfmt, qid, hrq, hsq, cntlid = struct.unpack_from("<HHHHH", data, 0)
    if recfmt != RECFMT:
        raise CmError(REJ_INVALID_RECFMT, f"RECFMT {recfmt}")
    return ConnectRequest(recfmt, qid, hrq, hsq, cntlid)


def check_connect(
    req: ConnectRequest, max_queue_depth: int, max_aq_depth: int, max_qid: int
) -> int:
    """Validate the sizes; returns the queue depth to serve (the number of
    receive buffers the host may fill: HSQSIZE + 1). CmError otherwise."""
    if req.qid > max_qid:
        raise CmError(REJ_INVALID_QID, f"QID {req.qid} > {max_qid}")
    limit = max_aq_depth if req.qid == 0 else max_queue_depth
    depth = req.hsqsize + 1
    if req.hsqsize == 0 or depth > limit:
        raise CmError(REJ_INVALID_HSQSIZE, f"HSQSIZE {req.hsqsize} (queue depth limit {limit})")
    if req.hrqsize == 0 or req.hrqsize > limit + 1:
        raise CmError(REJ_INVALID_HRQSIZE, f"HRQSIZE {req.hrqsize}")
    return depth


def pack_accept(crqsize: int) -> bytes:
    return CM_REP.pack(RECFMT, crqsize)


def parse_accept(data: bytes | memoryview | None) -> int:
    """CRQSIZE of the controller's RDMA_CM_ACCEPT private data (0 if absent)."""
    if data is None or len(data) < 4:
        return 0
    recfmt, crq = struct.unpack_from("<HH", data, 0)
    return crq if recfmt == RECFMT else 0


def pack_reject(sts: int) -> bytes:
    return CM_REJ.pack(RECFMT, sts)


def parse_reject(data: bytes | memoryview | None) -> int:
    if data is None or len(data) < 4:
        return 0
    return int(struct.unpack_from("<HH", data, 0)[1])


class Keyed(NamedTuple):
    address: int
    length: int
    key: int
    invalidate: bool


def pack_keyed(address: int, length: int, key: int, invalidate: bool = False) -> bytes:
    ident = SGL_KEYED_INVALIDATE if invalidate else SGL_KEYED_ADDR
    return KEYED.pack(address, length.to_bytes(3, "little"), key, ident)


def unpack_keyed(dptr: bytes | memoryview) -> Keyed:
    addr, ln, key, ident = KEYED.unpack_from(dptr, 0)
    return Keyed(addr, int.from_bytes(ln, "little"), key, ident == SGL_KEYED_INVALIDATE)


def pack_incapsule(offset: int, length: int) -> bytes:
    return spec.pack_sgl(offset, length, SGL_INCAPSULE)


def sgl_ident(dptr: bytes | memoryview) -> int:
    return int(dptr[15])


def identify_fields(in_capsule_data_size: int) -> tuple[int, int, int, int]:
    """(IOCCSZ, IORCSZ, ICDOFF, MSDBD) of Identify Controller bytes 1792..1799."""
    return ((SQE_SIZE + in_capsule_data_size) // 16, CQE_SIZE // 16, 0, 1)


CQE = struct.Struct("<IIHHHH")  # DW0, DW1, SQHD, SQID, CID, status


def pack_cqe(cid: int, status: int, result: int, sqhd: int, sqid: int) -> bytes:
    return CQE.pack(result & 0xFFFFFFFF, result >> 32, sqhd, sqid, cid, status)
