"""Reactor side of NVMe reservations.

* The per-command check (`gate`): every Read/Write-group command of an I/O
  queue is checked against the namespace's `ResvView`, a read-only copy the
  supervisor publishes to every reactor before the reservation command that
  changed it completes. No message per I/O: the check is a frozenset lookup.
* The reservation commands (Register 0Dh, Report 0Eh, Acquire 11h, Release
  15h) and Set Features Reservation Persistence go to the supervisor, the
  single writer of the state (reservation_sup.py), with ``ctx.call``.
* Set/Get Features Host Identifier (81h), Reservation Notification Mask
  (82h), Reservation Persistence (83h) and the Reservation Notification log
  page (80h) with its asynchronous event, for admin.py.
* The supervisor's broadcasts: a new view, a notice for a controller, the
  preempt-and-abort of a host's commands, a controller's new host identifier.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from . import reservation as R
from . import spec

if TYPE_CHECKING:
    from .core import Controller, Namespace, NvmfTarget
    from .qpair import QueuePair
    from .request import Request

log = logging.getLogger(__name__)

NSID_ALL = 0xFFFFFFFF
CALL_TIMEOUT = 30.0  # the supervisor may write the PTPL file and ask every reactor
DRAIN_TIMEOUT = 30.0  # preempt and abort: the longest wait for in-flight commands
DRAIN_POLL = 0.002


# --------------------------------------------------------------- the check
def gate(req: Request) -> int:
    """0 when the I/O command may run, else the status to complete it with:
    Command Aborted due to Preempt and Abort for a command of a preempted
    host that had not started yet, Reservation Conflict per the command
    behaviour table."""
    qp = req.qp
    if qp.preempted and req in qp.preempted:
        qp.preempted.discard(req)
        return R.ST_ABORTED_PREEMPT
    op = req.opcode
    if op not in R.CHECKED:
        return 0
    ss = qp.subsys
    if ss is None:
        return 0
    if req.nsid == NSID_ALL:  # Flush of every namespace: each must allow it
        for each in ss.namespaces.values():
            if not R.command_allowed(each.resv, qp.resv_id, op):
                return R.ST_RESV_CONFLICT
        return 0
    ns = ss.namespaces.get(req.nsid)
    if ns is None or R.command_allowed(ns.resv, qp.resv_id, op):
        return 0
    return R.ST_RESV_CONFLICT


# -------------------------------------------------------- the I/O commands
def execute(req: Request) -> None:
    """Reservation Register / Report / Acquire / Release."""
    qp = req.qp
    ss = qp.subsys
    ns = ss.namespaces.get(req.nsid) if ss is not None else None
    if ss is None or ns is None:
        return req.complete(spec.ST_INVALID_NS)
    op = req.opcode
    sqe = req.sqe
    args: dict[str, Any] = {"nqn": ss.nqn, "nsid": req.nsid, "host": qp.resv_id}
    if op == R.OPC_RESV_REPORT:
        length = ((sqe.cdw10 & 0xFFFFFFFF) + 1) * 4
        if length > req.sgl_len or length > qp.opts.max_io_size:
            return req.complete(spec.ST_DATA_SGL_LENGTH_INVALID)
        args.update(cmd="report", length=length, eds=bool(sqe.cdw11 & 1))
    else:
        need = R.DATA_LEN[op]
        data = req.data
        if data is None or len(data) < need:
            return req.complete(spec.ST_DATA_SGL_LENGTH_INVALID)
        cmd = {
            R.OPC_RESV_REGISTER: "register",
            R.OPC_RESV_ACQUIRE: "acquire",
            R.OPC_RESV_RELEASE: "release",
        }[op]
        args.update(cmd=cmd, cdw10=sqe.cdw10, data=bytes(data[:need]))
    _call(req, args)


def _call(req: Request, args: dict[str, Any], with_data: bool = False) -> None:
    qp = req.qp
    target = qp.target

    def done(ok: bool, result: Any) -> None:
        if not ok or not isinstance(result, dict):
            log.warning("nvmf: reservation command failed in the supervisor: %s", result)
            return req.complete(spec.ST_INTERNAL)
        status = int(result.get("status", 0))
        if args.get("cmd") == "report" and not status:
            from .admin import _send_log  # zero-filled to the host's length, pool-staged

            return _send_log(req, bytes(result.get("data", b"")), int(args["length"]), 0)
        if int(result.get("inflight", 0)) > 0:
            return _drain(req, {**args, "victims": list(result.get("victims", ()))}, status)
        req.complete(status, int(result.get("dw0", 0)))

    target.ctx.call("nvmf.resv", args, done, timeout=CALL_TIMEOUT)


def _drain(req: Request, args: dict[str, Any], status: int) -> None:
    """Preempt and abort: complete once no command of a preempted host that
    was already running on the namespace is still in a bdev (the ones that
    had not started complete with Command Aborted due to Preempt and Abort),
    so nothing of the preempted host lands after the preemption."""
    target = req.qp.target
    deadline = time.monotonic() + DRAIN_TIMEOUT
    q = {"nqn": args["nqn"], "nsid": args["nsid"], "hosts": args.get("victims", [])}

    def poll() -> None:
        def got(ok: bool, result: Any) -> None:
            if ok and int(result or 0) > 0 and time.monotonic() < deadline:
                target.ctx.loop.call_later(DRAIN_POLL, poll)
                return
            if ok and int(result or 0) > 0:
                log.warning(
                    "nvmf: preempt and abort: commands still running after %gs", DRAIN_TIMEOUT
                )
            req.complete(status)

        target.ctx.call("nvmf.resv_inflight", q, got, timeout=CALL_TIMEOUT)

    poll()


# ------------------------------------------------------------ admin parts
def set_host_id(req: Request, ctrl: Controller) -> None:
    """Set Features Host Identifier: EXHID (CDW11 bit 0) 1 = 128-bit, 0 = 64-bit."""
    n = 16 if req.sqe.cdw11 & 1 else 8
    data = req.data
    if data is None or len(data) < n:
        return req.complete(spec.ST_DATA_SGL_LENGTH_INVALID)
    host = bytes(data[:n]).hex()
    if not any(data[:n]):
        return req.complete(spec.ST_INVALID_FIELD)  # 0: "no host identifier"

    def done(ok: bool, result: Any) -> None:
        if not ok or not isinstance(result, dict):
            return req.complete(spec.ST_INTERNAL)
        if result.get("error"):
            # registered with a namespace under the old identifier
            return req.complete(spec.ST_CMD_SEQ_ERROR)
        req.complete(0)

    ctrl.target.ctx.call(
        "nvmf.ctrlr_hostid",
        {"nqn": ctrl.subsys.nqn, "cntlid": ctrl.cntlid, "host": host},
        done,
        timeout=CALL_TIMEOUT,
    )


def get_host_id(req: Request, ctrl: Controller) -> None:
    want16 = bool(req.sqe.cdw11 & 1)
    cur = bytes.fromhex(ctrl.admin_qp.resv_id)
    if (len(cur) == 16) != want16:
        # EXHID must name the form in use (Invalid Field, as nvmet and SPDK)
        return req.complete(spec.ST_INVALID_FIELD)
    req.complete_with_data(cur)


def _ns_or_status(ctrl: Controller, nsid: int) -> Namespace | int:
    if nsid == 0 or nsid == NSID_ALL:
        return spec.ST_INVALID_FIELD
    ns = ctrl.subsys.namespaces.get(nsid)
    return ns if ns is not None else spec.ST_INVALID_NS


def set_mask(req: Request, ctrl: Controller) -> None:
    mask = req.sqe.cdw11 & R.MASK_BITS
    nsid = req.nsid
    cr = ctrl.resv
    if nsid == NSID_ALL:
        cr.default_mask = mask
        for n in ctrl.subsys.namespaces:
            cr.masks[n] = mask
        return req.complete(0)
    ns = _ns_or_status(ctrl, nsid)
    if isinstance(ns, int):
        return req.complete(ns)
    cr.masks[nsid] = mask
    req.complete(0)


def get_mask(req: Request, ctrl: Controller) -> None:
    ns = _ns_or_status(ctrl, req.nsid)
    if isinstance(ns, int):
        return req.complete(ns)
    req.complete(0, ctrl.resv.mask_of(req.nsid))


def set_persist(req: Request, ctrl: Controller) -> None:
    ns = _ns_or_status(ctrl, req.nsid)
    if isinstance(ns, int):
        return req.complete(ns)
    args = {
        "nqn": ctrl.subsys.nqn,
        "nsid": req.nsid,
        "host": ctrl.admin_qp.resv_id,
        "cmd": "set_ptpl",
        "on": bool(req.sqe.cdw11 & 1),
    }
    _call(req, args)


def get_persist(req: Request, ctrl: Controller) -> None:
    ns = _ns_or_status(ctrl, req.nsid)
    if isinstance(ns, int):
        return req.complete(ns)
    req.complete(0, 1 if ns.resv_ptpl else 0)


def notification_log(ctrl: Controller, rae: bool, offset: int) -> bytes:
    """LID 80h: the oldest entry, removed when read from its start; reading
    without RAE re-arms the asynchronous event (posted again at once when
    more entries wait)."""
    cr = ctrl.resv
    page = cr.take_page(consume=offset == 0)
    if not rae:
        ctrl.unmask("resv")
        if cr.log:
            _post(ctrl)
    return page


def _post(ctrl: Controller) -> None:
    ctrl.post_event(
        "resv",
        spec.aen_dw0(
            R.AER_TYPE_IO_SPECIFIC, R.AER_INFO_RESV_LOG_AVAILABLE, R.LID_RESV_NOTIFICATION
        ),
    )


# ------------------------------------------------ the supervisor's messages
def _victim_qpairs(target: NvmfTarget, nqn: str, hosts: set[str]) -> list[QueuePair]:
    return [
        qp
        for qp in target.qpairs
        if qp.qid > 0 and qp.subsys is not None and qp.subsys.nqn == nqn and qp.resv_id in hosts
    ]


def _running(qp: QueuePair, nsid: int, mark: bool) -> int:
    """Commands of ``qp`` on ``nsid`` in a bdev now; with ``mark``, the ones
    that have not started (waiting for host data, pool buffers or their
    fused partner) are marked to complete with Command Aborted due to
    Preempt and Abort when they would start."""
    waiting = {id(r) for r in qp.pending_transfers()}
    if qp.fused_first is not None:
        waiting.add(id(qp.fused_first))
    # requests that ended another way (a transfer timeout, a close) are dropped
    qp.preempted = {r for r in qp.preempted if not r.done}
    n = 0
    for req in list(qp.reqs.values()):
        if req.done or req.nsid not in (nsid, NSID_ALL) or req.opcode not in R.CHECKED:
            continue
        if req in qp.preempted:
            continue
        if id(req) in waiting or req.wait is not None:
            if mark:
                qp.preempted.add(req)
            continue
        n += 1
    return n


def on_event(target: NvmfTarget, op: str, args: dict[str, Any]) -> Any:
    nqn = str(args.get("nqn", ""))
    if op == "nvmf.resv_view":
        ss = target.subsystems.get(nqn)
        ns = ss.namespaces.get(int(args["nsid"])) if ss is not None else None
        if ns is not None:
            set_view(ns, args.get("view"))
        return ns is not None
    if op == "nvmf.resv_notice":  # {nqn, nsid, entries: [[cntlid, type], ...]}
        n = 0
        for cntlid, ntype in args.get("entries", ()):
            ctrl = target.controllers.get((nqn, int(cntlid)))
            if ctrl is not None and ctrl.resv.notice(int(args["nsid"]), int(ntype)):
                _post(ctrl)
                n += 1
        return n
    if op in ("nvmf.resv_abort", "nvmf.resv_inflight"):
        hosts = set(args.get("hosts", ()))
        nsid = int(args["nsid"])
        return sum(
            _running(qp, nsid, op == "nvmf.resv_abort") for qp in _victim_qpairs(target, nqn, hosts)
        )
    if op == "nvmf.set_hostid":
        cntlid = int(args["cntlid"])
        n = 0
        for qp in target.qpairs:
            if qp.subsys is not None and qp.subsys.nqn == nqn and qp.cntlid == cntlid:
                qp.resv_id = str(args["host"])
                n += 1
        return n
    return None


def set_view(ns: Namespace, view: dict[str, Any] | None) -> None:
    """Install a published view on this reactor's namespace object: ``resv``
    stays None while no reservation is held (the TCP fast path checks that
    one attribute), so registrations alone cost nothing per I/O."""
    v = R.ResvView(view) if view else None
    ns.resv = v if v is not None and v.kind is not None else None
    ns.resv_ptpl = bool(v and v.ptpl)
