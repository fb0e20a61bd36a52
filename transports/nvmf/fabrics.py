"""NVMe-oF fabrics commands: Connect, Property Get/Set, Disconnect.

Owns the association lifecycle on the target side: admin Connect (dynamic
controller model: CNTLID must be FFFFh; the supervisor allocates the cntlid),
I/O Connect (the controller is found through the supervisor even when its
admin queue lives on another reactor), the Connect Invalid Parameters
reporting (IATTR/IPO as the Linux host decodes them), the controller
properties CAP/VS/CC/CSTS with the CC.EN / CC.SHN state machine.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from ...shm import trace as _tr
from ...shm.trace import G_NVMF, TRACE
from . import auth, spec
from .core import DISC_KATO_MS, Controller, Subsystem

if TYPE_CHECKING:
    from .qpair import QueuePair
    from .request import Request

log = logging.getLogger(__name__)

CAP_TO = 15  # CC.EN transition timeout, 500 ms units (7.5 s), like nvmet


def execute(req: Request) -> None:
    qp = req.qp
    fctype = req.sqe.nsid & 0xFF
    if fctype == spec.FCTYPE_CONNECT:
        return connect(req)
    if qp.qid < 0:
        return req.complete(spec.ST_CMD_SEQ_ERROR)
    if fctype in (spec.FCTYPE_AUTH_SEND, spec.FCTYPE_AUTH_RECV):
        return auth.execute(req, fctype)
    if qp.qid > 0:
        # only Connect and authentication exist on I/O queues
        return req.complete(spec.ST_INVALID_OPCODE)
    if not auth.gate(req):
        return  # Authentication Required
    if fctype == spec.FCTYPE_PROPERTY_GET:
        return property_get(req)
    if fctype == spec.FCTYPE_PROPERTY_SET:
        return property_set(req)
    # Disconnect and unknown types
    req.complete(spec.ST_INVALID_OPCODE)


def _hostlog(qp: QueuePair, msg: str, *args: object) -> None:
    hl = getattr(qp, "hlog", None)
    if hl is not None:
        hl.event(logging.INFO, msg, *args)
    else:
        log.info("nvmf: " + msg, *args)


def _invalid(req: Request, offset: int, in_data: bool) -> None:
    req.complete(spec.ST_CONNECT_INVALID_PARAM, spec.connect_ipo(offset, in_data))


def _tls_refusal(peer: tuple[str, str] | None, ss: Any, hostnqn: str, subnqn: str) -> str:
    """Why a Connect breaks the TLS binding ("" when it does not): over TLS the
    host and subsystem NQNs must be the PSK identity's; a host that has a PSK
    on the subsystem must come over TLS."""
    if peer is not None:
        if peer[0] != hostnqn:
            return f"host {hostnqn!r} connects with the TLS PSK of {peer[0]!r}"
        if peer[1] != subnqn and not ss.is_discovery:
            return f"connect to {subnqn!r} with the TLS PSK for {peer[1]!r}"
    elif hostnqn in ss.tls_hosts:
        return f"host {hostnqn!r} has a TLS PSK on {subnqn}: plain TCP refused"
    return ""


def connect(req: Request) -> None:
    qp = req.qp
    target = qp.target
    sqe = req.sqe
    if qp.qid >= 0 or qp.connect_pending:
        return req.complete(spec.ST_CMD_SEQ_ERROR)
    recfmt = sqe.cdw10 & 0xFFFF
    qid = sqe.cdw10 >> 16
    sqsize = sqe.cdw11 & 0xFFFF
    cattr = (sqe.cdw11 >> 16) & 0xFF
    kato = sqe.cdw12
    if recfmt != 0:
        return req.complete(spec.ST_CONNECT_INCOMPATIBLE_FORMAT)
    data = req.data
    if data is None or len(data) < spec.CONNECT_DATA_SIZE:
        return req.complete(spec.ST_INVALID_FIELD)
    hostid = bytes(data[0:16])
    cntlid = spec.u16(data, spec.CONNECT_DATA_OFF_CNTLID)
    raw_sub = bytes(data[256:512])
    raw_host = bytes(data[512:768])
    if b"\0" not in raw_sub:
        return _invalid(req, spec.CONNECT_DATA_OFF_SUBNQN, True)
    if b"\0" not in raw_host:
        return _invalid(req, spec.CONNECT_DATA_OFF_HOSTNQN, True)
    subnqn = raw_sub[: raw_sub.index(b"\0")].decode("utf-8", "replace")
    hostnqn = raw_host[: raw_host.index(b"\0")].decode("utf-8", "replace")
    # everything is copied out: drop the view so that waiting for the
    # supervisor does not pin the connection's receive buffer
    req.data = None
    del data
    opts = qp.opts
    if sqsize == 0 or sqsize >= (opts.max_aq_depth if qid == 0 else opts.max_queue_depth):
        return _invalid(req, spec.CONNECT_OFF_SQSIZE, False)
    ss = target.subsystem(subnqn)
    if ss is None or not ss.listener_allowed(qp.listener):
        _hostlog(qp, "connect to unknown subsystem %r (or not on %s)", subnqn, qp.listener)
        return _invalid(req, spec.CONNECT_DATA_OFF_SUBNQN, True)
    if not ss.host_allowed(hostnqn):
        _hostlog(qp, "host %r may not access %s", hostnqn, subnqn)
        return req.complete(
            spec.ST_CONNECT_INVALID_HOST, spec.connect_ipo(spec.CONNECT_DATA_OFF_HOSTNQN, True)
        )
    tls_refusal = _tls_refusal(qp.tls_peer, ss, hostnqn, subnqn)
    if tls_refusal:
        _hostlog(qp, "%s", tls_refusal)
        return req.complete(
            spec.ST_CONNECT_INVALID_HOST, spec.connect_ipo(spec.CONNECT_DATA_OFF_HOSTNQN, True)
        )
    qp.sq_flow_disabled = bool(cattr & spec.CATTR_DISABLE_SQ_FLOW)
    if qid == 0:
        if cntlid != spec.CNTLID_DYNAMIC:
            return _invalid(req, spec.CONNECT_DATA_OFF_CNTLID, True)
        if ss.is_discovery and kato == 0:
            kato = DISC_KATO_MS
        elif kato and opts.kas:
            unit = opts.kas * 100
            kato = math.ceil(kato / unit) * unit
        return _connect_admin(req, ss, hostnqn, hostid, kato, sqsize)
    if ss.is_discovery or qid > opts.max_io_qpairs_per_ctrlr:
        return _invalid(req, spec.CONNECT_OFF_QID, False)
    return _connect_io(req, ss, hostnqn, hostid, cntlid, qid, sqsize)


def _connect_admin(
    req: Request, ss: Subsystem, hostnqn: str, hostid: bytes, kato: int, sqsize: int
) -> None:
    qp = req.qp
    target = qp.target
    qp.connect_pending = True

    def done(ok: bool, result: Any) -> None:
        qp.connect_pending = False
        if not ok or not isinstance(result, dict):
            log.warning("nvmf: create_ctrlr failed: %s", result)
            return req.complete(spec.ST_INTERNAL)
        err = result.get("error")
        if err == "busy":
            return req.complete(spec.ST_CONNECT_CTRL_BUSY)
        if err == "host":
            return req.complete(
                spec.ST_CONNECT_INVALID_HOST, spec.connect_ipo(spec.CONNECT_DATA_OFF_HOSTNQN, True)
            )
        if err is not None:
            return _invalid(req, spec.CONNECT_DATA_OFF_SUBNQN, True)
        cntlid = int(result["cntlid"])
        cur = target.subsystem(ss.nqn) or ss
        ctrl = Controller(target, cur, cntlid, hostnqn, hostid, kato, qp)
        if qp.closed:
            # the connection went away while we waited: free the cntlid again
            target.ctx.call(
                "nvmf.ctrlr_gone", {"nqn": ss.nqn, "cntlid": cntlid}, lambda ok, r: None
            )
            return
        qp.qid = 0
        qp.sqsize = sqsize
        qp.ctrl = ctrl
        qp.subsys = cur
        qp.cntlid = cntlid
        qp.hostnqn = hostnqn
        qp.resv_id = hostid.hex()
        target.add_controller(ctrl)
        target.stats["admin_qpairs"] += 1
        ctrl.start_keep_alive()
        if TRACE.mask & G_NVMF:
            TRACE.rec(_tr.TP_QP_CONNECT, qp.tp_id, 0, cntlid)
        req.complete(0, cntlid | auth.start(qp))

    target.ctx.call(
        "nvmf.create_ctrlr",
        {
            "nqn": ss.nqn,
            "hostnqn": hostnqn,
            "hostid": hostid.hex(),
            "kato_ms": kato,
            "trtype": qp.transport.trtype,
        },
        done,
    )


def _connect_io(
    req: Request, ss: Subsystem, hostnqn: str, hostid: bytes, cntlid: int, qid: int, sqsize: int
) -> None:
    qp = req.qp
    target = qp.target
    qp.connect_pending = True

    def done(ok: bool, result: Any) -> None:
        qp.connect_pending = False
        if not ok or not isinstance(result, dict):
            log.warning("nvmf: find_ctrlr failed: %s", result)
            return req.complete(spec.ST_INTERNAL)
        err = result.get("error")
        if err is not None:
            where = {
                "cntlid": (spec.CONNECT_DATA_OFF_CNTLID, True),
                "hostnqn": (spec.CONNECT_DATA_OFF_HOSTNQN, True),
                "hostid": (spec.CONNECT_DATA_OFF_HOSTID, True),
            }.get(err, (spec.CONNECT_OFF_QID, False))
            return _invalid(req, *where)
        if qp.closed:
            target.ctx.call(
                "nvmf.qpair_gone", {"nqn": ss.nqn, "cntlid": cntlid, "qid": qid}, lambda ok, r: None
            )
            return
        qp.qid = qid
        qp.sqsize = sqsize
        qp.subsys = target.subsystem(ss.nqn) or ss
        qp.cntlid = cntlid
        qp.hostnqn = hostnqn
        qp.write_through = not int(result.get("vwc", 1))
        qp.resv_id = str(result.get("resv_id") or hostid.hex())
        ctrl = target.find_local_ctrlr(ss.nqn, cntlid)
        if ctrl is not None:
            ctrl.io_qpairs.add(qp)
            qp.ctrl = ctrl
        target.stats["io_qpairs"] += 1
        if TRACE.mask & G_NVMF:
            TRACE.rec(_tr.TP_QP_CONNECT, qp.tp_id, qid, cntlid)
        req.complete(0, cntlid | auth.start(qp))

    target.ctx.call(
        "nvmf.find_ctrlr",
        {
            "nqn": ss.nqn,
            "cntlid": cntlid,
            "hostnqn": hostnqn,
            "hostid": hostid.hex(),
            "qid": qid,
            "trtype": req.qp.transport.trtype,
        },
        done,
    )


# ----------------------------------------------------------------- properties
def cap_value(ctrl: Controller) -> int:
    opts = ctrl.admin_qp.opts
    mqes = (opts.max_aq_depth if ctrl.subsys.is_discovery else opts.max_queue_depth) - 1
    return (
        (mqes & 0xFFFF)
        | (1 << 16)  # CQR: contiguous queues required (fabrics)
        | (CAP_TO << 24)
        | (1 << 37)  # CSS: NVM command set
    )  # MPSMIN = MPSMAX = 0 (4 KiB)


def property_get(req: Request) -> None:
    ctrl = req.qp.ctrl
    assert ctrl is not None
    attrib = req.sqe.cdw10 & 0x7
    offset = req.sqe.cdw11
    size8 = attrib & 1
    if size8:
        if offset == spec.PROP_CAP:
            return req.complete(0, cap_value(ctrl))
        return req.complete(spec.ST_INVALID_FIELD)
    if offset == spec.PROP_VS:
        return req.complete(0, spec.NVME_VS_1_3)
    if offset == spec.PROP_CC:
        return req.complete(0, ctrl.cc)
    if offset == spec.PROP_CSTS:
        return req.complete(0, ctrl.csts)
    req.complete(spec.ST_INVALID_FIELD)


def _cc_valid(cc: int) -> bool:
    iosqes = (cc >> 16) & 0xF
    iocqes = (cc >> 20) & 0xF
    mps = (cc >> 7) & 0xF
    css = (cc >> 4) & 0x7
    ams = (cc >> 11) & 0x7
    return iosqes == 6 and iocqes == 4 and mps == 0 and css == 0 and ams == 0


def property_set(req: Request) -> None:
    qp = req.qp
    ctrl = qp.ctrl
    assert ctrl is not None
    attrib = req.sqe.cdw10 & 0x7
    offset = req.sqe.cdw11
    value = req.sqe.cdw12 | (req.sqe.cdw13 << 32)
    if attrib & 1 or offset != spec.PROP_CC:
        return req.complete(spec.ST_INVALID_FIELD)
    set_cc(ctrl, value & 0xFFFFFFFF)
    req.complete(0)


def set_cc(ctrl: Controller, new: int) -> None:
    target = ctrl.target
    old = ctrl.cc
    ctrl.cc = new
    args = {"nqn": ctrl.subsys.nqn, "cntlid": ctrl.cntlid}
    if new & spec.CC_EN and not old & spec.CC_EN:
        if _cc_valid(new):
            ctrl.csts = (ctrl.csts & ~spec.CSTS_CFS) | spec.CSTS_RDY
            target.ctx.call("nvmf.ctrlr_state", {**args, "enabled": True}, lambda ok, r: None)
        else:
            _hostlog(ctrl.admin_qp, "CC %#x has invalid IOSQES/IOCQES/MPS/CSS/AMS", new)
            ctrl.csts |= spec.CSTS_CFS
    elif not new & spec.CC_EN and old & spec.CC_EN:
        # controller reset: I/O queues go on every reactor, AERs are dropped
        ctrl.csts = 0
        for q in list(ctrl.io_qpairs):
            q.close("controller reset")
        target.ctx.call("nvmf.ctrlr_reset", args, lambda ok, r: None)
    shn_new = (new >> spec.CC_SHN_SHIFT) & 3
    shn_old = (old >> spec.CC_SHN_SHIFT) & 3
    if shn_new and not shn_old:
        ctrl.csts |= spec.CSTS_SHST_CMPLT
    elif not shn_new and shn_old:
        ctrl.csts &= ~spec.CSTS_SHST_CMPLT
