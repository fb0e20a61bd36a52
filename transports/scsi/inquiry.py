"""INQUIRY: standard data and the VPD pages (SPC-4 6.6, 7.8; SBC-3 6.5)."""

from __future__ import annotations

import uuid as uuid_mod
from typing import TYPE_CHECKING

from .sense import invalid_cdb

if TYPE_CHECKING:
    from .lun import ScsiLun
    from .task import ScsiTask

VENDOR_ID = b"BLKFABRC"  # exactly 8 ASCII bytes (T10 vendor identification)
REVISION = b"0001"
VERSION_DESCRIPTORS = (0x00A0, 0x0960, 0x0460, 0x04C0)  # SAM-5, iSCSI, SPC-4, SBC-3
SUPPORTED_VPD = (0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2)

PQ_NOT_CONNECTED = 0x7F  # peripheral qualifier 011b, device type 1Fh


def _pad(s: bytes, n: int) -> bytes:
    return s[:n].ljust(n, b" ")


def _ascii(s: str) -> bytes:
    return "".join(c if 0x20 <= ord(c) < 0x7F else "_" for c in s).encode()


def standard_inquiry(lun: ScsiLun | None) -> bytes:
    b = bytearray(74)
    b[0] = 0x00 if lun is not None else PQ_NOT_CONNECTED
    b[2] = 0x06  # SPC-4
    b[3] = 0x12  # HiSup, response data format 2
    b[4] = len(b) - 5
    b[7] = 0x02  # CmdQue
    b[8:16] = VENDOR_ID
    product = _ascii(lun.bdev.product_name) if lun is not None else b""
    b[16:32] = _pad(product or b"blockfabric", 16)
    b[32:36] = REVISION
    for i, d in enumerate(VERSION_DESCRIPTORS):
        b[58 + 2 * i : 60 + 2 * i] = d.to_bytes(2, "big")
    return bytes(b)


def _desc(proto_codeset: int, piv_assoc_type: int, ident: bytes) -> bytes:
    return bytes((proto_codeset, piv_assoc_type, 0, len(ident))) + ident


def _scsi_name(name: str) -> bytes:
    raw = name.encode() + b"\0"
    return raw + b"\0" * (-len(raw) % 4)


def naa_id(uuid_str: str) -> bytes:
    """NAA 6 (IEEE registered extended) designator built from the bdev UUID."""
    u = uuid_mod.UUID(uuid_str).bytes
    return bytes(((0x60 | (u[0] & 0x0F)),)) + u[1:16]


def serial_number(lun: ScsiLun) -> bytes:
    return uuid_mod.UUID(lun.bdev.uuid).hex.encode()


def vpd_page(lun: ScsiLun, page: int, task: ScsiTask) -> bytes:
    bdev = lun.bdev
    if page == 0x00:
        body = bytes(SUPPORTED_VPD)
    elif page == 0x80:
        body = serial_number(lun)
    elif page == 0x83:
        d = bytearray()
        d += _desc(0x01, 0x03, naa_id(bdev.uuid))  # binary, LU, NAA
        d += _desc(0x02, 0x01, VENDOR_ID + serial_number(lun))  # ASCII, LU, T10 vendor id
        if task.target_port:
            # iSCSI (5), UTF-8, PIV, target port, SCSI name string
            d += _desc(0x53, 0x98, _scsi_name(task.target_port))
        rel = lun.device.relative_port_id.to_bytes(2, "big")
        d += _desc(0x51, 0x94, b"\0\0" + rel)  # relative target port identifier
        if lun.device.name:
            d += _desc(0x53, 0xA8, _scsi_name(lun.device.name))  # target device name
        body = bytes(d)
    elif page == 0x86:
        b = bytearray(60)
        b[1] = 0x07  # HEADSUP, ORDSUP, SIMPSUP
        body = bytes(b)
    elif page == 0xB0:
        b = bytearray(60)
        b[1] = lun.max_caw_blocks
        b[2:4] = (1).to_bytes(2, "big")  # optimal transfer length granularity
        b[4:8] = lun.max_transfer_blocks.to_bytes(4, "big")
        b[8:12] = lun.optimal_transfer_blocks.to_bytes(4, "big")
        if bdev.supports_unmap:
            b[16:20] = lun.max_unmap_lba_count.to_bytes(4, "big")
            b[20:24] = lun.max_unmap_descriptors.to_bytes(4, "big")
            b[24:28] = (1).to_bytes(4, "big")  # optimal unmap granularity
        b[32:40] = lun.max_write_same_blocks.to_bytes(8, "big")
        # WSNZ (body byte 0) stays 0: WRITE SAME with 0 blocks means "to the end"
        body = bytes(b)
    elif page == 0xB1:
        b = bytearray(60)
        b[0:2] = (1).to_bytes(2, "big")  # medium rotation rate: non-rotating
        body = bytes(b)
    elif page == 0xB2:
        b = bytearray(4)
        if bdev.supports_unmap:
            b[1] = 0x80 | 0x40 | 0x20 | 0x04  # LBPU, LBPWS, LBPWS10, LBPRZ
            b[2] = 0x02  # thin provisioned
        body = bytes(b)
    else:
        raise invalid_cdb(2)
    return bytes((0x00, page)) + len(body).to_bytes(2, "big") + body


def inquiry(lun: ScsiLun | None, task: ScsiTask) -> bytes:
    """Full (untruncated) INQUIRY data for `task.cdb`; raises SenseError."""
    cdb = task.cdb
    evpd = cdb[1] & 0x01
    if cdb[1] & 0x02:
        raise invalid_cdb(1, 1)  # CMDDT is obsolete
    if not evpd:
        if cdb[2]:
            raise invalid_cdb(2)
        return standard_inquiry(lun)
    if lun is None:
        # VPD pages of an absent LU: only the qualifier matters to initiators
        return bytes((PQ_NOT_CONNECTED, cdb[2], 0, 0))
    return vpd_page(lun, cdb[2], task)
