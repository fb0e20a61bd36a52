"""SCSI status codes, sense keys, ASC/ASCQ pairs and fixed-format sense data.

Handlers raise `SenseError`; the LUN turns it into CHECK CONDITION. Building
the 18-byte sense only on the error path keeps the hot path allocation-free.
"""

from __future__ import annotations

# --- status (SAM-5) --------------------------------------------------------
GOOD = 0x00
CHECK_CONDITION = 0x02
CONDITION_MET = 0x04
BUSY = 0x08
RESERVATION_CONFLICT = 0x18
TASK_SET_FULL = 0x28
ACA_ACTIVE = 0x30
TASK_ABORTED = 0x40

# --- sense keys ------------------------------------------------------------
NO_SENSE = 0x0
RECOVERED_ERROR = 0x1
NOT_READY = 0x2
MEDIUM_ERROR = 0x3
HARDWARE_ERROR = 0x4
ILLEGAL_REQUEST = 0x5
UNIT_ATTENTION = 0x6
DATA_PROTECT = 0x7
ABORTED_COMMAND = 0xB
MISCOMPARE = 0xE

# --- additional sense code / qualifier pairs -------------------------------
ASC_NO_ADDITIONAL = (0x00, 0x00)
ASC_LUN_NOT_READY = (0x04, 0x00)
ASC_WRITE_ERROR = (0x0C, 0x00)
ASC_UNRECOVERED_READ = (0x11, 0x00)
ASC_PARAM_LIST_LENGTH = (0x1A, 0x00)
ASC_MISCOMPARE_VERIFY = (0x1D, 0x00)
ASC_INVALID_OPCODE = (0x20, 0x00)
ASC_LBA_OUT_OF_RANGE = (0x21, 0x00)
ASC_INVALID_FIELD_CDB = (0x24, 0x00)
ASC_LUN_NOT_SUPPORTED = (0x25, 0x00)
ASC_INVALID_FIELD_PARAM = (0x26, 0x00)
ASC_WRITE_PROTECTED = (0x27, 0x00)
ASC_POWER_ON_RESET = (0x29, 0x00)
ASC_POWER_ON = (0x29, 0x01)
ASC_BUS_DEVICE_RESET = (0x29, 0x03)
ASC_NEXUS_LOSS = (0x29, 0x07)
ASC_MODE_PARAMS_CHANGED = (0x2A, 0x01)
ASC_RESERVATIONS_PREEMPTED = (0x2A, 0x03)
ASC_RESERVATIONS_RELEASED = (0x2A, 0x04)
ASC_REGISTRATIONS_PREEMPTED = (0x2A, 0x05)
ASC_CAPACITY_CHANGED = (0x2A, 0x09)
ASC_COMMANDS_CLEARED = (0x2F, 0x00)
ASC_SAVING_NOT_SUPPORTED = (0x39, 0x00)
ASC_MEDIUM_NOT_PRESENT = (0x3A, 0x00)
ASC_REPORTED_LUNS_CHANGED = (0x3F, 0x0E)
ASC_INTERNAL_TARGET_FAILURE = (0x44, 0x00)
ASC_INSUFFICIENT_REG_RESOURCES = (0x55, 0x04)

SENSE_LEN = 18


def build_sense(
    key: int,
    asc: int,
    ascq: int,
    info: int | None = None,
    sks: bytes | None = None,
) -> bytes:
    """Fixed-format sense data, response code 70h (current error)."""
    b = bytearray(SENSE_LEN)
    b[0] = 0x70
    b[2] = key & 0x0F
    if info is not None:
        b[0] |= 0x80  # VALID: INFORMATION holds something meaningful
        b[3:7] = (info & 0xFFFFFFFF).to_bytes(4, "big")
    b[7] = SENSE_LEN - 8
    b[12] = asc
    b[13] = ascq
    if sks is not None:
        b[15:18] = sks
    return bytes(b)


def field_pointer_sks(byte: int, bit: int | None = None, cdb: bool = True) -> bytes:
    """Sense-key-specific field pointer (SPC-4 4.5.2.4.2): SKSV, C/D, BPV, bit, field."""
    b0 = 0x80 | (0x40 if cdb else 0)
    if bit is not None:
        b0 |= 0x08 | (bit & 7)
    return bytes((b0, (byte >> 8) & 0xFF, byte & 0xFF))


class SenseError(Exception):
    """A command failed with CHECK CONDITION and this sense data."""

    def __init__(
        self,
        key: int,
        asc_ascq: tuple[int, int],
        info: int | None = None,
        sks: bytes | None = None,
    ) -> None:
        super().__init__(f"sense {key:#x}/{asc_ascq[0]:#04x}/{asc_ascq[1]:#04x}")
        self.key = key
        self.asc, self.ascq = asc_ascq
        self.info = info
        self.sks = sks

    @property
    def sense(self) -> bytes:
        return build_sense(self.key, self.asc, self.ascq, self.info, self.sks)


class ConflictError(Exception):
    """RESERVATION CONFLICT status (no sense data)."""


def invalid_cdb(byte: int, bit: int | None = None) -> SenseError:
    return SenseError(ILLEGAL_REQUEST, ASC_INVALID_FIELD_CDB, sks=field_pointer_sks(byte, bit))


def invalid_param(byte: int, bit: int | None = None) -> SenseError:
    return SenseError(
        ILLEGAL_REQUEST, ASC_INVALID_FIELD_PARAM, sks=field_pointer_sks(byte, bit, cdb=False)
    )


def param_list_length() -> SenseError:
    return SenseError(ILLEGAL_REQUEST, ASC_PARAM_LIST_LENGTH)


def invalid_opcode() -> SenseError:
    return SenseError(ILLEGAL_REQUEST, ASC_INVALID_OPCODE, sks=field_pointer_sks(0))


def lba_out_of_range() -> SenseError:
    return SenseError(ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE)


def lun_not_supported_sense() -> bytes:
    return build_sense(ILLEGAL_REQUEST, *ASC_LUN_NOT_SUPPORTED)


def parse_sense(sense: bytes) -> tuple[int, int, int]:
    """(key, asc, ascq) of fixed-format sense; handy for transports and tests."""
    if len(sense) < 14:
        return (0, 0, 0)
    return (sense[2] & 0x0F, sense[12], sense[13])
