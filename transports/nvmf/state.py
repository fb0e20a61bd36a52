"""Supervisor-side NVMe-oF state: the configuration truth and the controller directory.

Owns (in the supervisor process only):

* `NvmfState`: transports with SPDK's option names and defaults, subsystems,
  namespaces, listeners and hosts; ``snapshot()`` is what reactors receive in
  ConfigUpdate, ``save_config()`` the RPC calls that recreate it (in the order
  SPDK's save_config writes the nvmf subsystem), ``on_bdev_removed()`` drops
  namespaces of a hot-removed bdev.
* the controller directory: cntlid allocation per subsystem (round-robin in
  [min_cntlid, max_cntlid], skipping ids in use), which reactor owns a
  controller's admin queue and which reactors hold its I/O queues. Reactors
  reach it with ``ctx.call("nvmf.<op>", args, cb)``; the ops are registered
  below with `supervisor_op`. Tearing a controller down broadcasts
  ``Event("nvmf.destroy_ctrlr", {"nqn", "cntlid", "io_only"})`` so every
  reactor closes that controller's queues.

Snapshot format (plain msgpack-able data)::

    {"genctr": int,                 # discovery log generation counter
     "transports": {trtype: {options of that transport}},  # nvmf_create_transport
     "subsystems": {nqn: {"nqn", "subtype": "NVMe"|"Discovery", "serial_number",
                          "model_number", "max_namespaces", "min_cntlid", "max_cntlid",
                          "allow_any_host", "ana_reporting", "hosts": [hostnqn, ...],
                          "listeners": [{"trtype", "adrfam", "traddr", "trsvcid", "key",
                                         "ana": ana.new_listener_ana() form}],
                          "namespaces": [{"nsid", "bdev_name", "uuid", "nguid", "eui64",
                                          "anagrpid"}]}}}

``nguid``/``eui64`` are lowercase hex strings ("" when unset); ``key`` is the
listener key ctx.add_listener returned ("ADDR:PORT"), which reactors compare
with the listener a connection arrived on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ...control.context import RpcContext, supervisor_op
from ..tls.psk import PskEntry
from . import ana, auth_config
from .nqn import DISCOVERY_NQN
from .reservation import NsResv

DEFAULT_SERIAL = "00000000000000000000"
DEFAULT_MODEL = "blockfabric Controller"  # SPDK's default is "SPDK bdev Controller"
DEFAULT_MAX_NAMESPACES = 32
MIN_CNTLID = 1
MAX_CNTLID = 0xFFEF


@dataclass
class CtrlrEntry:
    nqn: str
    cntlid: int
    hostnqn: str
    hostid: str
    admin_reactor: int
    kato_ms: int = 0
    trtype: str = ""  # the transport of its admin queue ("" when not told)
    enabled: bool = False
    vwc: int = 1  # Volatile Write Cache feature (0: write-through on every I/O queue)
    qpairs: dict[int, int] = field(default_factory=dict)  # qid -> reactor id
    resv_id: str = ""  # Set Features Host Identifier (hex); "" = Connect's hostid

    def describe(self) -> dict[str, Any]:
        return {
            "nqn": self.nqn,
            "cntlid": self.cntlid,
            "hostnqn": self.hostnqn,
            "hostid": self.hostid,
            "admin_reactor": self.admin_reactor,
            "kato_ms": self.kato_ms,
            "enabled": self.enabled,
            "vwc": self.vwc,
            "io_qpairs": dict(self.qpairs),
        }


def new_subsystem(
    nqn: str,
    subtype: str = "NVMe",
    serial_number: str = DEFAULT_SERIAL,
    model_number: str = DEFAULT_MODEL,
    max_namespaces: int = DEFAULT_MAX_NAMESPACES,
    allow_any_host: bool = False,
    ana_reporting: bool = False,
    min_cntlid: int = MIN_CNTLID,
    max_cntlid: int = MAX_CNTLID,
) -> dict[str, Any]:
    return {
        "nqn": nqn,
        "subtype": subtype,
        "serial_number": serial_number,
        "model_number": model_number,
        "max_namespaces": max_namespaces,
        "min_cntlid": min_cntlid,
        "max_cntlid": max_cntlid,
        "allow_any_host": allow_any_host,
        "ana_reporting": ana_reporting,
        "hosts": [],
        "listeners": [],
        "namespaces": {},  # nsid -> {"nsid", "bdev_name", "uuid", "nguid", "eui64"}
    }


class NvmfState:
    """The NVMe-oF configuration (single writer: the supervisor)."""

    def __init__(self) -> None:
        self.transports: dict[str, dict[str, Any]] = {}
        self.subsystems: dict[str, dict[str, Any]] = {
            DISCOVERY_NQN: new_subsystem(
                DISCOVERY_NQN, subtype="Discovery", max_namespaces=0, allow_any_host=True
            )
        }
        self.config: dict[str, Any] = {
            "discovery_filter": "match_any",
            "admin_cmd_passthru": {"identify_ctrlr": False},
        }
        self.max_subsystems = 1024
        self.genctr = 0
        # listener key -> number of subsystems using it
        self.listener_refs: dict[str, int] = {}
        # TLS PSK identity -> the derived PSK (nvmf_subsystem_add_host --psk);
        # reactors get it in the snapshot, nothing else shows it
        self.tls_psks: dict[str, PskEntry] = {}
        # controller directory
        self.ctrlrs: dict[tuple[str, int], CtrlrEntry] = {}
        self._next_cntlid: dict[str, int] = {}
        # NVMe reservations per namespace (reservation_sup.py is their writer)
        self.resv: dict[tuple[str, int], NsResv] = {}

    # ------------------------------------------------------------ queries
    def subsystem(self, nqn: str) -> dict[str, Any] | None:
        return self.subsystems.get(nqn)

    def host_allowed(self, nqn: str, hostnqn: str) -> bool:
        ss = self.subsystems.get(nqn)
        if ss is None:
            return False
        return bool(ss["allow_any_host"]) or hostnqn in ss["hosts"]

    def bump_genctr(self) -> None:
        self.genctr += 1

    # ----------------------------------------------------------- snapshot
    def snapshot(self) -> dict[str, Any]:
        subs: dict[str, Any] = {}
        for nqn, ss in self.subsystems.items():
            d = {k: v for k, v in ss.items() if k != "namespaces"}
            d["hosts"] = list(ss["hosts"])
            d["host_psks"] = dict(ss.get("host_psks") or {})
            d.update(auth_config.snapshot_fields(self.config))
            d["listeners"] = [dict(x) for x in ss["listeners"]]
            d["namespaces"] = [dict(ns) for _, ns in sorted(ss["namespaces"].items())]
            subs[nqn] = d
        return {
            "genctr": self.genctr,
            "transports": {tt: dict(c) for tt, c in self.transports.items()},
            "subsystems": subs,
            "tls_psks": {
                ident: {"suite": e.suite, "key": e.key} for ident, e in self.tls_psks.items()
            },
        }

    def save_config(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            {"method": "nvmf_set_config", "params": copy.deepcopy(self.config)},
            {
                "method": "nvmf_set_max_subsystems",
                "params": {"max_subsystems": self.max_subsystems},
            },
        ]
        for t in self.transports.values():
            out.append({"method": "nvmf_create_transport", "params": dict(t)})
        for nqn, ss in self.subsystems.items():
            if ss["subtype"] != "Discovery":
                out.append(
                    {
                        "method": "nvmf_create_subsystem",
                        "params": {
                            "nqn": nqn,
                            "allow_any_host": ss["allow_any_host"],
                            "serial_number": ss["serial_number"],
                            "model_number": ss["model_number"],
                            "max_namespaces": ss["max_namespaces"],
                            "min_cntlid": ss["min_cntlid"],
                            "max_cntlid": ss["max_cntlid"],
                            "ana_reporting": ss["ana_reporting"],
                        },
                    }
                )
            for li in ss["listeners"]:
                out.append(
                    {
                        "method": "nvmf_subsystem_add_listener",
                        "params": {
                            "nqn": nqn,
                            "listen_address": {
                                k: li[k] for k in ("trtype", "adrfam", "traddr", "trsvcid")
                            },
                            "secure_channel": bool(li.get("secure_channel")),
                        },
                    }
                )
                out.extend(ana.saved_calls(nqn, li))
            psks = ss.get("host_psks") or {}
            for h in ss["hosts"]:
                hp: dict[str, Any] = {"nqn": nqn, "host": h, **auth_config.host_params(ss, h)}
                if h in psks:
                    hp["psk"] = psks[h]  # the key's name: keyring_file_add_key loads it
                out.append({"method": "nvmf_subsystem_add_host", "params": hp})
            for nsid, ns in sorted(ss["namespaces"].items()):
                nsp: dict[str, Any] = {"nsid": nsid, "bdev_name": ns["bdev_name"]}
                for k in ("nguid", "eui64", "uuid", "ptpl_file"):
                    if ns.get(k):
                        nsp[k] = ns[k]
                if ss.get("ana_reporting") and ns.get("anagrpid"):
                    nsp["anagrpid"] = ns["anagrpid"]  # as SPDK: with ANA reporting only
                out.append(
                    {"method": "nvmf_subsystem_add_ns", "params": {"nqn": nqn, "namespace": nsp}}
                )
        return out

    def on_bdev_removed(self, name: str) -> list[tuple[str, int]]:
        """Hot-remove: drop every namespace backed by ``name``."""
        gone: list[tuple[str, int]] = []
        for nqn, ss in self.subsystems.items():
            for nsid in [n for n, ns in ss["namespaces"].items() if ns["bdev_name"] == name]:
                del ss["namespaces"][nsid]
                gone.append((nqn, nsid))
                if ss.get("ana_reporting"):  # the ANA log of every listener changed
                    for li in ss["listeners"]:
                        ana.bump(li.setdefault("ana", ana.new_listener_ana()))
        return gone

    # ---------------------------------------------------- controller directory
    def alloc_cntlid(self, nqn: str) -> int | None:
        ss = self.subsystems[nqn]
        lo, hi = int(ss["min_cntlid"]), int(ss["max_cntlid"])
        n = hi - lo + 1
        start = self._next_cntlid.get(nqn, lo)
        if not lo <= start <= hi:
            start = lo
        for i in range(n):
            c = lo + (start - lo + i) % n
            if (nqn, c) not in self.ctrlrs:
                self._next_cntlid[nqn] = lo + (c - lo + 1) % n
                return c
        return None

    def ctrlrs_of(self, nqn: str, hostnqn: str | None = None) -> list[CtrlrEntry]:
        return [
            e
            for (n, _), e in self.ctrlrs.items()
            if n == nqn and (hostnqn is None or e.hostnqn == hostnqn)
        ]

    def on_reactor_died(self, ctx: RpcContext, reactor_id: int) -> None:
        """A reactor died (the supervisor restarts it): the controllers whose
        admin queue it held are gone (cntlids freed, every reactor closes their
        I/O queues); I/O queues it held of other controllers are forgotten."""
        for (nqn, cntlid), e in list(self.ctrlrs.items()):
            if e.admin_reactor == reactor_id:
                self.drop_ctrlr(ctx, nqn, cntlid)
            else:
                for qid in [q for q, r in e.qpairs.items() if r == reactor_id]:
                    del e.qpairs[qid]

    def drop_ctrlr(
        self, ctx: RpcContext | None, nqn: str, cntlid: int, notify: bool = True
    ) -> bool:
        e = self.ctrlrs.pop((nqn, cntlid), None)
        if e is not None and notify and ctx is not None:
            ctx.send_event(
                None, "nvmf.destroy_ctrlr", {"nqn": nqn, "cntlid": cntlid, "io_only": False}
            )
        return e is not None


# --------------------------------------------------------------- supervisor ops
def _state(ctx: RpcContext) -> NvmfState:
    st = ctx.nvmf
    if not isinstance(st, NvmfState):
        raise ValueError("NVMe-oF state is not initialised")
    return st


@supervisor_op("nvmf.create_ctrlr")
def op_create_ctrlr(ctx: RpcContext, reactor_id: int, args: dict[str, Any]) -> dict[str, Any]:
    """Admin Connect: allocate a cntlid. args {nqn, hostnqn, hostid, kato_ms}.
    Returns {"cntlid"} or {"error": "busy"|"no_subsystem"|"host"}."""
    st = _state(ctx)
    nqn = args["nqn"]
    if nqn not in st.subsystems:
        return {"error": "no_subsystem"}
    if not st.host_allowed(nqn, args["hostnqn"]):
        return {"error": "host"}
    cntlid = st.alloc_cntlid(nqn)
    if cntlid is None:
        return {"error": "busy"}
    st.ctrlrs[(nqn, cntlid)] = CtrlrEntry(
        nqn,
        cntlid,
        args["hostnqn"],
        args.get("hostid", ""),
        reactor_id,
        int(args.get("kato_ms", 0)),
        trtype=str(args.get("trtype", "")),
    )
    return {"cntlid": cntlid}


@supervisor_op("nvmf.find_ctrlr")
def op_find_ctrlr(ctx: RpcContext, reactor_id: int, args: dict[str, Any]) -> dict[str, Any]:
    """I/O Connect: find the controller (any reactor) and record the qpair.
    args {nqn, cntlid, hostnqn, hostid, qid}. Returns {"admin_reactor"} or
    {"error": <connect field at fault: "cntlid"|"hostnqn"|"hostid"|"qid">}."""
    st = _state(ctx)
    e = st.ctrlrs.get((args["nqn"], int(args["cntlid"])))
    if e is None:
        return {"error": "cntlid"}
    if e.hostnqn != args["hostnqn"]:
        return {"error": "hostnqn"}
    if args.get("hostid", e.hostid) != e.hostid:
        return {"error": "hostid"}
    qid = int(args["qid"])
    tt = str(args.get("trtype") or e.trtype)
    tr = st.transports.get(tt.upper()) if tt else None
    if tr is None:  # not told: the most any created transport allows
        tr = {"max_io_qpairs_per_ctrlr": max(
            (int(c["max_io_qpairs_per_ctrlr"]) for c in st.transports.values()), default=0xFFFF
        )}  # fmt: skip
    if qid < 1 or qid > int(tr["max_io_qpairs_per_ctrlr"]) or qid in e.qpairs:
        return {"error": "qid"}
    if not e.enabled:
        return {"error": "not_enabled"}
    e.qpairs[qid] = reactor_id
    out: dict[str, Any] = {"admin_reactor": e.admin_reactor, "vwc": e.vwc}
    if e.resv_id:  # Set Features Host Identifier changed it
        out["resv_id"] = e.resv_id
    return out


@supervisor_op("nvmf.qpair_added")
def op_qpair_added(ctx: RpcContext, reactor_id: int, args: dict[str, Any]) -> bool:
    e = _state(ctx).ctrlrs.get((args["nqn"], int(args["cntlid"])))
    if e is None:
        return False
    e.qpairs[int(args["qid"])] = reactor_id
    return True


@supervisor_op("nvmf.qpair_gone")
def op_qpair_gone(ctx: RpcContext, reactor_id: int, args: dict[str, Any]) -> bool:
    e = _state(ctx).ctrlrs.get((args["nqn"], int(args["cntlid"])))
    if e is None:
        return False
    return e.qpairs.pop(int(args["qid"]), None) is not None


@supervisor_op("nvmf.ctrlr_state")
def op_ctrlr_state(ctx: RpcContext, reactor_id: int, args: dict[str, Any]) -> bool:
    """The admin reactor reports CC.EN (I/O Connect needs an enabled controller)."""
    e = _state(ctx).ctrlrs.get((args["nqn"], int(args["cntlid"])))
    if e is None:
        return False
    e.enabled = bool(args["enabled"])
    if "kato_ms" in args:
        e.kato_ms = int(args["kato_ms"])
    return True


@supervisor_op("nvmf.ctrlr_vwc")
def op_ctrlr_vwc(ctx: RpcContext, reactor_id: int, args: dict[str, Any]) -> bool:
    """Set Features Volatile Write Cache: record it (new I/O queues inherit
    it) and switch the controller's I/O queues on every reactor before the
    admin command completes."""
    e = _state(ctx).ctrlrs.get((args["nqn"], int(args["cntlid"])))
    if e is None:
        return False
    e.vwc = int(args["vwc"]) & 1
    ctx.gather("nvmf.set_vwc", {"nqn": e.nqn, "cntlid": e.cntlid, "vwc": e.vwc})
    return True


@supervisor_op("nvmf.ctrlr_reset")
def op_ctrlr_reset(ctx: RpcContext, reactor_id: int, args: dict[str, Any]) -> bool:
    """CC.EN 1->0: every reactor drops the controller's I/O queues."""
    st = _state(ctx)
    e = st.ctrlrs.get((args["nqn"], int(args["cntlid"])))
    if e is None:
        return False
    e.qpairs.clear()
    e.enabled = False
    ctx.send_event(None, "nvmf.destroy_ctrlr", {"nqn": e.nqn, "cntlid": e.cntlid, "io_only": True})
    return True


@supervisor_op("nvmf.ctrlr_gone")
def op_ctrlr_gone(ctx: RpcContext, reactor_id: int, args: dict[str, Any]) -> bool:
    """The admin queue's reactor destroyed the controller: free the cntlid
    and have every reactor close its I/O queues."""
    return _state(ctx).drop_ctrlr(ctx, args["nqn"], int(args["cntlid"]))


@supervisor_op("nvmf.ctrlr_counters")
def op_ctrlr_counters(ctx: RpcContext, reactor_id: int, args: dict[str, Any]) -> dict[str, int]:
    """SMART log: sum the controller's I/O counters over every reactor."""
    total: dict[str, int] = {}
    for part in ctx.gather("nvmf.counters", {"nqn": args["nqn"], "cntlid": int(args["cntlid"])}):
        for k, v in (part or {}).items():
            total[k] = total.get(k, 0) + int(v)
    return total
