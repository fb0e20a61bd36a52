"""NVMe reservations (NVMe base spec 2.0, 8.19; NVM command set 4.x): the
sans-I/O state machine of one namespace, the command decoders, the
Reservation Report data structures, the compact view every reactor checks
commands against, and a controller's Reservation Notification log.

Hosts are identified by their host identifier as a lowercase hex string:
16 bytes (the 128-bit form: Connect's HOSTID, or Set Features Host
Identifier with EXHID = 1) or 8 bytes (the 64-bit form, Set Features with
EXHID = 0). Every controller of a host shares its registration.

Nothing here does I/O: the supervisor runs `NsResv` (reservation_sup.py),
reactors hold `ResvView` (reservation_io.py), persistence is
reservation_ptpl.py.
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..resv_common import NVME_TYPES, Kind, access_allowed, role_of
from . import spec

# I/O opcodes
OPC_RESV_REGISTER = spec.IO_RESV_REGISTER
OPC_RESV_REPORT = spec.IO_RESV_REPORT
OPC_RESV_ACQUIRE = spec.IO_RESV_ACQUIRE
OPC_RESV_RELEASE = spec.IO_RESV_RELEASE
RESV_OPCODES = frozenset((OPC_RESV_REGISTER, OPC_RESV_REPORT, OPC_RESV_ACQUIRE, OPC_RESV_RELEASE))
IO_VERIFY = 0x0C
IO_COPY = 0x19

# "Command Behavior in the Presence of a Reservation": the NVM Read Command
# Group and Write Command Group (of what an NVMe/TCP host can send here)
READ_GROUP = frozenset((spec.IO_READ, spec.IO_COMPARE, IO_VERIFY))
WRITE_GROUP = frozenset(
    (
        spec.IO_WRITE,
        spec.IO_WRITE_UNCOR,
        spec.IO_WRITE_ZEROES,
        spec.IO_DSM,
        spec.IO_FLUSH,
        IO_COPY,
    )
)
CHECKED = READ_GROUP | WRITE_GROUP

# features
FID_RESV_MASK = 0x82
FID_RESV_PERSIST = 0x83
# log page
LID_RESV_NOTIFICATION = spec.LID_RESV_NOTIFICATION
AER_TYPE_IO_SPECIFIC = 0x6
AER_INFO_RESV_LOG_AVAILABLE = 0x0

# status codes
SC_HOSTID_INCONSISTENT = 0x18
SC_ABORTED_PREEMPT = 0x1B
ST_RESV_CONFLICT = spec.status_field(spec.SCT_GENERIC, spec.SC_RESERVATION_CONFLICT, dnr=True)
ST_HOSTID_INCONSISTENT = spec.status_field(spec.SCT_GENERIC, SC_HOSTID_INCONSISTENT, dnr=True)
ST_ABORTED_PREEMPT = spec.status_field(spec.SCT_GENERIC, SC_ABORTED_PREEMPT)
ST_INVALID_FIELD = spec.ST_INVALID_FIELD

# Register actions (RREGA), Acquire actions (RACQA), Release actions (RRELA)
REG_REGISTER, REG_UNREGISTER, REG_REPLACE = 0, 1, 2
ACQ_ACQUIRE, ACQ_PREEMPT, ACQ_PREEMPT_ABORT = 0, 1, 2
REL_RELEASE, REL_CLEAR = 0, 1
# CPTPL
CPTPL_NO_CHANGE, CPTPL_CLEAR, CPTPL_SET = 0, 2, 3

# Reservation Notification log page types
NOTICE_EMPTY = 0
NOTICE_REG_PREEMPTED = 1
NOTICE_RES_RELEASED = 2
NOTICE_RES_PREEMPTED = 3
# mask bits of feature 82h (bit n masks type n)
MASK_BITS = (1 << NOTICE_REG_PREEMPTED) | (1 << NOTICE_RES_RELEASED) | (1 << NOTICE_RES_PREEMPTED)

RTYPES = tuple(sorted(NVME_TYPES))  # 1..6
AR_RTYPES = (5, 6)
RO_RTYPES = (3, 4)
MAX_REGISTRANTS = 1024  # bounds the state and the Report
RESCAP_ALL = 0x7E | 0x80  # six types + IEKEY (1.3 semantics); bit 0 PTPL when capable
MAX_LOG_ENTRIES = 255  # "Number of Available Log Pages" is one byte
HDR_LEN = 24
EXT_HDR_LEN = 64
RC_LEN = 24
RC_EXT_LEN = 64


class Outcome(NamedTuple):
    """What a reservation command did: its completion and what the caller
    must apply elsewhere (notification log entries for other hosts, their
    commands to abort, a new view to publish, the PTPL file to write)."""

    status: int = 0
    data: bytes = b""
    notices: tuple[tuple[str, int], ...] = ()  # (host id, notice type)
    abort: tuple[str, ...] = ()  # preempt and abort: these hosts' commands
    changed: bool = False
    persist: bool = False


OK = Outcome()
CONFLICT = Outcome(ST_RESV_CONFLICT)
INVALID = Outcome(ST_INVALID_FIELD)


class RegisterCmd(NamedTuple):
    action: int
    iekey: bool
    cptpl: int
    crkey: int
    nrkey: int


class AcquireCmd(NamedTuple):
    action: int
    iekey: bool
    rtype: int
    crkey: int
    prkey: int


class ReleaseCmd(NamedTuple):
    action: int
    iekey: bool
    rtype: int
    crkey: int


DATA_LEN = {OPC_RESV_REGISTER: 16, OPC_RESV_ACQUIRE: 16, OPC_RESV_RELEASE: 8}


def decode_register(cdw10: int, data: bytes) -> RegisterCmd:
    crkey, nrkey = struct.unpack_from("<QQ", data, 0)
    return RegisterCmd(cdw10 & 0x7, bool(cdw10 & 0x8), (cdw10 >> 30) & 0x3, crkey, nrkey)


def decode_acquire(cdw10: int, data: bytes) -> AcquireCmd:
    crkey, prkey = struct.unpack_from("<QQ", data, 0)
    return AcquireCmd(cdw10 & 0x7, bool(cdw10 & 0x8), (cdw10 >> 8) & 0xFF, crkey, prkey)


def decode_release(cdw10: int, data: bytes) -> ReleaseCmd:
    (crkey,) = struct.unpack_from("<Q", data, 0)
    return ReleaseCmd(cdw10 & 0x7, bool(cdw10 & 0x8), (cdw10 >> 8) & 0xFF, crkey)


def encode_register(
    action: int, crkey: int, nrkey: int, iekey: bool = False, cptpl: int = 0
) -> tuple[int, bytes]:
    """(cdw10, data) of a Reservation Register (the host side uses it)."""
    return action | (0x8 if iekey else 0) | (cptpl << 30), struct.pack("<QQ", crkey, nrkey)


def encode_acquire(
    action: int, rtype: int, crkey: int, prkey: int = 0, iekey: bool = False
) -> tuple[int, bytes]:
    return action | (0x8 if iekey else 0) | (rtype << 8), struct.pack("<QQ", crkey, prkey)


def encode_release(action: int, rtype: int, crkey: int, iekey: bool = False) -> tuple[int, bytes]:
    return action | (0x8 if iekey else 0) | (rtype << 8), struct.pack("<Q", crkey)


# ------------------------------------------------------------------ the state
@dataclass
class NsResv:
    """The reservation state of one namespace (single writer)."""

    regs: dict[str, int] = field(default_factory=dict)  # host id -> key, in order
    rtype: int = 0  # 0: no reservation
    holder: str = ""  # the holder (types 1-4); "" for the all-registrants types
    gen: int = 0
    ptpl: bool = False  # Persist Through Power Loss active
    ptpl_capable: bool = False  # the namespace has a PTPL file

    def is_holder(self, host: str) -> bool:
        if not self.rtype:
            return False
        if self.rtype in AR_RTYPES:
            return host in self.regs
        return self.holder == host

    def view(self) -> dict[str, Any]:
        """The compact, msgpack-able form reactors check commands against."""
        return {
            "t": self.rtype,
            "h": self.holder,
            "r": list(self.regs),
            "p": self.ptpl,
            "g": self.gen,
        }

    def _bump(self) -> None:
        self.gen = (self.gen + 1) & 0xFFFFFFFF

    def _done(self, persist: bool = False, **kw: Any) -> Outcome:
        return Outcome(changed=True, persist=self.ptpl or persist, **kw)

    # -- Reservation Register (0Dh) ------------------------------------------------
    def register(self, host: str, c: RegisterCmd) -> Outcome:
        if c.action > REG_REPLACE or c.cptpl == 1:
            return INVALID
        if c.cptpl == CPTPL_SET and not self.ptpl_capable:
            return INVALID  # no PTPL file for this namespace (RESCAP bit 0 is 0)
        cur = self.regs.get(host)
        notices: tuple[tuple[str, int], ...] = ()
        if c.action == REG_REGISTER:
            if c.nrkey == 0:
                return INVALID
            if cur is not None:
                if cur != c.nrkey:
                    return CONFLICT
                return self._cptpl(c.cptpl, changed=False)
            if len(self.regs) >= MAX_REGISTRANTS:
                return Outcome(spec.status_field(spec.SCT_GENERIC, spec.SC_INTERNAL, dnr=True))
            self.regs[host] = c.nrkey
        elif c.action == REG_UNREGISTER:
            if cur is None or (not c.iekey and cur != c.crkey):
                return CONFLICT
            notices = self._unregister(host)
        else:  # replace
            if c.nrkey == 0:
                return INVALID
            if cur is None:
                if not c.iekey:
                    return CONFLICT
                if len(self.regs) >= MAX_REGISTRANTS:
                    return Outcome(spec.status_field(spec.SCT_GENERIC, spec.SC_INTERNAL, dnr=True))
            elif not c.iekey and cur != c.crkey:
                return CONFLICT
            self.regs[host] = c.nrkey
        self._bump()
        out = self._cptpl(c.cptpl, changed=True)
        return out._replace(notices=notices)

    def _cptpl(self, cptpl: int, changed: bool) -> Outcome:
        was = self.ptpl
        if cptpl == CPTPL_SET:
            self.ptpl = True
        elif cptpl == CPTPL_CLEAR:
            self.ptpl = False
        if not changed and was == self.ptpl:
            return OK
        # a PTPL change is written either way: cleared, the file says so
        return self._done(persist=was != self.ptpl)

    def _unregister(self, host: str) -> tuple[tuple[str, int], ...]:
        del self.regs[host]
        if self.rtype in AR_RTYPES:
            if not self.regs:
                self.rtype = 0
            return ()
        if self.rtype and self.holder == host:
            old = self.rtype
            self.rtype, self.holder = 0, ""
            if old in RO_RTYPES:  # the registrants lose their access: tell them
                return tuple((h, NOTICE_RES_RELEASED) for h in self.regs)
        return ()

    # -- Reservation Acquire (11h) --------------------------------------------------
    def acquire(self, host: str, c: AcquireCmd) -> Outcome:
        if c.action > ACQ_PREEMPT_ABORT or c.rtype not in NVME_TYPES:
            return INVALID
        if c.iekey:
            return INVALID  # IEKEY in Acquire is not supported (as SPDK)
        cur = self.regs.get(host)
        if cur is None or cur != c.crkey:
            return CONFLICT
        if c.action == ACQ_ACQUIRE:
            if self.rtype:
                if self.is_holder(host) and self.rtype == c.rtype:
                    return OK
                return CONFLICT
            self.rtype = c.rtype
            self.holder = "" if c.rtype in AR_RTYPES else host
            return self._done()
        return self._preempt(host, c.rtype, c.prkey, c.action == ACQ_PREEMPT_ABORT)

    def _preempt(self, host: str, rtype: int, prkey: int, abort: bool) -> Outcome:
        victims: list[str]
        takeover = False
        if self.rtype in AR_RTYPES and prkey == 0:
            # all-registrants reservation preempted with key 0: every other
            # registrant goes, the issuer holds a new reservation
            victims = [h for h in self.regs if h != host]
            takeover = True
        elif self.rtype and self.rtype not in AR_RTYPES and self.regs.get(self.holder) == prkey:
            # the holder is preempted (possibly by itself: a type change)
            victims = [h for h, k in self.regs.items() if k == prkey and h != host]
            takeover = True
        else:
            if prkey == 0:
                return INVALID
            victims = [h for h, k in self.regs.items() if k == prkey and h != host]
            if not victims:
                return CONFLICT
        for v in victims:
            del self.regs[v]
        notices = [(v, NOTICE_REG_PREEMPTED) for v in victims]
        if takeover:
            old = (self.rtype, self.holder)
            self.rtype = rtype
            self.holder = "" if rtype in AR_RTYPES else host
            if old != (self.rtype, self.holder):
                notices += [(h, NOTICE_RES_PREEMPTED) for h in self.regs if h != host]
        self._bump()
        return self._done(notices=tuple(notices), abort=tuple(victims) if abort else ())

    # -- Reservation Release (15h) ---------------------------------------------------
    def release(self, host: str, c: ReleaseCmd) -> Outcome:
        if c.action > REL_CLEAR:
            return INVALID
        if c.iekey:
            return INVALID
        cur = self.regs.get(host)
        if cur is None or cur != c.crkey:
            return CONFLICT
        if c.action == REL_CLEAR:
            others = [(h, NOTICE_RES_PREEMPTED) for h in self.regs if h != host]
            self.regs.clear()
            self.rtype, self.holder = 0, ""
            self._bump()
            return self._done(notices=tuple(others))
        if not self.rtype or not self.is_holder(host):
            return OK  # nothing of this host's to release
        if c.rtype != self.rtype:
            return INVALID
        old = self.rtype
        self.rtype, self.holder = 0, ""
        notices: tuple[tuple[str, int], ...] = ()
        if old not in (1, 2):  # registrants-only and all-registrants types
            notices = tuple((h, NOTICE_RES_RELEASED) for h in self.regs if h != host)
        return self._done(notices=notices)

    # -- Set Features Reservation Persistence (83h) ---------------------------------------
    def set_ptpl(self, on: bool) -> Outcome:
        if on and not self.ptpl_capable:
            return INVALID
        return self._cptpl(CPTPL_SET if on else CPTPL_CLEAR, changed=False)

    # -- Reservation Report (0Eh) -----------------------------------------------------------
    def report(self, host_len: int, eds: bool, length: int) -> Outcome:
        """The report, at most ``length`` bytes (the host's NUMD, already
        bounded by the transfer length): nothing larger is built."""
        if eds != (host_len == 16):
            # the extended structure carries 128-bit host identifiers, the
            # other one 64-bit ones: the requester's must match (Host
            # Identifier Inconsistent Format)
            return Outcome(ST_HOSTID_INCONSISTENT)
        hdr = bytearray(EXT_HDR_LEN if eds else HDR_LEN)
        struct.pack_into("<IBH", hdr, 0, self.gen, self.rtype, len(self.regs))
        hdr[9] = 1 if self.ptpl else 0  # PTPLS
        out = hdr
        size = RC_EXT_LEN if eds else RC_LEN
        room = max(0, (length - len(hdr) + size - 1) // size)
        for h, key in list(self.regs.items())[:room]:
            hid = bytes.fromhex(h)
            e = bytearray(size)
            struct.pack_into("<HB", e, 0, spec.CNTLID_DYNAMIC, 1 if self.is_holder(h) else 0)
            if eds:
                struct.pack_into("<Q", e, 8, key)
                e[16:32] = hid[:16].ljust(16, b"\0")
            else:
                e[8:16] = hid[:8].ljust(8, b"\0")
                struct.pack_into("<Q", e, 16, key)
            out += e
        return Outcome(data=bytes(out[:length]))

    # -- persistence form ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "ptpl": self.ptpl,
            "rtype": self.rtype,
            "holder": self.holder,
            "generation": self.gen,
            "registrants": [{"host_id": h, "rkey": k} for h, k in self.regs.items()],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NsResv:
        st = cls(ptpl=bool(d.get("ptpl")))
        if not st.ptpl:
            return st  # persistence off: nothing survives
        for r in d.get("registrants", [])[:MAX_REGISTRANTS]:
            h = str(r["host_id"]).lower()
            if len(bytes.fromhex(h)) not in (8, 16):
                raise ValueError(f"bad host id {h!r}")
            st.regs[h] = int(r["rkey"]) & 0xFFFFFFFFFFFFFFFF
        st.rtype = int(d.get("rtype", 0))
        st.holder = str(d.get("holder", ""))
        st.gen = int(d.get("generation", 0)) & 0xFFFFFFFF
        if st.rtype not in (0, *RTYPES) or (
            st.rtype and st.rtype not in AR_RTYPES and st.holder not in st.regs
        ):
            st.rtype, st.holder = 0, ""
        if st.rtype in AR_RTYPES:
            st.holder = ""
        return st


# ------------------------------------------------------------------- reactors
class ResvView:
    """A reactor's read-only copy of a namespace's reservation (one per
    namespace, replaced whole when the supervisor publishes a new one)."""

    __slots__ = ("rtype", "kind", "holder", "regs", "ptpl", "gen")

    def __init__(self, d: dict[str, Any] | None) -> None:
        d = d or {}
        self.rtype = int(d.get("t", 0))
        self.kind: Kind | None = NVME_TYPES.get(self.rtype)
        self.holder = str(d.get("h", ""))
        self.regs = frozenset(d.get("r", ()))
        self.ptpl = bool(d.get("p", False))
        self.gen = int(d.get("g", 0))

    def allows(self, host: str, writes: bool) -> bool:
        """False when a read-group (``writes`` False) or write-group command
        of ``host`` gets Reservation Conflict."""
        kind = self.kind
        if kind is None:
            return True  # no reservation
        registered = host in self.regs
        role = role_of(kind, self.rtype not in AR_RTYPES and self.holder == host, registered)
        return access_allowed(kind, role, writes)


def command_allowed(view: ResvView | None, host: str, opcode: int) -> bool:
    """The command-behaviour table for one command: reservation commands and
    commands outside both groups are never in conflict here (Register,
    Acquire and Release check keys in the state machine)."""
    if view is None or view.kind is None or opcode not in CHECKED:
        return True
    return view.allows(host, opcode in WRITE_GROUP)


# -------------------------------------------------- a controller's notices
class CtrlResv:
    """Per controller: Reservation Notification masks (feature 82h, per
    namespace) and the Reservation Notification log (LID 80h)."""

    def __init__(self) -> None:
        self.masks: dict[int, int] = {}
        self.default_mask = 0
        self.log: collections.deque[tuple[int, int, int]] = collections.deque()
        self.count = 0  # Log Page Count of the newest entry

    def mask_of(self, nsid: int) -> int:
        return self.masks.get(nsid, self.default_mask)

    def notice(self, nsid: int, ntype: int) -> bool:
        """Add a log entry unless masked; True when one was added."""
        if self.mask_of(nsid) & (1 << ntype):
            return False
        self.count = (self.count + 1) & 0xFFFFFFFFFFFFFFFF or 1
        if len(self.log) >= MAX_LOG_ENTRIES:
            self.log.popleft()  # the oldest is lost; the count shows the gap
        self.log.append((self.count, ntype, nsid))
        return True

    def take_page(self, consume: bool) -> bytes:
        """The 64-byte log page: the oldest entry (removed unless
        ``consume`` is False), or an empty one."""
        b = bytearray(64)
        if self.log:
            count, ntype, nsid = self.log[0]
            avail = len(self.log) - 1
            struct.pack_into("<QBBxxI", b, 0, count, ntype, min(avail, 255), nsid)
            if consume:
                self.log.popleft()
        return bytes(b)


def rescap(ptpl_capable: bool) -> int:
    """Identify Namespace RESCAP."""
    return RESCAP_ALL | (0x1 if ptpl_capable else 0)
