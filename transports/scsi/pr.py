"""Persistent reservations (SPC-4 5.13) and SPC-2 RESERVE/RELEASE.

`PrStore` holds every LUN's reservation state of one target node as plain
data with plain methods, so it can live next to the LUNs on one reactor or in
the supervisor behind a message: every call takes the I_T nexus explicitly and
returns a `PrResult` (status, sense, data) plus the unit attentions and task
aborts the caller must apply to *other* nexuses.

With APTPL set by a REGISTER, the LUN's state is written to a JSON file
(write-to-temp + rename) after each change and read back on construction.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..resv_common import SPC_TYPES, access_allowed, durable_replace, role_of
from . import cdb as C
from .sense import (
    ASC_INSUFFICIENT_REG_RESOURCES,
    ASC_REGISTRATIONS_PREEMPTED,
    ASC_RESERVATIONS_PREEMPTED,
    ASC_RESERVATIONS_RELEASED,
    GOOD,
    ILLEGAL_REQUEST,
    RESERVATION_CONFLICT,
    SenseError,
    build_sense,
    invalid_cdb,
    invalid_param,
    param_list_length,
)

Nexus = tuple[str, str]  # (initiator port, target port)

# reservation types
PR_WE = 0x1
PR_EA = 0x3
PR_WERO = 0x5
PR_EARO = 0x6
PR_WEAR = 0x7
PR_EAAR = 0x8
VALID_TYPES = (PR_WE, PR_EA, PR_WERO, PR_EARO, PR_WEAR, PR_EAAR)
AR_TYPES = (PR_WEAR, PR_EAAR)
RO_TYPES = (PR_WERO, PR_EARO)
EA_TYPES = (PR_EA, PR_EARO, PR_EAAR)

# PR OUT service actions
SA_REGISTER = 0
SA_RESERVE = 1
SA_RELEASE = 2
SA_CLEAR = 3
SA_PREEMPT = 4
SA_PREEMPT_AND_ABORT = 5
SA_REGISTER_AND_IGNORE = 6
SA_REGISTER_AND_MOVE = 7

# PR IN service actions
SA_READ_KEYS = 0
SA_READ_RESERVATION = 1
SA_REPORT_CAPABILITIES = 2
SA_READ_FULL_STATUS = 3

MAX_REGISTRATIONS = 1024
ISCSI_PROTOCOL_ID = 0x5

# Commands never in conflict with a persistent reservation (SPC-4 table 66 and
# SBC-3 table 13 "Allowed" in every column).
_PR_EXEMPT = frozenset(
    {
        C.INQUIRY,
        C.REPORT_LUNS,
        C.REQUEST_SENSE,
        C.PERSISTENT_RESERVE_IN,
        C.PERSISTENT_RESERVE_OUT,
        C.MAINTENANCE_IN,
        C.READ_CAPACITY_10,
        C.TEST_UNIT_READY,
        0x4D,  # LOG SENSE
    }
)
# Commands that only read (allowed under the Write Exclusive types).
_READ_CLASS = frozenset(
    {
        C.READ_6,
        C.READ_10,
        C.READ_12,
        C.READ_16,
        C.VERIFY_10,
        C.VERIFY_12,
        C.VERIFY_16,
        C.PRE_FETCH_10,
        C.PRE_FETCH_16,
        C.MODE_SENSE_6,
        C.MODE_SENSE_10,
        C.SERVICE_ACTION_IN_16,
    }
)
# Allowed from another nexus while an SPC-2 reservation is held (SPC-2 5.5.1).
_LEGACY_EXEMPT = frozenset({C.INQUIRY, C.REPORT_LUNS, C.REQUEST_SENSE, C.RELEASE_6, C.RELEASE_10})


class UaNotice(NamedTuple):
    lun: int
    nexus: Nexus
    asc_ascq: tuple[int, int]


class PrResult(NamedTuple):
    status: int
    sense: bytes = b""
    data: bytes = b""
    notices: tuple[UaNotice, ...] = ()
    abort_nexuses: tuple[Nexus, ...] = ()  # PREEMPT AND ABORT: abort these nexuses' tasks


_OK = PrResult(GOOD)
_CONFLICT = PrResult(RESERVATION_CONFLICT)


def _err(e: SenseError) -> PrResult:
    return PrResult(2, e.sense)


@dataclass
class LunPr:
    generation: int = 0
    regs: dict[Nexus, int] = field(default_factory=dict)  # insertion ordered
    holder: Nexus | None = None  # for the all-registrants types: the reserving nexus
    rtype: int = 0  # 0: no persistent reservation
    aptpl: bool = False
    legacy: Nexus | None = None  # SPC-2 RESERVE holder (never persisted)

    def is_holder(self, n: Nexus) -> bool:
        if not self.rtype:
            return False
        if self.rtype in AR_TYPES:
            return n in self.regs
        return self.holder == n

    def to_json(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "registrations": [
                {"initiator": i, "target": t, "key": k} for (i, t), k in self.regs.items()
            ],
            "holder": list(self.holder) if self.holder else None,
            "type": self.rtype,
            "aptpl": self.aptpl,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LunPr:
        p = cls()
        p.generation = int(d.get("generation", 0))
        for r in d.get("registrations", []):
            p.regs[(str(r["initiator"]), str(r["target"]))] = int(r["key"])
        h = d.get("holder")
        p.holder = (str(h[0]), str(h[1])) if h else None
        p.rtype = int(d.get("type", 0))
        p.aptpl = bool(d.get("aptpl", False))
        return p


def transport_id(initiator_port: str) -> bytes:
    """iSCSI TransportID, format 01b: name ",i,0x" ISID, NUL-padded to 4 bytes (SPC-4 7.6.4.6)."""
    name = initiator_port.encode() + b"\0"
    name += b"\0" * (-len(name) % 4)
    if len(name) < 16:
        name += b"\0" * (16 - len(name))
    return bytes((0x40 | ISCSI_PROTOCOL_ID, 0)) + len(name).to_bytes(2, "big") + name


class PrStore:
    def __init__(self, aptpl_path: str | None = None, relative_port_id: int = 1) -> None:
        self.aptpl_path = aptpl_path
        self.relative_port_id = relative_port_id
        self.luns: dict[int, LunPr] = {}
        if aptpl_path and os.path.exists(aptpl_path):
            self._load()

    # ---------------------------------------------------------------- storage
    def _load(self) -> None:
        assert self.aptpl_path
        try:
            with open(self.aptpl_path) as f:
                data = json.load(f)
            for k, v in data.get("luns", {}).items():
                self.luns[int(k)] = LunPr.from_json(v)
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            # a damaged file must not keep the target from starting
            self.luns = {}

    def _save(self) -> None:
        if not self.aptpl_path:
            return
        data = {"luns": {str(k): v.to_json() for k, v in self.luns.items() if v.aptpl}}
        durable_replace(self.aptpl_path, json.dumps(data).encode())

    def state(self, lun: int) -> LunPr:
        st = self.luns.get(lun)
        if st is None:
            st = self.luns[lun] = LunPr()
        return st

    def drop_lun(self, lun: int) -> None:
        if self.luns.pop(lun, None) is not None:
            self._save()

    # ------------------------------------------------------------ access rule
    def check_access(self, lun: int, nexus: Nexus, cdb: bytes) -> bool:
        """False when `cdb` from `nexus` must end in RESERVATION CONFLICT."""
        st = self.luns.get(lun)
        if st is None:
            return True
        op = cdb[0]
        if st.legacy is not None and st.legacy != nexus and op not in _LEGACY_EXEMPT:
            return False
        if op in (C.RESERVE_6, C.RESERVE_10):
            # SPC-4 5.13.3: RESERVE conflicts with any registration/reservation
            return not st.regs and not st.rtype
        if op in (C.RELEASE_6, C.RELEASE_10):
            return not st.rtype or st.is_holder(nexus)
        if not st.rtype or op in _PR_EXEMPT:
            return True
        kind = SPC_TYPES.get(st.rtype)
        if kind is None:
            return False
        # the access rule shared with NVMe reservations (transports/resv_common.py)
        role = role_of(kind, st.is_holder(nexus), nexus in st.regs)
        return access_allowed(kind, role, writes=op not in _READ_CLASS)

    # -------------------------------------------------------- SPC-2 reserve
    def legacy_reserve(self, lun: int, nexus: Nexus) -> PrResult:
        st = self.state(lun)
        if st.regs or st.rtype or (st.legacy is not None and st.legacy != nexus):
            return _CONFLICT
        st.legacy = nexus
        return _OK

    def legacy_release(self, lun: int, nexus: Nexus) -> PrResult:
        st = self.state(lun)
        if st.rtype and not st.is_holder(nexus):
            return _CONFLICT
        if st.legacy == nexus:
            st.legacy = None
        return _OK  # releasing someone else's reservation is a no-op (SPC-2 7.17)

    def nexus_lost(self, nexus: Nexus) -> None:
        """I_T nexus loss / LU reset release SPC-2 reservations (SPC-2 5.5.1)."""
        for st in self.luns.values():
            if st.legacy == nexus:
                st.legacy = None

    def lun_reset(self, lun: int) -> None:
        st = self.luns.get(lun)
        if st is not None:
            st.legacy = None

    # ----------------------------------------------------------- PR IN
    def pr_in(self, lun: int, nexus: Nexus, cdb: bytes) -> PrResult:
        sa = cdb[1] & 0x1F
        st = self.state(lun)
        gen = st.generation.to_bytes(4, "big")
        if sa == SA_READ_KEYS:
            keys = b"".join(k.to_bytes(8, "big") for k in st.regs.values())
            data = gen + len(keys).to_bytes(4, "big") + keys
        elif sa == SA_READ_RESERVATION:
            if st.rtype:
                holder_key = st.regs.get(st.holder, 0) if st.holder else 0
                key = 0 if st.rtype in AR_TYPES else holder_key
                desc = key.to_bytes(8, "big") + bytes(5) + bytes((st.rtype & 0xF,)) + bytes(2)
            else:
                desc = b""
            data = gen + len(desc).to_bytes(4, "big") + desc
        elif sa == SA_REPORT_CAPABILITIES:
            b = bytearray(8)
            b[1] = 8
            b[2] = 0x10 | 0x01  # CRH, PTPL_C
            b[3] = 0x80 | (0x01 if st.aptpl else 0)  # TMV, PTPL_A
            b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02  # WR_EX_AR EX_AC_RO WR_EX_RO EX_AC WR_EX
            b[5] = 0x01  # EX_AC_AR
            data = bytes(b)
        elif sa == SA_READ_FULL_STATUS:
            descs = bytearray()
            for n, k in st.regs.items():
                tid = transport_id(n[0])
                d = bytearray(24)
                d[0:8] = k.to_bytes(8, "big")
                if st.is_holder(n):
                    d[12] = 0x01
                    d[13] = st.rtype & 0xF
                d[18:20] = self.relative_port_id.to_bytes(2, "big")
                d[20:24] = len(tid).to_bytes(4, "big")
                descs += d + tid
            data = gen + len(descs).to_bytes(4, "big") + bytes(descs)
        else:
            return _err(invalid_cdb(1, 4))
        return PrResult(GOOD, data=data)

    # ----------------------------------------------------------- PR OUT
    def pr_out(self, lun: int, nexus: Nexus, cdb: bytes, param: bytes | memoryview) -> PrResult:
        sa = cdb[1] & 0x1F
        scope = cdb[2] >> 4
        rtype = cdb[2] & 0xF
        plen = C.be(cdb, 5, 4)
        if sa > SA_REGISTER_AND_MOVE:
            return _err(invalid_cdb(1, 4))
        if sa == SA_REGISTER_AND_MOVE:
            return _err(invalid_cdb(1, 4))  # not supported
        if plen != 24:
            return _err(param_list_length())
        if len(param) < 24:
            return _err(param_list_length())
        p = bytes(param[:24])
        key = int.from_bytes(p[0:8], "big")
        sa_key = int.from_bytes(p[8:16], "big")
        spec_i_pt = bool(p[20] & 0x08)
        all_tg_pt = bool(p[20] & 0x04)
        aptpl = bool(p[20] & 0x01)
        st = self.state(lun)
        if st.legacy is not None and st.legacy != nexus:
            return _CONFLICT
        if sa in (SA_REGISTER, SA_REGISTER_AND_IGNORE):
            if spec_i_pt:
                return _err(invalid_param(20, 3))
            if all_tg_pt:
                return _err(invalid_param(20, 2))
            r = self._register(lun, st, nexus, key, sa_key, aptpl, sa == SA_REGISTER_AND_IGNORE)
        else:
            if nexus not in st.regs or st.regs[nexus] != key:
                return _CONFLICT
            if spec_i_pt or all_tg_pt:
                return _err(invalid_param(20, 3 if spec_i_pt else 2))
            if sa in (SA_RESERVE, SA_RELEASE, SA_PREEMPT, SA_PREEMPT_AND_ABORT):
                if scope != 0:
                    return _err(invalid_cdb(2, 7))
                if rtype not in VALID_TYPES:
                    return _err(invalid_cdb(2, 3))
            if sa == SA_RESERVE:
                r = self._reserve(st, nexus, rtype)
            elif sa == SA_RELEASE:
                r = self._release(lun, st, nexus, rtype)
            elif sa == SA_CLEAR:
                r = self._clear(lun, st, nexus)
            else:
                r = self._preempt(lun, st, nexus, sa_key, rtype, sa == SA_PREEMPT_AND_ABORT)
        if r.status == GOOD and (st.aptpl or sa in (SA_REGISTER, SA_REGISTER_AND_IGNORE)):
            self._save()
        return r

    def _register(
        self, lun: int, st: LunPr, n: Nexus, key: int, sa_key: int, aptpl: bool, ignore: bool
    ) -> PrResult:
        cur = st.regs.get(n)
        if cur is None:
            if key != 0 and not ignore:
                return _CONFLICT
            if sa_key == 0:
                return _OK
            if len(st.regs) >= MAX_REGISTRATIONS:
                return PrResult(2, build_sense(ILLEGAL_REQUEST, *ASC_INSUFFICIENT_REG_RESOURCES))
            st.regs[n] = sa_key
        else:
            if key != cur and not ignore:
                return _CONFLICT
            if sa_key == 0:
                notices = self._unregister(lun, st, n)
                st.generation += 1
                st.aptpl = aptpl if st.regs else False
                return PrResult(GOOD, notices=notices)
            st.regs[n] = sa_key
        st.generation += 1
        st.aptpl = aptpl
        return _OK

    def _unregister(self, lun: int, st: LunPr, n: Nexus) -> tuple[UaNotice, ...]:
        del st.regs[n]
        notices: tuple[UaNotice, ...] = ()
        if st.rtype in AR_TYPES:
            if not st.regs:
                st.rtype, st.holder = 0, None
        elif st.rtype and st.holder == n:
            # the holder went away: its reservation goes too (SPC-4 5.13.11.2.3)
            if st.rtype in RO_TYPES:
                notices = tuple(UaNotice(lun, o, ASC_RESERVATIONS_RELEASED) for o in st.regs)
            st.rtype, st.holder = 0, None
        return notices

    def _reserve(self, st: LunPr, n: Nexus, rtype: int) -> PrResult:
        if st.rtype:
            if st.is_holder(n) and st.rtype == rtype:
                return _OK
            return _CONFLICT
        st.rtype, st.holder = rtype, n
        return _OK

    def _release(self, lun: int, st: LunPr, n: Nexus, rtype: int) -> PrResult:
        if not st.rtype or not st.is_holder(n):
            return _OK
        if rtype != st.rtype:
            return PrResult(2, build_sense(ILLEGAL_REQUEST, 0x26, 0x04))  # invalid release
        old = st.rtype
        st.rtype, st.holder = 0, None
        notices: tuple[UaNotice, ...] = ()
        if old in RO_TYPES or old in AR_TYPES:
            notices = tuple(UaNotice(lun, o, ASC_RESERVATIONS_RELEASED) for o in st.regs if o != n)
        return PrResult(GOOD, notices=notices)

    def _clear(self, lun: int, st: LunPr, n: Nexus) -> PrResult:
        notices = tuple(UaNotice(lun, o, ASC_RESERVATIONS_PREEMPTED) for o in st.regs if o != n)
        st.regs.clear()
        st.rtype, st.holder = 0, None
        st.generation += 1
        st.aptpl = False
        return PrResult(GOOD, notices=notices)

    def _preempt(
        self, lun: int, st: LunPr, n: Nexus, sa_key: int, rtype: int, abort: bool
    ) -> PrResult:
        victims: list[Nexus]
        if st.rtype in AR_TYPES and sa_key == 0:
            # all-registrants reservation preempted by key 0: everyone else goes
            victims = [o for o in st.regs if o != n]
            st.rtype, st.holder = rtype, n
        elif (
            st.rtype
            and st.rtype not in AR_TYPES
            and st.holder is not None
            and st.regs.get(st.holder) == sa_key
        ):
            victims = [o for o, k in st.regs.items() if k == sa_key and o != n]
            st.rtype, st.holder = rtype, n
        else:
            if sa_key == 0:
                return _err(invalid_param(8))
            victims = [o for o, k in st.regs.items() if k == sa_key and o != n]
            if not victims and sa_key not in st.regs.values():
                return _CONFLICT
        for v in victims:
            del st.regs[v]
        st.generation += 1
        notices = tuple(UaNotice(lun, v, ASC_REGISTRATIONS_PREEMPTED) for v in victims)
        return PrResult(GOOD, notices=notices, abort_nexuses=tuple(victims) if abort else ())


def pr_result_error(e: SenseError) -> PrResult:
    return _err(e)
