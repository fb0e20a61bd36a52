"""NVMe / NVMe-oF wire constants and the SQE/CQE/SGL codecs.

Owns: opcodes, fabrics command types, status codes (SCT/SC with names), log
page and feature ids, property offsets, and precompiled `struct.Struct`
helpers for the 64-byte submission queue entry and 16-byte completion queue
entry. Layouts follow the NVMe Base 2.0 / NVMe-oF 1.1 specifications (the
same layouts Linux spells out in include/linux/nvme.h).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# ------------------------------------------------------------ admin opcodes
ADMIN_DELETE_SQ = 0x00
ADMIN_CREATE_SQ = 0x01
ADMIN_GET_LOG_PAGE = 0x02
ADMIN_DELETE_CQ = 0x04
ADMIN_CREATE_CQ = 0x05
ADMIN_IDENTIFY = 0x06
ADMIN_ABORT = 0x08
ADMIN_SET_FEATURES = 0x09
ADMIN_GET_FEATURES = 0x0A
ADMIN_ASYNC_EVENT = 0x0C
ADMIN_NS_MGMT = 0x0D
ADMIN_FW_COMMIT = 0x10
ADMIN_FW_DOWNLOAD = 0x11
ADMIN_KEEP_ALIVE = 0x18
ADMIN_FABRICS = 0x7F

# -------------------------------------------------------------- I/O opcodes
IO_FLUSH = 0x00
IO_WRITE = 0x01
IO_READ = 0x02
IO_WRITE_UNCOR = 0x04
IO_COMPARE = 0x05
IO_WRITE_ZEROES = 0x08
IO_DSM = 0x09
# reservations (NVMe base spec 7.x / NVM command set)
IO_RESV_REGISTER = 0x0D
IO_RESV_REPORT = 0x0E
IO_RESV_ACQUIRE = 0x11
IO_RESV_RELEASE = 0x15
FABRICS_OPCODE = 0x7F

# ------------------------------------------------------- fabrics (fctype)
FCTYPE_PROPERTY_SET = 0x00
FCTYPE_CONNECT = 0x01
FCTYPE_PROPERTY_GET = 0x04
FCTYPE_AUTH_SEND = 0x05
FCTYPE_AUTH_RECV = 0x06
FCTYPE_DISCONNECT = 0x08

# ------------------------------------------------------------ properties
PROP_CAP = 0x00
PROP_VS = 0x08
PROP_INTMS = 0x0C
PROP_INTMC = 0x10
PROP_CC = 0x14
PROP_CSTS = 0x1C
PROP_NSSR = 0x20

CC_EN = 1 << 0
CC_SHN_SHIFT = 14
CC_SHN_MASK = 0x3 << CC_SHN_SHIFT
CSTS_RDY = 1 << 0
CSTS_CFS = 1 << 1
CSTS_SHST_SHIFT = 2
CSTS_SHST_CMPLT = 0x2 << CSTS_SHST_SHIFT
NVME_VS_1_3 = 0x00010300

# --------------------------------------------------------- status codes
SCT_GENERIC = 0
SCT_COMMAND_SPECIFIC = 1
SCT_MEDIA = 2
SCT_PATH = 3

# generic (SCT 0)
SC_SUCCESS = 0x00
SC_INVALID_OPCODE = 0x01
SC_INVALID_FIELD = 0x02
SC_CMDID_CONFLICT = 0x03
SC_DATA_TRANSFER_ERROR = 0x04
SC_INTERNAL = 0x06
SC_ABORT_REQ = 0x07
SC_ABORT_SQ_DELETION = 0x08
SC_FUSED_FAIL = 0x09
SC_FUSED_MISSING = 0x0A
SC_INVALID_NS = 0x0B
SC_CMD_SEQ_ERROR = 0x0C
SC_SGL_INVALID_LAST = 0x0D
SC_SGL_INVALID_COUNT = 0x0E
SC_DATA_SGL_LENGTH_INVALID = 0x0F
SC_SGL_INVALID_TYPE = 0x11
SC_SGL_INVALID_OFFSET = 0x16
SC_NS_WRITE_PROTECTED = 0x20
SC_TRANSIENT_TRANSPORT_ERROR = 0x22
SC_LBA_OUT_OF_RANGE = 0x80
SC_CAPACITY_EXCEEDED = 0x81
SC_NS_NOT_READY = 0x82
SC_RESERVATION_CONFLICT = 0x83
# command specific (SCT 1)
SC_INVALID_QID = 0x01
SC_INVALID_QUEUE_SIZE = 0x02
SC_ABORT_LIMIT = 0x03
SC_ASYNC_LIMIT = 0x05
SC_INVALID_LOG_PAGE = 0x09
SC_FEATURE_NOT_SAVEABLE = 0x0D
SC_FEATURE_NOT_CHANGEABLE = 0x0E
SC_CONNECT_INCOMPATIBLE_FORMAT = 0x80
SC_CONNECT_CTRL_BUSY = 0x81
SC_CONNECT_INVALID_PARAM = 0x82
SC_CONNECT_RESTART_DISCOVERY = 0x83
SC_CONNECT_INVALID_HOST = 0x84
SC_AUTH_REQUIRED = 0x91  # fabrics: the queue must authenticate first (DH-HMAC-CHAP)
# media (SCT 2)
SC_WRITE_FAULT = 0x80
SC_UNRECOVERED_READ_ERROR = 0x81
SC_COMPARE_FAILURE = 0x85
SC_ACCESS_DENIED = 0x86

STATUS_NAMES: dict[tuple[int, int], str] = {
    (0, SC_SUCCESS): "Successful Completion",
    (0, SC_INVALID_OPCODE): "Invalid Command Opcode",
    (0, SC_INVALID_FIELD): "Invalid Field in Command",
    (0, SC_CMDID_CONFLICT): "Command ID Conflict",
    (0, SC_DATA_TRANSFER_ERROR): "Data Transfer Error",
    (0, SC_INTERNAL): "Internal Error",
    (0, SC_ABORT_REQ): "Command Abort Requested",
    (0, SC_ABORT_SQ_DELETION): "Command Aborted due to SQ Deletion",
    (0, SC_FUSED_FAIL): "Command Aborted due to Failed Fused Command",
    (0, SC_FUSED_MISSING): "Command Aborted due to Missing Fused Command",
    (0, SC_INVALID_NS): "Invalid Namespace or Format",
    (0, SC_CMD_SEQ_ERROR): "Command Sequence Error",
    (0, SC_SGL_INVALID_LAST): "Invalid SGL Segment Descriptor",
    (0, SC_SGL_INVALID_COUNT): "Invalid Number of SGL Descriptors",
    (0, SC_DATA_SGL_LENGTH_INVALID): "Data SGL Length Invalid",
    (0, SC_SGL_INVALID_TYPE): "SGL Descriptor Type Invalid",
    (0, SC_SGL_INVALID_OFFSET): "SGL Offset Invalid",
    (0, SC_NS_WRITE_PROTECTED): "Namespace is Write Protected",
    (0, SC_TRANSIENT_TRANSPORT_ERROR): "Transient Transport Error",
    (0, SC_LBA_OUT_OF_RANGE): "LBA Out of Range",
    (0, SC_CAPACITY_EXCEEDED): "Capacity Exceeded",
    (0, SC_NS_NOT_READY): "Namespace Not Ready",
    (0, SC_RESERVATION_CONFLICT): "Reservation Conflict",
    (1, SC_INVALID_QID): "Invalid Queue Identifier",
    (1, SC_INVALID_QUEUE_SIZE): "Invalid Queue Size",
    (1, SC_ABORT_LIMIT): "Abort Command Limit Exceeded",
    (1, SC_ASYNC_LIMIT): "Asynchronous Event Request Limit Exceeded",
    (1, SC_INVALID_LOG_PAGE): "Invalid Log Page",
    (1, SC_FEATURE_NOT_SAVEABLE): "Feature Identifier Not Saveable",
    (1, SC_FEATURE_NOT_CHANGEABLE): "Feature Not Changeable",
    (1, SC_CONNECT_INCOMPATIBLE_FORMAT): "Connect Incompatible Format",
    (1, SC_CONNECT_CTRL_BUSY): "Connect Controller Busy",
    (1, SC_CONNECT_INVALID_PARAM): "Connect Invalid Parameters",
    (1, SC_CONNECT_RESTART_DISCOVERY): "Connect Restart Discovery",
    (1, SC_CONNECT_INVALID_HOST): "Connect Invalid Host",
    (1, SC_AUTH_REQUIRED): "Authentication Required",
    (2, SC_WRITE_FAULT): "Write Fault",
    (2, SC_UNRECOVERED_READ_ERROR): "Unrecovered Read Error",
    (2, SC_COMPARE_FAILURE): "Compare Failure",
    (2, SC_ACCESS_DENIED): "Access Denied",
}


def status_field(sct: int, sc: int, dnr: bool = False, more: bool = False) -> int:
    """CQE DW3 bits 31:17 as a 16-bit value (phase bit 0 left clear:
    fabrics have no phase tag)."""
    return ((sct & 0x7) << 9) | ((sc & 0xFF) << 1) | (int(more) << 14) | (int(dnr) << 15)


def status_name(sct: int, sc: int) -> str:
    return STATUS_NAMES.get((sct, sc), f"SCT {sct:#x} SC {sc:#04x}")


# handy pre-computed status fields
STATUS_SUCCESS = 0
ST_INVALID_OPCODE = status_field(SCT_GENERIC, SC_INVALID_OPCODE, dnr=True)
ST_INVALID_FIELD = status_field(SCT_GENERIC, SC_INVALID_FIELD, dnr=True)
ST_INVALID_NS = status_field(SCT_GENERIC, SC_INVALID_NS, dnr=True)
ST_LBA_OUT_OF_RANGE = status_field(SCT_GENERIC, SC_LBA_OUT_OF_RANGE, dnr=True)
ST_INTERNAL = status_field(SCT_GENERIC, SC_INTERNAL)
ST_CMD_SEQ_ERROR = status_field(SCT_GENERIC, SC_CMD_SEQ_ERROR, dnr=True)
ST_DATA_SGL_LENGTH_INVALID = status_field(SCT_GENERIC, SC_DATA_SGL_LENGTH_INVALID, dnr=True)
ST_SGL_INVALID_TYPE = status_field(SCT_GENERIC, SC_SGL_INVALID_TYPE, dnr=True)
ST_SGL_INVALID_OFFSET = status_field(SCT_GENERIC, SC_SGL_INVALID_OFFSET, dnr=True)
ST_NS_NOT_READY = status_field(SCT_GENERIC, SC_NS_NOT_READY)
ST_DATA_TRANSFER_ERROR = status_field(SCT_GENERIC, SC_DATA_TRANSFER_ERROR)
ST_TRANSIENT_TRANSPORT_ERROR = status_field(SCT_GENERIC, SC_TRANSIENT_TRANSPORT_ERROR)
ST_ABORT_SQ_DELETION = status_field(SCT_GENERIC, SC_ABORT_SQ_DELETION)
ST_ABORT_REQ = status_field(SCT_GENERIC, SC_ABORT_REQ)
ST_FUSED_FAIL = status_field(SCT_GENERIC, SC_FUSED_FAIL)
ST_FUSED_MISSING = status_field(SCT_GENERIC, SC_FUSED_MISSING, dnr=True)
ST_COMPARE_FAILURE = status_field(SCT_MEDIA, SC_COMPARE_FAILURE, dnr=True)
ST_WRITE_FAULT = status_field(SCT_MEDIA, SC_WRITE_FAULT)
ST_READ_ERROR = status_field(SCT_MEDIA, SC_UNRECOVERED_READ_ERROR)
ST_INVALID_LOG_PAGE = status_field(SCT_COMMAND_SPECIFIC, SC_INVALID_LOG_PAGE, dnr=True)
ST_ASYNC_LIMIT = status_field(SCT_COMMAND_SPECIFIC, SC_ASYNC_LIMIT, dnr=True)
ST_FEATURE_NOT_SAVEABLE = status_field(SCT_COMMAND_SPECIFIC, SC_FEATURE_NOT_SAVEABLE, dnr=True)
ST_FEATURE_NOT_CHANGEABLE = status_field(SCT_COMMAND_SPECIFIC, SC_FEATURE_NOT_CHANGEABLE, dnr=True)
ST_CONNECT_INVALID_PARAM = status_field(SCT_COMMAND_SPECIFIC, SC_CONNECT_INVALID_PARAM, dnr=True)
ST_CONNECT_INVALID_HOST = status_field(SCT_COMMAND_SPECIFIC, SC_CONNECT_INVALID_HOST, dnr=True)
ST_CONNECT_CTRL_BUSY = status_field(SCT_COMMAND_SPECIFIC, SC_CONNECT_CTRL_BUSY, dnr=True)
ST_AUTH_REQUIRED = status_field(SCT_COMMAND_SPECIFIC, SC_AUTH_REQUIRED, dnr=True)
ST_CONNECT_INCOMPATIBLE_FORMAT = status_field(
    SCT_COMMAND_SPECIFIC, SC_CONNECT_INCOMPATIBLE_FORMAT, dnr=True
)


def split_status(status: int) -> tuple[int, int, bool]:
    """(sct, sc, dnr) of a CQE status field."""
    return (status >> 9) & 0x7, (status >> 1) & 0xFF, bool(status >> 15)


# ---------------------------------------------------------------- log pages
LID_SUPPORTED_LOGS = 0x00
LID_ERROR = 0x01
LID_SMART = 0x02
LID_FW_SLOT = 0x03
LID_CHANGED_NS = 0x04
LID_CMD_EFFECTS = 0x05
LID_DISCOVERY = 0x70
LID_RESV_NOTIFICATION = 0x80

# ---------------------------------------------------------------- features
FID_ARBITRATION = 0x01
FID_POWER_MGMT = 0x02
FID_TEMP_THRESHOLD = 0x04
FID_ERROR_RECOVERY = 0x05
FID_VOLATILE_WC = 0x06
FID_NUM_QUEUES = 0x07
FID_IRQ_COALESCING = 0x08
FID_IRQ_CONFIG = 0x09
FID_WRITE_ATOMICITY = 0x0A
FID_ASYNC_EVENT_CONFIG = 0x0B
FID_KATO = 0x0F
FID_HOST_ID = 0x81

# ------------------------------------------------------------- identify CNS
CNS_NS = 0x00
CNS_CTRL = 0x01
CNS_ACTIVE_NS_LIST = 0x02
CNS_NS_DESC_LIST = 0x03
CNS_CS_NS = 0x05
CNS_CS_CTRL = 0x06
CNS_CS_ACTIVE_NS_LIST = 0x07
CNS_CS_INDEP_NS = 0x08
CSI_NVM = 0x00

NIDT_EUI64 = 0x01
NIDT_NGUID = 0x02
NIDT_UUID = 0x03
NIDT_CSI = 0x04

# async events: type (bits 2:0), info (15:8), log page (23:16)
AER_TYPE_NOTICE = 0x2
AER_NOTICE_NS_CHANGED = 0x00
AER_NOTICE_DISC_CHANGED = 0xF0
AEC_NS_ATTR = 1 << 8  # Set Features 0Bh bit enabling the NS attribute notice
AEC_DISC_LOG_CHANGE = 1 << 31


def aen_dw0(ev_type: int, info: int, lid: int) -> int:
    return (ev_type & 0x7) | ((info & 0xFF) << 8) | ((lid & 0xFF) << 16)


# ------------------------------------------------------------- discovery
NVME_DISC_SUBSYS_NAME = "nqn.2014-08.org.nvmexpress.discovery"
TRTYPE_RDMA = 1
TRTYPE_FC = 2
TRTYPE_TCP = 3
TRTYPE_LOOP = 254
ADRFAM_IPV4 = 1
ADRFAM_IPV6 = 2
SUBTYPE_DISCOVERY = 1  # referral to another discovery service
SUBTYPE_NVME = 2
SUBTYPE_CURRENT_DISCOVERY = 3
TREQ_NOT_REQUIRED = 0x2
TREQ_DISABLE_SQFLOW = 0x4
TREQ_SECURE_REQUIRED = 0x01  # TREQ bits 1:0 = 01b: a secure channel is required
TCP_SECTYPE_TLS13 = 0x02  # TSAS SECTYPE of an NVMe/TCP port: TLS 1.3
DISC_EFLAGS_DUPRETINFO = 0x1
DISC_EFLAGS_EPCSD = 0x2
CNTLID_DYNAMIC = 0xFFFF
CNTLID_MIN = 1
CNTLID_MAX = 0xFFEF

# -------------------------------------------------------------- SQE / CQE
SQE_SIZE = 64
CQE_SIZE = 16

# opcode, flags, cid, nsid, cdw2, cdw3, mptr, dptr(16), cdw10..cdw15
SQE = struct.Struct("<BBHIIIQ16s6I")
# result (u64 covers DW0+DW1), sqhd, sqid, cid, status
CQE = struct.Struct("<QHHHH")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# SQE field offsets (for FEI / IPO reporting)
SQE_OFF_OPCODE = 0
SQE_OFF_FLAGS = 1
SQE_OFF_CID = 2
SQE_OFF_NSID = 4
SQE_OFF_DPTR = 24
SQE_OFF_CDW10 = 40

PSDT_SGL = 0x1  # SQE flags bits 7:6 == 01b: SGL for data
FUSE_NONE = 0
FUSE_FIRST = 1
FUSE_SECOND = 2


class Sqe(NamedTuple):
    opcode: int
    flags: int
    cid: int
    nsid: int
    cdw2: int
    cdw3: int
    mptr: int
    dptr: bytes
    cdw10: int
    cdw11: int
    cdw12: int
    cdw13: int
    cdw14: int
    cdw15: int

    @property
    def fuse(self) -> int:
        return self.flags & 0x3

    @property
    def psdt(self) -> int:
        return (self.flags >> 6) & 0x3


def unpack_sqe(buf: bytes | memoryview, offset: int = 0) -> Sqe:
    return Sqe(*SQE.unpack_from(buf, offset))


def pack_sqe(
    opcode: int,
    cid: int,
    nsid: int = 0,
    cdws: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0),
    dptr: bytes = b"\0" * 16,
    flags: int = PSDT_SGL << 6,
    cdw2: int = 0,
    cdw3: int = 0,
    mptr: int = 0,
) -> bytes:
    return SQE.pack(opcode, flags, cid, nsid, cdw2, cdw3, mptr, dptr, *cdws)


def pack_cqe(cid: int, status: int = 0, result: int = 0, sqhd: int = 0, sqid: int = 0) -> bytes:
    return CQE.pack(result, sqhd, sqid, cid, status)


class Cqe(NamedTuple):
    result: int
    sqhd: int
    sqid: int
    cid: int
    status: int


def unpack_cqe(buf: bytes | memoryview, offset: int = 0) -> Cqe:
    return Cqe(*CQE.unpack_from(buf, offset))


# ------------------------------------------------------------------ SGL
SGL_DATA_BLOCK = 0x0
SGL_BIT_BUCKET = 0x1
SGL_SEGMENT = 0x2
SGL_LAST_SEGMENT = 0x3
SGL_KEYED_DATA_BLOCK = 0x4
SGL_TRANSPORT_DATA_BLOCK = 0x5
SGL_SUBTYPE_ADDRESS = 0x0
SGL_SUBTYPE_OFFSET = 0x1
SGL_SUBTYPE_TRANSPORT = 0xA
SGL = struct.Struct("<QI3xB")

# the two descriptors NVMe/TCP uses
SGL_TYPE_INCAPSULE = (SGL_DATA_BLOCK << 4) | SGL_SUBTYPE_OFFSET  # 0x01
SGL_TYPE_TRANSPORT = (SGL_TRANSPORT_DATA_BLOCK << 4) | SGL_SUBTYPE_TRANSPORT  # 0x5A


class Sgl(NamedTuple):
    address: int
    length: int
    type: int  # descriptor type (high nibble)
    subtype: int  # low nibble


def unpack_sgl(dptr: bytes | memoryview) -> Sgl:
    addr, length, ident = SGL.unpack_from(dptr, 0)
    return Sgl(addr, length, ident >> 4, ident & 0xF)


def pack_sgl(address: int, length: int, ident: int) -> bytes:
    return SGL.pack(address, length, ident)


# ------------------------------------------------------- fabrics commands
# Connect SQE: fctype @4, recfmt @40, qid @42, sqsize @44, cattr @46, kato @48
CONNECT_SQE = struct.Struct("<HHHBxI")  # from offset 40
CONNECT_OFF_RECFMT = 40
CONNECT_OFF_QID = 42
CONNECT_OFF_SQSIZE = 44
CONNECT_OFF_CATTR = 46
CONNECT_OFF_KATO = 48
CATTR_DISABLE_SQ_FLOW = 0x4
CONNECT_DATA_SIZE = 1024
CONNECT_DATA_OFF_HOSTID = 0
CONNECT_DATA_OFF_CNTLID = 16
CONNECT_DATA_OFF_SUBNQN = 256
CONNECT_DATA_OFF_HOSTNQN = 512
# Property Get/Set: attrib @40, offset @44, value @48
PROPERTY = struct.Struct("<B3xIQ")  # from offset 40


def connect_ipo(offset: int, in_data: bool) -> int:
    """Connect Invalid Parameters DW0 as the Linux host decodes it: the
    offset in bits 15:0, bit 16 set when it points into the Connect data."""
    return (int(in_data) << 16) | (offset & 0xFFFF)


def u8(buf: bytes | memoryview, off: int) -> int:
    return _U8.unpack_from(buf, off)[0]


def u16(buf: bytes | memoryview, off: int) -> int:
    return _U16.unpack_from(buf, off)[0]


def u32(buf: bytes | memoryview, off: int) -> int:
    return _U32.unpack_from(buf, off)[0]


def u64(buf: bytes | memoryview, off: int) -> int:
    return _U64.unpack_from(buf, off)[0]


def cstr(buf: bytes | bytearray | memoryview, off: int, size: int) -> bytes:
    """A NUL-terminated string field (bytes, compared byte for byte)."""
    raw = bytes(buf[off : off + size])
    n = raw.find(b"\0")
    return raw if n < 0 else raw[:n]


def fixed_ascii(s: str, size: int) -> bytes:
    """Space-padded ASCII field (serial number, model, firmware revision)."""
    return s.encode("ascii", "replace")[:size].ljust(size, b" ")
