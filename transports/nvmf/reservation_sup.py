"""Supervisor side of NVMe reservations: the single writer of every
namespace's `NsResv` (reservation.py).

A reservation command from any reactor arrives as ``nvmf.resv``. The op runs
the state machine, writes the PTPL file when persistence is active (before
anything else: a completed command is durable), publishes the new view to
every reactor and waits for all of them (``nvmf.resv_view``; a command the
host sends after the completion is checked against the new state on every
reactor), sends the notification log entries to the admin reactor of each
controller of the hosts concerned (``nvmf.resv_notice``) and, for preempt
and abort, has every reactor mark the preempted hosts' commands that have
not started (``nvmf.resv_abort``), returning how many are still running so
the issuing reactor waits for them (``nvmf.resv_inflight``).

The view also rides in the configuration snapshot (the namespace's
``resv`` entry), so a reactor restarted after a death gets it with the
configuration.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from ...control.context import RpcContext, supervisor_op
from . import reservation as R
from . import reservation_ptpl, spec
from .state import CtrlrEntry, NvmfState

log = logging.getLogger(__name__)


def _state(ctx: RpcContext) -> NvmfState:
    st = ctx.nvmf
    if not isinstance(st, NvmfState):
        raise ValueError("NVMe-oF state is not initialised")
    return st


def host_of(e: CtrlrEntry) -> str:
    """The host identifier reservations know a controller by."""
    return e.resv_id or e.hostid


def ns_resv(st: NvmfState, nqn: str, nsid: int) -> R.NsResv | None:
    ss = st.subsystems.get(nqn)
    ns = ss["namespaces"].get(nsid) if ss is not None else None
    if ns is None:
        return None
    r = st.resv.get((nqn, nsid))
    if r is None:
        r = st.resv[(nqn, nsid)] = R.NsResv(ptpl_capable=bool(ns.get("ptpl_file")))
    return r


def namespace_added(st: NvmfState, nqn: str, nsid: int, ns: dict[str, Any]) -> None:
    """nvmf_subsystem_add_ns: a fresh state, or the one in its PTPL file."""
    path = ns.get("ptpl_file")
    r = reservation_ptpl.load(str(path)) if path else R.NsResv()
    st.resv[(nqn, nsid)] = r
    ns["resv"] = r.view()


def namespace_removed(st: NvmfState, nqn: str, nsid: int) -> None:
    st.resv.pop((nqn, nsid), None)


def _publish(ctx: RpcContext, st: NvmfState, nqn: str, nsid: int, r: R.NsResv) -> None:
    ns = st.subsystems[nqn]["namespaces"][nsid]
    ns["resv"] = view = r.view()
    ctx.gather("nvmf.resv_view", {"nqn": nqn, "nsid": nsid, "view": view})


def _notify(ctx: RpcContext, st: NvmfState, nqn: str, nsid: int, out: R.Outcome) -> None:
    if not out.notices:
        return
    by_host: dict[str, list[int]] = {}
    for h, t in out.notices:
        by_host.setdefault(h, []).append(t)
    entries = [[e.cntlid, t] for e in st.ctrlrs_of(nqn) for t in by_host.get(host_of(e), ())]
    if entries:
        # every reactor files the entries of the controllers it owns before
        # the command completes: a host reading the log page then finds them
        ctx.gather("nvmf.resv_notice", {"nqn": nqn, "nsid": nsid, "entries": entries})


@supervisor_op("nvmf.resv")
def op_resv(ctx: RpcContext, reactor_id: int, args: dict[str, Any]) -> dict[str, Any]:
    """args {nqn, nsid, host, cmd: register|acquire|release|report|set_ptpl,
    cdw10, data | length, eds | on}. Returns {status, data?, inflight?, victims?}."""
    st = _state(ctx)
    nqn = str(args["nqn"])
    nsid = int(args["nsid"])
    host = str(args["host"])
    r = ns_resv(st, nqn, nsid)
    if r is None:
        return {"status": spec.ST_INVALID_NS}
    cmd = args["cmd"]
    if cmd == "report":
        out = r.report(len(host) // 2, bool(args.get("eds")), int(args["length"]))
        return {"status": out.status, "data": out.data}
    before = copy.deepcopy(r)
    data = bytes(args.get("data", b""))
    cdw10 = int(args.get("cdw10", 0))
    if cmd == "register":
        out = r.register(host, R.decode_register(cdw10, data))
    elif cmd == "acquire":
        out = r.acquire(host, R.decode_acquire(cdw10, data))
    elif cmd == "release":
        out = r.release(host, R.decode_release(cdw10, data))
    elif cmd == "set_ptpl":
        out = r.set_ptpl(bool(args.get("on")))
    else:
        return {"status": R.ST_INVALID_FIELD}
    if out.status or not out.changed:
        return {"status": out.status}
    path = st.subsystems[nqn]["namespaces"][nsid].get("ptpl_file")
    if out.persist and path:
        try:
            reservation_ptpl.save(str(path), r)
        except OSError as e:
            log.error("nvmf: cannot write the PTPL file %s: %s", path, e)
            st.resv[(nqn, nsid)] = before  # not durable: not done
            return {"status": spec.ST_INTERNAL}
    _publish(ctx, st, nqn, nsid, r)
    _notify(ctx, st, nqn, nsid, out)
    res: dict[str, Any] = {"status": 0}
    if out.abort:
        running = ctx.gather(
            "nvmf.resv_abort", {"nqn": nqn, "nsid": nsid, "hosts": list(out.abort)}
        )
        res["inflight"] = sum(int(x or 0) for x in running)
        res["victims"] = list(out.abort)
    return res


@supervisor_op("nvmf.resv_inflight")
def op_resv_inflight(ctx: RpcContext, reactor_id: int, args: dict[str, Any]) -> int:
    """Commands of the preempted hosts still running on the namespace, over every reactor."""
    return sum(int(x or 0) for x in ctx.gather("nvmf.resv_inflight", dict(args)))


@supervisor_op("nvmf.ctrlr_hostid")
def op_ctrlr_hostid(ctx: RpcContext, reactor_id: int, args: dict[str, Any]) -> dict[str, Any]:
    """Set Features Host Identifier: refused (Command Sequence Error) while
    the controller's host is registered with a namespace of the subsystem;
    else every reactor's queues of the controller take the new identifier."""
    st = _state(ctx)
    nqn = str(args["nqn"])
    cntlid = int(args["cntlid"])
    e = st.ctrlrs.get((nqn, cntlid))
    if e is None:
        return {"error": "no_ctrlr"}
    cur = host_of(e)
    for (n, _nsid), r in st.resv.items():
        if n == nqn and cur in r.regs:
            return {"error": "registered"}
    e.resv_id = str(args["host"])
    ctx.gather("nvmf.set_hostid", {"nqn": nqn, "cntlid": cntlid, "host": e.resv_id})
    return {"ok": True}
