"""Operation codes and CDB field decoding (SPC-4 4.2, SBC-3 5.x)."""

from __future__ import annotations

from typing import NamedTuple

from .sense import invalid_cdb

TEST_UNIT_READY = 0x00
REQUEST_SENSE = 0x03
READ_6 = 0x08
WRITE_6 = 0x0A
INQUIRY = 0x12
MODE_SELECT_6 = 0x15
RESERVE_6 = 0x16
RELEASE_6 = 0x17
MODE_SENSE_6 = 0x1A
START_STOP_UNIT = 0x1B
PREVENT_ALLOW = 0x1E
READ_CAPACITY_10 = 0x25
READ_10 = 0x28
WRITE_10 = 0x2A
WRITE_VERIFY_10 = 0x2E
VERIFY_10 = 0x2F
PRE_FETCH_10 = 0x34
SYNCHRONIZE_CACHE_10 = 0x35
WRITE_SAME_10 = 0x41
UNMAP = 0x42
MODE_SELECT_10 = 0x55
RESERVE_10 = 0x56
RELEASE_10 = 0x57
MODE_SENSE_10 = 0x5A
PERSISTENT_RESERVE_IN = 0x5E
PERSISTENT_RESERVE_OUT = 0x5F
READ_16 = 0x88
COMPARE_AND_WRITE = 0x89
WRITE_16 = 0x8A
ORWRITE_16 = 0x8B
WRITE_VERIFY_16 = 0x8E
VERIFY_16 = 0x8F
PRE_FETCH_16 = 0x90
SYNCHRONIZE_CACHE_16 = 0x91
WRITE_SAME_16 = 0x93
SERVICE_ACTION_IN_16 = 0x9E
REPORT_LUNS = 0xA0
MAINTENANCE_IN = 0xA3
READ_12 = 0xA8
WRITE_12 = 0xAA
WRITE_VERIFY_12 = 0xAE
VERIFY_12 = 0xAF

# service actions
SAI_READ_CAPACITY_16 = 0x10
SAI_GET_LBA_STATUS = 0x12
MI_REPORT_SUPPORTED_OPCODES = 0x0C


def cdb_length(opcode: int) -> int:
    """CDB length from the group code (bits 7..5 of the opcode)."""
    group = opcode >> 5
    return (6, 10, 10, 0, 16, 12, 0, 0)[group]


def be(cdb: bytes | memoryview, start: int, n: int) -> int:
    return int.from_bytes(cdb[start : start + n], "big")


class RwCdb(NamedTuple):
    lba: int
    nblocks: int
    flags: int  # byte 1 (protect, DPO, FUA, BYTCHK ...); 0 for the 6-byte forms


def parse_rw(cdb: bytes) -> RwCdb:
    """LBA and transfer length of READ/WRITE/VERIFY/WRITE AND VERIFY/PRE-FETCH/..."""
    group = cdb[0] >> 5
    if group == 0:
        # 6-byte: 21-bit LBA; a transfer length of 0 means 256 blocks (SBC-3 5.7)
        lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
        n = cdb[4] or 256
        return RwCdb(lba, n, 0)
    if group in (1, 2):
        return RwCdb(be(cdb, 2, 4), be(cdb, 7, 2), cdb[1])
    if group == 5:
        return RwCdb(be(cdb, 2, 4), be(cdb, 6, 4), cdb[1])
    if group == 4:
        return RwCdb(be(cdb, 2, 8), be(cdb, 10, 4), cdb[1])
    raise invalid_cdb(0)


def allocation_length(cdb: bytes) -> int:
    """ALLOCATION LENGTH of the common SPC commands."""
    op = cdb[0]
    if op in (INQUIRY,):
        return be(cdb, 3, 2)
    if op in (REQUEST_SENSE, MODE_SENSE_6):
        return cdb[4]
    if op in (MODE_SENSE_10, PERSISTENT_RESERVE_IN):
        return be(cdb, 7, 2)
    if op in (REPORT_LUNS, MAINTENANCE_IN):
        return be(cdb, 6, 4)
    if op == SERVICE_ACTION_IN_16:
        return be(cdb, 10, 4)
    return 0
