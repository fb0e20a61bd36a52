"""Primary commands (SPC-4): TEST UNIT READY, REQUEST SENSE, REPORT LUNS,
REPORT SUPPORTED OPERATION CODES, START STOP UNIT."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import cdb as C
from .sense import SENSE_LEN, build_sense, invalid_cdb

if TYPE_CHECKING:
    from .lun import ScsiLun
    from .task import ScsiTask

# (opcode, service action or None, CDB length) of every command a LUN serves
SUPPORTED: tuple[tuple[int, int | None, int], ...] = (
    (C.TEST_UNIT_READY, None, 6),
    (C.REQUEST_SENSE, None, 6),
    (C.READ_6, None, 6),
    (C.WRITE_6, None, 6),
    (C.INQUIRY, None, 6),
    (C.MODE_SELECT_6, None, 6),
    (C.RESERVE_6, None, 6),
    (C.RELEASE_6, None, 6),
    (C.MODE_SENSE_6, None, 6),
    (C.START_STOP_UNIT, None, 6),
    (C.READ_CAPACITY_10, None, 10),
    (C.READ_10, None, 10),
    (C.WRITE_10, None, 10),
    (C.WRITE_VERIFY_10, None, 10),
    (C.VERIFY_10, None, 10),
    (C.PRE_FETCH_10, None, 10),
    (C.SYNCHRONIZE_CACHE_10, None, 10),
    (C.WRITE_SAME_10, None, 10),
    (C.UNMAP, None, 10),
    (C.MODE_SELECT_10, None, 10),
    (C.RESERVE_10, None, 10),
    (C.RELEASE_10, None, 10),
    (C.MODE_SENSE_10, None, 10),
    *((C.PERSISTENT_RESERVE_IN, sa, 10) for sa in range(4)),
    *((C.PERSISTENT_RESERVE_OUT, sa, 10) for sa in range(7)),
    (C.READ_16, None, 16),
    (C.COMPARE_AND_WRITE, None, 16),
    (C.WRITE_16, None, 16),
    (C.ORWRITE_16, None, 16),
    (C.WRITE_VERIFY_16, None, 16),
    (C.VERIFY_16, None, 16),
    (C.PRE_FETCH_16, None, 16),
    (C.SYNCHRONIZE_CACHE_16, None, 16),
    (C.WRITE_SAME_16, None, 16),
    (C.SERVICE_ACTION_IN_16, C.SAI_READ_CAPACITY_16, 16),
    (C.SERVICE_ACTION_IN_16, C.SAI_GET_LBA_STATUS, 16),
    (C.REPORT_LUNS, None, 12),
    (C.MAINTENANCE_IN, C.MI_REPORT_SUPPORTED_OPCODES, 12),
    (C.READ_12, None, 12),
    (C.WRITE_12, None, 12),
    (C.WRITE_VERIFY_12, None, 12),
    (C.VERIFY_12, None, 12),
)
_SA_OPCODES = frozenset(op for op, sa, _ in SUPPORTED if sa is not None)
# command timeouts descriptor: length 0Ah, nominal and recommended timeout (s)
_TIMEOUTS = bytes((0, 0x0A, 0, 0)) + (30).to_bytes(4, "big") + (60).to_bytes(4, "big")


def _usage(op: int, sa: int | None, length: int) -> bytes:
    """CDB usage data: opcode, then a mask of the bits the device looks at."""
    b = bytearray(b"\xff" * length)
    b[0] = op
    if sa is not None:
        b[1] = 0xE0 | sa if op != C.PERSISTENT_RESERVE_IN else sa
    b[-1] = 0x04  # control byte: NACA
    return bytes(b)


def test_unit_ready(lun: ScsiLun, task: ScsiTask) -> None:
    pass


def request_sense(lun: ScsiLun | None, task: ScsiTask, pending: bytes | None) -> None:
    if task.cdb[1] & 0x01:
        raise invalid_cdb(1, 0)  # descriptor format is not supported
    data = pending if pending is not None else build_sense(0, 0, 0)
    task.set_data(data[:SENSE_LEN], task.cdb[4])


def start_stop_unit(lun: ScsiLun, task: ScsiTask) -> None:
    pc = task.cdb[4] >> 4
    if pc not in (0x0, 0x1, 0x2, 0x3, 0x7, 0xA, 0xB):
        raise invalid_cdb(4, 7)
    # nothing to spin up or down; LOEJ on a non-removable medium is a no-op too


def report_luns(lun_ids: list[int], task: ScsiTask) -> None:
    cdb = task.cdb
    select = cdb[2]
    alloc = C.be(cdb, 6, 4)
    if select not in (0x00, 0x01, 0x02):
        raise invalid_cdb(2)
    if alloc < 16:
        raise invalid_cdb(6)
    ids = [] if select == 0x01 else sorted(lun_ids)
    body = bytearray()
    for i in ids:
        # single-level LUN: peripheral (00b) for < 256, flat space (01b) above
        body += (i if i < 256 else 0x4000 | (i & 0x3FFF)).to_bytes(2, "big") + bytes(6)
    data = len(body).to_bytes(4, "big") + bytes(4) + bytes(body)
    task.set_data(data, alloc)


def report_supported_opcodes(lun: ScsiLun, task: ScsiTask) -> None:
    cdb = task.cdb
    rctd = bool(cdb[2] & 0x80)
    opt = cdb[2] & 0x07
    req_op = cdb[3]
    req_sa = C.be(cdb, 4, 2)
    alloc = C.be(cdb, 6, 4)
    if opt == 0:
        descs = bytearray()
        for op, sa, ln in SUPPORTED:
            d = bytearray(8)
            d[0] = op
            d[2:4] = (sa or 0).to_bytes(2, "big")
            d[5] = (0x02 if rctd else 0) | (0x01 if sa is not None else 0)
            d[6:8] = ln.to_bytes(2, "big")
            descs += d
            if rctd:
                descs += _TIMEOUTS
        data = len(descs).to_bytes(4, "big") + bytes(descs)
    elif opt in (1, 2, 3):
        if opt == 1 and req_op in _SA_OPCODES:
            raise invalid_cdb(2, 2)
        if opt == 2 and req_op not in _SA_OPCODES:
            raise invalid_cdb(2, 2)
        use_sa = opt == 2 or (opt == 3 and req_op in _SA_OPCODES)
        match = [
            (op, sa, ln)
            for op, sa, ln in SUPPORTED
            if op == req_op and (sa == req_sa if use_sa else sa is None)
        ]
        if match:
            op, sa, ln = match[0]
            usage = _usage(op, sa, ln)
            data = bytes(((0x80 if rctd else 0) | 0x03,)) + ln.to_bytes(2, "big")
            data = b"\0" + data + usage + (_TIMEOUTS if rctd else b"")
        else:
            data = bytes((0, 0x01, 0, 0))  # SUPPORT 001b: not supported
    else:
        raise invalid_cdb(2, 2)
    task.set_data(data, alloc)
