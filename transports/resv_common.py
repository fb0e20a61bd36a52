"""What SCSI persistent reservations (SPC-4 5.13, transports/scsi/pr.py) and
NVMe reservations (NVMe base spec 8.19, transports/nvmf/reservation*.py)
share without bending either specification:

* the six reservation kinds and the access rule of the common command
  classes: which role (holder, registrant, anyone else) may run a command
  that reads and one that writes under each kind (SPC-4 table 66 / SBC-3
  table 13 and NVMe's "Command Behavior in the Presence of a Reservation"
  table agree on these rows; each spec adds its own exempt commands and its
  own type codes, mapped here);
* the durable file writer of Persist Through Power Loss / APTPL state.

Plain data and functions, no I/O other than `durable_replace`.
"""

from __future__ import annotations

import enum
import os


class Kind(enum.IntEnum):
    """A reservation kind, whatever code its spec gives it."""

    WRITE_EXCLUSIVE = 1
    EXCLUSIVE_ACCESS = 2
    WRITE_EXCLUSIVE_REG_ONLY = 3
    EXCLUSIVE_ACCESS_REG_ONLY = 4
    WRITE_EXCLUSIVE_ALL_REGS = 5
    EXCLUSIVE_ACCESS_ALL_REGS = 6


class Role(enum.IntEnum):
    HOLDER = 0
    REGISTRANT = 1  # registered, not holding the reservation
    OTHER = 2  # not registered


# SPC-4 PR type codes and NVMe RTYPE codes of each kind
SPC_TYPES: dict[int, Kind] = {
    0x1: Kind.WRITE_EXCLUSIVE,
    0x3: Kind.EXCLUSIVE_ACCESS,
    0x5: Kind.WRITE_EXCLUSIVE_REG_ONLY,
    0x6: Kind.EXCLUSIVE_ACCESS_REG_ONLY,
    0x7: Kind.WRITE_EXCLUSIVE_ALL_REGS,
    0x8: Kind.EXCLUSIVE_ACCESS_ALL_REGS,
}
NVME_TYPES: dict[int, Kind] = {int(k): k for k in Kind}  # NVMe RTYPE 1..6 in this order

ALL_REGISTRANTS = frozenset((Kind.WRITE_EXCLUSIVE_ALL_REGS, Kind.EXCLUSIVE_ACCESS_ALL_REGS))
REGISTRANTS_ONLY = frozenset((Kind.WRITE_EXCLUSIVE_REG_ONLY, Kind.EXCLUSIVE_ACCESS_REG_ONLY))
EXCLUSIVE_ACCESS = frozenset(
    (Kind.EXCLUSIVE_ACCESS, Kind.EXCLUSIVE_ACCESS_REG_ONLY, Kind.EXCLUSIVE_ACCESS_ALL_REGS)
)


def role_of(kind: Kind, is_holder: bool, is_registered: bool) -> Role:
    """The role of a host/nexus. Under the all-registrants kinds every
    registrant is a holder."""
    if is_holder or (kind in ALL_REGISTRANTS and is_registered):
        return Role.HOLDER
    return Role.REGISTRANT if is_registered else Role.OTHER


def access_allowed(kind: Kind, role: Role, writes: bool) -> bool:
    """True when a command of the read class (``writes`` False) or of the
    write class (True) from ``role`` may run under a reservation of ``kind``;
    False means Reservation Conflict.

    ==========================  =========  ===========  ======
    kind                        holder     registrant   other
    ==========================  =========  ===========  ======
    Write Exclusive             R W        R            R
    Exclusive Access            R W        -            -
    WE Registrants Only         R W        R W          R
    EA Registrants Only         R W        R W          -
    WE All Registrants          R W        R W (holder) R
    EA All Registrants          R W        R W (holder) -
    ==========================  =========  ===========  ======
    """
    if role == Role.HOLDER:
        return True
    if role == Role.REGISTRANT and (kind in REGISTRANTS_ONLY or kind in ALL_REGISTRANTS):
        return True
    if kind in EXCLUSIVE_ACCESS:
        return False
    return not writes  # a Write Exclusive kind: reads from anyone


def durable_replace(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a power loss leaves either the
    old or the new file: write a temporary file, fsync it, rename it over
    the old one, fsync the folder (the rename itself)."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
