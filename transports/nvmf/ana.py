"""Asymmetric Namespace Access (ANA): per listener x ANA group state.

Owns (sans-I/O, used by both sides):

* the ANA state of a subsystem's listener (a port) for each ANA group, as it
  travels in the configuration snapshot (``listener["ana"]``, see
  `new_listener_ana`): a default state for every group, per-group
  overrides, the ANA change count and an optional transition (groups in the
  ANA Change state until a CLOCK_MONOTONIC deadline, which every process of
  the machine reads alike, so no timer is needed for the state itself);
* `ListenerAna`, the reactor's read-only view of it (effective state at a
  time, the change count, whether any group refuses I/O);
* the ANA log page (LID 0Ch) with RGO, the ANA change AEN dword and the
  path-related I/O statuses (ANA Inaccessible 3h/02h, ANA Transition 3h/03h);
* the Identify Controller / Namespace ANA fields (`identify_ctrl_fields`).

The supervisor (rpc.py / state.py) is the only writer: it sets states with
`set_state`, which bumps the change count, and the existing config broadcast
carries them to every reactor. A controller's admin reactor compares the
change count of its listener before and after a snapshot and posts the ANA
change notice (`controller_config`), and arms a loop timer for the end of a
transition so the notice also follows the "change -> new state" step.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import spec

if TYPE_CHECKING:
    from .core import Controller, Subsystem

OPTIMIZED = 0x1
NON_OPTIMIZED = 0x2
INACCESSIBLE = 0x3
PERSISTENT_LOSS = 0x4
CHANGE = 0xF

STATE_NAMES = {
    OPTIMIZED: "optimized",
    NON_OPTIMIZED: "non_optimized",
    INACCESSIBLE: "inaccessible",
    PERSISTENT_LOSS: "persistent_loss",
    CHANGE: "change",
}
SETTABLE = ("optimized", "non_optimized", "inaccessible")  # what the RPC accepts (as SPDK)
_BY_NAME = {v: k for k, v in STATE_NAMES.items()}

ANATT_S = 10  # ANA Transition Time (Identify Controller), SPDK's value
MAX_TRANSITION_MS = ANATT_S * 1000
ANAGRPID_LIMIT = 1024  # most ANA groups (and ANAGRPMAX) a subsystem reports
LID_ANA = 0x0C
AER_NOTICE_ANA = 0x03
AEC_ANA = 1 << 11  # Set Features 0Bh / OAES bit: ANA change notices
CMIC_ANA = 1 << 3
# ANACAP: optimized, non-optimized, inaccessible, change states reported;
# ANAGRPID does not change while the namespace is attached
ANACAP = 0x01 | 0x02 | 0x04 | 0x10 | 0x40

SC_ANA_PERSISTENT_LOSS = 0x01
SC_ANA_INACCESSIBLE = 0x02
SC_ANA_TRANSITION = 0x03
# path-related status, DNR clear: the host retries on another path
ST_ANA_PERSISTENT_LOSS = spec.status_field(spec.SCT_PATH, SC_ANA_PERSISTENT_LOSS)
ST_ANA_INACCESSIBLE = spec.status_field(spec.SCT_PATH, SC_ANA_INACCESSIBLE)
ST_ANA_TRANSITION = spec.status_field(spec.SCT_PATH, SC_ANA_TRANSITION)
STATUS_NAMES = {
    (spec.SCT_PATH, SC_ANA_PERSISTENT_LOSS): "Asymmetric Access Persistent Loss",
    (spec.SCT_PATH, SC_ANA_INACCESSIBLE): "Asymmetric Access Inaccessible",
    (spec.SCT_PATH, SC_ANA_TRANSITION): "Asymmetric Access Transition",
}
_IO_STATUS = {
    INACCESSIBLE: ST_ANA_INACCESSIBLE,
    PERSISTENT_LOSS: ST_ANA_PERSISTENT_LOSS,
    CHANGE: ST_ANA_TRANSITION,
}
_HDR = struct.Struct("<QH6x")
_DESC = struct.Struct("<IIQB15x")
AEN_DW0 = spec.aen_dw0(spec.AER_TYPE_NOTICE, AER_NOTICE_ANA, LID_ANA)


def state_code(name: str) -> int:
    """The ANA state of a name ("optimized" ...); ValueError when unknown."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown ANA state {name!r}") from None


def anagrpmax(max_namespaces: int) -> int:
    """The largest ANA group ID a subsystem accepts (SPDK: max_nsid)."""
    return min(max_namespaces or ANAGRPID_LIMIT, ANAGRPID_LIMIT)


# ------------------------------------------------------------ supervisor side
def new_listener_ana(state: str = "optimized") -> dict[str, Any]:
    """The ANA part of a listener in the snapshot (plain msgpack-able data)."""
    state_code(state)
    return {"default": state, "groups": {}, "chgcnt": 0, "changing": None}


def _settle(a: dict[str, Any], now: float) -> None:
    ch = a.get("changing")
    if ch and now >= float(ch["until"]):
        a["changing"] = None
        a["chgcnt"] = int(a["chgcnt"]) + 1  # change -> new state changed the log


def set_state(
    a: dict[str, Any],
    state: str,
    grp: int | None = None,
    transition_ms: int = 0,
    now: float | None = None,
) -> None:
    """Set the state of group ``grp`` (every group when None) of one
    listener's ``a``; with ``transition_ms`` the groups report ANA Change
    until then (I/O gets ANA Transition), the new state after it."""
    code = state_code(state)
    if code not in (OPTIMIZED, NON_OPTIMIZED, INACCESSIBLE):
        raise ValueError(f"ANA state {state!r} cannot be set")
    if not 0 <= transition_ms <= MAX_TRANSITION_MS:
        raise ValueError(f"transition time must be in [0, {MAX_TRANSITION_MS}] ms (ANATT)")
    t = time.monotonic() if now is None else now
    _settle(a, t)
    if grp is None:
        a["default"] = state
        a["groups"] = {}
    else:
        a["groups"][str(grp)] = state
    a["chgcnt"] = int(a["chgcnt"]) + 1
    if transition_ms:
        prev = a.get("changing")
        groups = None if grp is None else [grp]
        if prev and groups is not None and prev["groups"] is not None:
            groups = sorted(set(prev["groups"]) | set(groups))
        elif prev:
            groups = None
        a["changing"] = {"until": t + transition_ms / 1000.0, "groups": groups}


def bump(a: dict[str, Any]) -> None:
    """The log page of the listener changed otherwise (a namespace came or went)."""
    a["chgcnt"] = int(a["chgcnt"]) + 1


def saved_calls(nqn: str, li: dict[str, Any]) -> list[dict[str, Any]]:
    """``nvmf_subsystem_listener_set_ana_state`` calls that restore the listener's
    states (after its nvmf_subsystem_add_listener); transitions are not saved,
    their end state is."""
    a = li.get("ana") or new_listener_ana()
    la = {k: li[k] for k in ("trtype", "adrfam", "traddr", "trsvcid")}
    out = []
    if a["default"] != "optimized":
        out.append({"nqn": nqn, "listen_address": la, "ana_state": a["default"]})
    for g, st in sorted(a["groups"].items(), key=lambda kv: int(kv[0])):
        out.append({"nqn": nqn, "listen_address": la, "ana_state": st, "anagrpid": int(g)})
    return [{"method": "nvmf_subsystem_listener_set_ana_state", "params": p} for p in out]


# ------------------------------------------------------------- reactor side
class ListenerAna:
    """A listener's ANA states as one snapshot gave them (read-only)."""

    __slots__ = ("default", "groups", "chgcnt", "until", "changing")

    def __init__(self, a: dict[str, Any] | None) -> None:
        a = a or new_listener_ana()
        self.default = state_code(str(a.get("default", "optimized")))
        self.groups = {int(g): state_code(str(s)) for g, s in (a.get("groups") or {}).items()}
        self.chgcnt = int(a.get("chgcnt", 0))
        ch = a.get("changing")
        self.until = float(ch["until"]) if ch else 0.0
        self.changing: frozenset[int] | None = (
            frozenset(int(g) for g in ch["groups"]) if ch and ch.get("groups") is not None else None
        )

    def in_transition(self, now: float) -> bool:
        return bool(self.until) and now < self.until

    def state(self, grp: int, now: float) -> int:
        if self.in_transition(now) and (self.changing is None or grp in self.changing):
            return CHANGE
        return self.groups.get(grp, self.default)

    def change_count(self, now: float) -> int:
        return self.chgcnt + (1 if self.until and now >= self.until else 0)

    def refuses_io(self, now: float) -> bool:
        """Some group (of any namespace) may refuse I/O on this path now."""
        if self.in_transition(now):
            return True
        return self.default not in (OPTIMIZED, NON_OPTIMIZED) or any(
            s not in (OPTIMIZED, NON_OPTIMIZED) for s in self.groups.values()
        )


def listener_map(listeners: Iterable[dict[str, Any]]) -> dict[str, ListenerAna]:
    """listener key -> its ANA view, for a Subsystem built from a snapshot."""
    return {
        str(li.get("key", f"{li['traddr']}:{li['trsvcid']}")): ListenerAna(li.get("ana"))
        for li in listeners
    }


def groups_of(namespaces: Iterable[Any]) -> dict[int, list[int]]:
    """ANA group ID -> sorted NSIDs (objects with ``nsid`` and ``anagrpid``)."""
    out: dict[int, list[int]] = {}
    for ns in sorted(namespaces, key=lambda n: n.nsid):
        out.setdefault(int(ns.anagrpid), []).append(int(ns.nsid))
    return dict(sorted(out.items()))


def log_page(la: ListenerAna, groups: dict[int, list[int]], rgo: bool, now: float) -> bytes:
    """The ANA log page: header (change count, number of descriptors), one
    32-byte descriptor per ANA group that has namespaces, each followed by
    its NSIDs unless RGO (Return Groups Only) asked for none."""
    cc = la.change_count(now)
    parts = [_HDR.pack(cc, len(groups))]
    for grp, nsids in groups.items():
        n = 0 if rgo else len(nsids)
        parts.append(_DESC.pack(grp, n, cc, la.state(grp, now)))
        if n:
            parts.append(struct.pack(f"<{n}I", *nsids))
    return b"".join(parts)


def io_status(ss: Subsystem, listener: str, nsid: int, now: float | None = None) -> int:
    """The path-related status an I/O command for ``nsid`` gets on this
    listener (0: the path is usable: optimized or non-optimized)."""
    if not ss.ana_reporting:
        return 0
    la = ss.ana.get(listener)
    ns = ss.namespaces.get(nsid)
    if la is None or ns is None:
        return 0
    st = la.state(ns.anagrpid, time.monotonic() if now is None else now)
    return _IO_STATUS.get(st, 0)


def refuses_io(ss: Subsystem, listener: str) -> bool:
    """The fast path must leave this listener's I/O to the general path."""
    if not ss.ana_reporting:
        return False
    la = ss.ana.get(listener)
    return la is not None and la.refuses_io(time.monotonic())


def identify_ctrl_fields(b: bytearray, nn: int) -> None:
    """Identify Controller: CMIC ANA bit, OAES ANA change notices, ANATT,
    ANACAP, ANAGRPMAX, NANAGRPID and MNAN (which Linux requires, <= NN)."""
    b[76] |= CMIC_ANA
    oaes = struct.unpack_from("<I", b, 92)[0]
    struct.pack_into("<I", b, 92, oaes | AEC_ANA)
    gmax = min(nn, ANAGRPID_LIMIT)
    b[342] = ANATT_S  # after HMMAXD (336), NSETIDMAX (338), ENDGIDMAX (340)
    b[343] = ANACAP
    struct.pack_into("<II", b, 344, gmax, gmax)  # ANAGRPMAX, NANAGRPID
    struct.pack_into("<I", b, 540, nn)  # MNAN


def controller_config(
    ctrl: Controller, prev: Subsystem, call_later: Callable[[float, Callable[[], None]], Any]
) -> None:
    """A new snapshot reached the admin reactor of ``ctrl`` (``ctrl.subsys``
    is the new Subsystem): post the ANA change notice when its listener's
    log changed, and arm the end-of-transition notice."""
    ss = ctrl.subsys
    if not ss.ana_reporting:
        return
    key = ctrl.admin_qp.listener
    now = time.monotonic()
    new = ss.ana.get(key)
    old = prev.ana.get(key) if prev.ana_reporting else None
    if new is None:
        return
    changed = old is None or old.change_count(now) != new.change_count(now)
    if changed or groups_of(prev.namespaces.values()) != groups_of(ss.namespaces.values()):
        ana_changed(ctrl)
    if ctrl.ana_timer is not None:
        ctrl.ana_timer.cancel()
        ctrl.ana_timer = None
    if new.in_transition(now):

        def done() -> None:
            ctrl.ana_timer = None
            ana_changed(ctrl)

        ctrl.ana_timer = call_later(max(0.0, new.until - now) + 0.001, done)


def ana_changed(ctrl: Controller) -> None:
    if ctrl.features.get(spec.FID_ASYNC_EVENT_CONFIG, 0) & AEC_ANA:
        ctrl.post_event("ana", AEN_DW0)
