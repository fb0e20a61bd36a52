"""Admin command set of the target controller.

Owns: Identify (CNS 00h/01h/02h/03h/05h/06h/07h/08h), Get Log Page (supported
logs, error information, SMART/health with real counters, firmware slot,
changed namespace list, commands supported and effects, ANA with ana.py
building it; the discovery log is delegated to discovery.py), Get/Set Features, Keep Alive, Asynchronous Event
Request (at most 4 outstanding) and Abort. Abort behaves like Linux nvmet's
"minimum viable" one: it always reports "command not aborted" (DW0 bit 0 = 1),
which the specification allows since aborting is best effort. The
reservation parts (Reservation Notification log 80h, features Host
Identifier 81h, Reservation Notification Mask 82h, Reservation Persistence
83h, RESCAP, ONCS bit 5) are in reservation_io.py / reservation.py.

Admin commands other than fabrics commands are rejected with Command
Sequence Error until CC.EN = 1 and CSTS.RDY = 1 (as nvmet does); opcodes we
do not implement get Invalid Command Opcode.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...bdevs.base import Bdev
from ...shm.iobuf import CHUNK, IoVec
from . import ana, discovery, reservation, reservation_io, spec
from .core import (
    ERROR_LOG_ENTRIES,
    FIRMWARE_REV,
    MAX_ASYNC_EVENTS,
    VENDOR_ID,
    Controller,
    Namespace,
)
from .state import DEFAULT_MODEL

if TYPE_CHECKING:
    from .request import Request

DISCOVERY_OPCODES = frozenset(
    (
        spec.ADMIN_IDENTIFY,
        spec.ADMIN_GET_LOG_PAGE,
        spec.ADMIN_KEEP_ALIVE,
        spec.ADMIN_SET_FEATURES,
        spec.ADMIN_GET_FEATURES,
        spec.ADMIN_ASYNC_EVENT,
    )
)
NSID_ALL = 0xFFFFFFFF
CMIC = 0x3  # multi-port, multi-controller (dynamic controller model)
ONCS = 0x01 | 0x04 | 0x08 | 0x20  # Compare, Dataset Management, Write Zeroes, Reservations
FUSES = 0x01  # Compare and Write
OAES_NS_ATTR = 1 << 8
OAES_DISC_CHANGE = 1 << 31
DEFAULT_TEMP_THRESHOLD = 0x0157  # 343 K, the over-temperature default
POOL_PAYLOAD_MIN = 4096  # admin payloads above this are staged in pool buffers
_ZEROS = memoryview(bytes(CHUNK))


def execute(req: Request) -> None:
    ctrl = req.qp.ctrl
    assert ctrl is not None
    op = req.opcode
    if ctrl.subsys.is_discovery and op not in DISCOVERY_OPCODES:
        return req.complete(spec.ST_INVALID_OPCODE)
    handler = HANDLERS.get(op)
    if handler is None:
        return req.complete(spec.ST_INVALID_OPCODE)
    if not (ctrl.cc & spec.CC_EN and ctrl.csts & spec.CSTS_RDY):
        return req.complete(spec.ST_CMD_SEQ_ERROR)
    if req.sqe.fuse:
        return req.complete(spec.ST_INVALID_FIELD)  # no fused admin commands
    handler(req, ctrl)


# ------------------------------------------------------------------- identify
def identify(req: Request, ctrl: Controller) -> None:
    cdw10 = req.sqe.cdw10
    cns = cdw10 & 0xFF
    csi = (req.sqe.cdw11 >> 24) & 0xFF
    nsid = req.nsid
    ss = ctrl.subsys
    if ss.is_discovery and cns != spec.CNS_CTRL:
        return req.complete(spec.ST_INVALID_FIELD)
    if cns == spec.CNS_CTRL:
        return req.complete_with_data(identify_ctrl(ctrl))
    if cns == spec.CNS_CS_CTRL:
        if csi != spec.CSI_NVM:
            return req.complete(spec.ST_INVALID_FIELD)
        return req.complete_with_data(bytes(4096))  # NVM-specific controller data: all zero
    if cns in (spec.CNS_ACTIVE_NS_LIST, spec.CNS_CS_ACTIVE_NS_LIST):
        if cns == spec.CNS_CS_ACTIVE_NS_LIST and csi != spec.CSI_NVM:
            return req.complete(spec.ST_INVALID_FIELD)
        if nsid >= 0xFFFFFFFE:
            return req.complete(spec.ST_INVALID_NS)
        ids = [n for n in sorted(ss.namespaces) if n > nsid][:1024]
        buf = bytearray(4096)
        struct.pack_into(f"<{len(ids)}I", buf, 0, *ids)
        return req.complete_with_data(buf)
    if cns in (spec.CNS_NS, spec.CNS_NS_DESC_LIST, spec.CNS_CS_NS, spec.CNS_CS_INDEP_NS):
        if nsid == 0 or nsid == NSID_ALL or nsid > ss.nn:
            return req.complete(spec.ST_INVALID_NS)
        ns = ss.namespaces.get(nsid)
        if cns == spec.CNS_NS:
            if ns is None:
                return req.complete_with_data(bytes(4096))  # inactive: zero-filled
            bdev = req.qp.target.ctx.bdev(ns.bdev_name)
            return req.complete_with_data(identify_ns(ns, bdev))
        if ns is None:
            return req.complete(spec.ST_INVALID_NS)
        if cns == spec.CNS_NS_DESC_LIST:
            return req.complete_with_data(ns_desc_list(ns))
        if cns == spec.CNS_CS_NS:
            if csi != spec.CSI_NVM:
                return req.complete(spec.ST_INVALID_FIELD)
            return req.complete_with_data(bytes(4096))
        buf = bytearray(4096)  # I/O command set independent namespace data
        buf[1] = 0x1  # NMIC: may be shared
        buf[14] = 0x1  # NSTAT: namespace ready
        return req.complete_with_data(buf)
    req.complete(spec.ST_INVALID_FIELD)


def identify_ctrl(ctrl: Controller) -> bytearray:
    ss = ctrl.subsys
    qp = ctrl.admin_qp
    opts = qp.opts
    tf = qp.transport.identify(opts, ss.is_discovery)
    b = bytearray(4096)
    struct.pack_into("<HH", b, 0, VENDOR_ID, VENDOR_ID)
    b[4:24] = spec.fixed_ascii(ss.serial or "0" * 20, 20)
    b[24:64] = spec.fixed_ascii(ss.model or DEFAULT_MODEL, 40)
    b[64:72] = spec.fixed_ascii(FIRMWARE_REV, 8)
    b[72] = 6  # RAB
    b[76] = 0 if ss.is_discovery else CMIC
    b[77] = opts.mdts
    struct.pack_into("<HI", b, 78, ctrl.cntlid, spec.NVME_VS_1_3)
    struct.pack_into("<I", b, 92, OAES_DISC_CHANGE if ss.is_discovery else OAES_NS_ATTR)
    struct.pack_into("<I", b, 96, 0x1)  # CTRATT: 128-bit host identifier
    b[111] = 2 if ss.is_discovery else 1  # CNTRLTYPE: discovery / I/O controller
    if not ss.is_discovery:
        struct.pack_into("<H", b, 256, 0)  # OACS: no optional admin commands
        b[258] = 3  # ACL: 4 concurrent aborts
        b[260] = 0x3  # FRMW: slot 1 read-only, 1 slot
        b[261] = 0x6  # LPA: commands effects log, extended Get Log Page data
    else:
        b[261] = 0x4  # LPA: extended Get Log Page data
    b[259] = MAX_ASYNC_EVENTS - 1  # AERL
    b[262] = ERROR_LOG_ENTRIES - 1  # ELPE
    struct.pack_into("<H", b, 320, opts.kas)  # KAS
    b[512] = 0x66  # SQES
    b[513] = 0x44  # CQES
    maxcmd = opts.max_aq_depth if ss.is_discovery else opts.max_queue_depth
    struct.pack_into("<HI", b, 514, maxcmd, 0 if ss.is_discovery else ss.nn)
    if not ss.is_discovery:
        struct.pack_into("<HH", b, 520, ONCS, FUSES)
        b[525] = 0x1  # VWC present
    struct.pack_into("<I", b, 536, tf.sgls)  # SGL support: the transport's
    nqn = ss.nqn.encode("utf-8")[:255]
    b[768 : 768 + len(nqn)] = nqn
    if not ss.is_discovery:
        # the transport's IOCCSZ/IORCSZ (16-byte units), ICDOFF, FCATT, MSDBD
        struct.pack_into("<IIHBB", b, 1792, tf.ioccsz, tf.iorcsz, tf.icdoff, tf.fcatt, tf.msdbd)
        struct.pack_into("<HxxII", b, 2048, 0x9C4, 0x10, 0x4)  # power state 0
        if ss.ana_reporting:
            ana.identify_ctrl_fields(b, ss.nn)
    return b


def identify_ns(ns: Namespace, bdev: Bdev | None) -> bytearray:
    b = bytearray(4096)
    if bdev is None:
        return b
    nblocks = int(bdev.num_blocks)
    struct.pack_into("<QQQ", b, 0, nblocks, nblocks, nblocks)
    b[24] = 0  # NSFEAT
    b[25] = 0  # NLBAF: one format
    b[26] = 0  # FLBAS
    b[30] = 0x1  # NMIC: shareable (CMIC multi-controller)
    b[31] = reservation.rescap(ns.ptpl_capable)  # RESCAP
    b[33] = 0x1 if getattr(bdev, "supports_unmap", False) else 0  # DLFEAT: dealloc reads 0
    b[104:120] = ns.nguid
    b[120:128] = ns.eui64
    lbads = int(math.log2(int(bdev.block_size)))
    struct.pack_into("<HBB", b, 128, 0, lbads, 0)
    struct.pack_into("<I", b, 92, ns.anagrpid)  # ANAGRPID (reported when CMIC.ANA is set)
    return b


def ns_desc_list(ns: Namespace) -> bytearray:
    b = bytearray(4096)
    off = 0
    for nidt, val in (
        (spec.NIDT_EUI64, ns.eui64),
        (spec.NIDT_NGUID, ns.nguid),
        (spec.NIDT_UUID, ns.uuid),
    ):
        if any(val):
            struct.pack_into("<BBxx", b, off, nidt, len(val))
            b[off + 4 : off + 4 + len(val)] = val
            off += 4 + len(val)
    struct.pack_into("<BBxxB", b, off, spec.NIDT_CSI, 1, spec.CSI_NVM)
    return b


# ---------------------------------------------------------------- log pages
def _log_args(req: Request) -> tuple[int, int, bool, int, int]:
    cdw10, cdw11 = req.sqe.cdw10, req.sqe.cdw11
    lid = cdw10 & 0xFF
    lsp = (cdw10 >> 8) & 0x7F
    rae = bool(cdw10 & (1 << 15))
    numd = ((cdw10 >> 16) | ((cdw11 & 0xFFFF) << 16)) + 1
    offset = req.sqe.cdw12 | (req.sqe.cdw13 << 32)
    return lid, lsp, rae, numd * 4, offset


def _send_log(req: Request, page: bytes | bytearray, length: int, offset: int) -> None:
    """Send ``length`` bytes of ``page`` from ``offset``. ``length`` was
    checked against the transfer length (<= MDTS) before the page was built,
    so nothing here is sized by the host's NUMD alone: at most the bytes asked
    for, zero-filled past the end of the log."""
    if offset & 3 or offset > len(page):
        return req.complete(spec.ST_INVALID_FIELD)
    chunk = page[offset : offset + length]
    if len(chunk) == length:
        return req.complete_with_data(chunk)
    qp = req.qp
    iob = qp.iobufs
    if iob is None or length <= POOL_PAYLOAD_MIN or length > CHUNK:
        out = bytearray(length)  # length <= the SGL length <= MDTS
        out[: len(chunk)] = chunk
        return req.complete_with_data(out)

    def got(iov: IoVec) -> None:  # zero-filled past the log's end, in a pool buffer
        v = iov.views[0]
        k = len(chunk)
        v[:k] = chunk
        v[k:] = _ZEROS[: length - k]
        req.iov = None  # the output owns it now, until sent
        req.complete_with_data(v)
        qp.hold_tx(iov)

    qp.acquire(req, length, got)


def get_log_page(req: Request, ctrl: Controller) -> None:
    lid, lsp, rae, length, offset = _log_args(req)
    if length > req.sgl_len:
        # NUMD asks for more than the host's buffer (the SGL, itself capped by
        # MDTS): refused before anything is built, as Linux nvmet does
        return req.complete(spec.ST_DATA_SGL_LENGTH_INVALID)
    if ctrl.subsys.is_discovery:
        if lid == spec.LID_DISCOVERY:
            page = discovery.log_page(
                req.qp.target, ctrl.hostnqn, req.qp.listener, req.qp.transport
            )
            return _send_log(req, page, length, offset)
        if lid == spec.LID_SUPPORTED_LOGS:
            return _send_log(req, _supported_logs((0x00, 0x70)), length, offset)
        return req.complete(spec.ST_INVALID_LOG_PAGE)
    if lid == spec.LID_SUPPORTED_LOGS:
        lids: tuple[int, ...] = (0, 1, 2, 3, 4, 5, reservation.LID_RESV_NOTIFICATION)
        if ctrl.subsys.ana_reporting:
            lids += (ana.LID_ANA,)
        return _send_log(req, _supported_logs(lids), length, offset)
    if lid == ana.LID_ANA and ctrl.subsys.ana_reporting:
        return _ana_log(req, ctrl, bool(lsp & 1), rae, length, offset)
    if lid == spec.LID_ERROR:
        err = b"".join(ctrl.errors) + bytes(64 * (ERROR_LOG_ENTRIES - len(ctrl.errors)))
        return _send_log(req, err, length, offset)
    if lid == spec.LID_SMART:
        return _smart(req, ctrl, length, offset)
    if lid == spec.LID_FW_SLOT:
        page = bytearray(512)
        page[0] = 0x1  # AFI: slot 1 active
        page[8:16] = spec.fixed_ascii(FIRMWARE_REV, 8)
        return _send_log(req, page, length, offset)
    if lid == spec.LID_CHANGED_NS:
        page = bytearray(4096)
        if ctrl.changed_ns_overflow:
            struct.pack_into("<I", page, 0, 0xFFFFFFFF)
        elif ctrl.changed_ns:
            struct.pack_into(f"<{len(ctrl.changed_ns)}I", page, 0, *ctrl.changed_ns)
        if not rae:
            ctrl.changed_ns.clear()
            ctrl.changed_ns_overflow = False
            ctrl.unmask("ns")
        return _send_log(req, page, length, offset)
    if lid == spec.LID_CMD_EFFECTS:
        return _send_log(req, _cmd_effects(), length, offset)
    if lid == reservation.LID_RESV_NOTIFICATION:
        rpage = reservation_io.notification_log(ctrl, rae, offset)
        return _send_log(req, rpage, length, offset)
    req.complete(spec.ST_INVALID_LOG_PAGE)


def _ana_log(
    req: Request, ctrl: Controller, rgo: bool, rae: bool, length: int, offset: int
) -> None:
    """ANA log page (LID 0Ch) of the path the admin queue came on; LSP bit 0
    is RGO. Reading it without RAE re-arms the ANA change notice."""
    ss = ctrl.subsys
    la = ss.ana.get(ctrl.admin_qp.listener) or ana.ListenerAna(None)
    page = ana.log_page(la, ana.groups_of(ss.namespaces.values()), rgo, time.monotonic())
    if not rae:
        ctrl.unmask("ana")
    _send_log(req, page, length, offset)


def _supported_logs(lids: tuple[int, ...]) -> bytearray:
    b = bytearray(1024)
    for lid in lids:
        struct.pack_into("<I", b, lid * 4, 1)  # LSUPP
    return b


def _cmd_effects() -> bytearray:
    b = bytearray(4096)
    csupp, lbcc = 1, 2
    for op in (
        spec.ADMIN_GET_LOG_PAGE,
        spec.ADMIN_IDENTIFY,
        spec.ADMIN_ABORT,
        spec.ADMIN_SET_FEATURES,
        spec.ADMIN_GET_FEATURES,
        spec.ADMIN_ASYNC_EVENT,
        spec.ADMIN_KEEP_ALIVE,
    ):
        struct.pack_into("<I", b, op * 4, csupp)
    for op, eff in (
        (spec.IO_FLUSH, csupp),
        (spec.IO_WRITE, csupp | lbcc),
        (spec.IO_READ, csupp),
        (spec.IO_COMPARE, csupp),
        (spec.IO_WRITE_ZEROES, csupp | lbcc),
        (spec.IO_DSM, csupp | lbcc),
        *((op, csupp) for op in sorted(reservation.RESV_OPCODES)),
    ):
        struct.pack_into("<I", b, 1024 + op * 4, eff)
    return b


def _u128(b: bytearray, off: int, v: int) -> None:
    b[off : off + 16] = v.to_bytes(16, "little")


def smart_page(c: dict[str, int]) -> bytearray:
    b = bytearray(512)
    # data units are thousands of 512-byte units, rounded up
    _u128(b, 32, math.ceil(c.get("read_bytes", 0) / 512 / 1000))
    _u128(b, 48, math.ceil(c.get("write_bytes", 0) / 512 / 1000))
    _u128(b, 64, c.get("read_cmds", 0))
    _u128(b, 80, c.get("write_cmds", 0))
    return b


def _smart(req: Request, ctrl: Controller, length: int, offset: int) -> None:
    target = req.qp.target

    def done(ok: bool, result: Any) -> None:
        if ok and isinstance(result, dict):
            counters = result
        else:  # the directory could not gather: report this reactor's part
            counters = target.counters_for(ctrl.subsys.nqn, ctrl.cntlid)
        _send_log(req, smart_page(counters), length, offset)

    target.ctx.call("nvmf.ctrlr_counters", {"nqn": ctrl.subsys.nqn, "cntlid": ctrl.cntlid}, done)


# ------------------------------------------------------------------ features
CHANGEABLE = frozenset(
    (
        spec.FID_ARBITRATION,
        spec.FID_POWER_MGMT,
        spec.FID_TEMP_THRESHOLD,
        spec.FID_ERROR_RECOVERY,
        spec.FID_VOLATILE_WC,
        spec.FID_NUM_QUEUES,
        spec.FID_WRITE_ATOMICITY,
        spec.FID_ASYNC_EVENT_CONFIG,
        spec.FID_KATO,
    )
)
DISCOVERY_FIDS = frozenset((spec.FID_ASYNC_EVENT_CONFIG, spec.FID_KATO))


def _num_queues(ctrl: Controller) -> int:
    n = ctrl.admin_qp.opts.max_io_qpairs_per_ctrlr - 1
    return (n << 16) | n


def _default(ctrl: Controller, fid: int, cdw11: int) -> int | None:
    if fid == spec.FID_TEMP_THRESHOLD:
        return DEFAULT_TEMP_THRESHOLD if ((cdw11 >> 20) & 3) == 0 else 0
    if fid == spec.FID_NUM_QUEUES:
        return _num_queues(ctrl)
    if fid == spec.FID_KATO:
        return ctrl.kato_ms
    if fid == spec.FID_IRQ_COALESCING:
        return 0
    if fid == spec.FID_IRQ_CONFIG:
        return cdw11 & 0xFFFF
    if fid == spec.FID_VOLATILE_WC:
        return 1
    if fid in ctrl.features:
        return 0
    return None


def get_features(req: Request, ctrl: Controller) -> None:
    cdw10, cdw11 = req.sqe.cdw10, req.sqe.cdw11
    fid = cdw10 & 0xFF
    sel = (cdw10 >> 8) & 0x7
    if ctrl.subsys.is_discovery and fid not in DISCOVERY_FIDS:
        return req.complete(spec.ST_INVALID_FIELD)
    if fid in _RESV_GET:
        if sel == 3:  # changeable; 82h/83h are namespace specific
            return req.complete(0, 0x4 if fid == spec.FID_HOST_ID else 0x6)
        if sel in (1, 2) and fid != spec.FID_HOST_ID:
            return req.complete(0, 0)  # default = saved (not saveable): 0
        if sel > 3:
            return req.complete(spec.ST_INVALID_FIELD)
        return _RESV_GET[fid](req, ctrl)
    default = _default(ctrl, fid, cdw11)
    if default is None:
        return req.complete(spec.ST_INVALID_FIELD)
    if sel == 3:  # supported capabilities: changeable, not saveable
        return req.complete(0, 0x4 if fid in CHANGEABLE else 0)
    if sel in (1, 2):
        return req.complete(0, default)
    if sel != 0:
        return req.complete(spec.ST_INVALID_FIELD)
    if fid == spec.FID_TEMP_THRESHOLD:
        key = ((cdw11 >> 16) & 0xF, (cdw11 >> 20) & 0x3)
        return req.complete(0, ctrl.temp_thresholds.get(key, default))
    if fid in (spec.FID_NUM_QUEUES, spec.FID_KATO, spec.FID_IRQ_COALESCING, spec.FID_IRQ_CONFIG):
        return req.complete(0, default)
    req.complete(0, ctrl.features.get(fid, default))


def set_features(req: Request, ctrl: Controller) -> None:
    cdw10, cdw11 = req.sqe.cdw10, req.sqe.cdw11
    fid = cdw10 & 0xFF
    if ctrl.subsys.is_discovery and fid not in DISCOVERY_FIDS:
        return req.complete(spec.ST_INVALID_FIELD)
    if cdw10 & (1 << 31):
        return req.complete(spec.ST_FEATURE_NOT_SAVEABLE)
    if fid in _RESV_SET:
        return _RESV_SET[fid](req, ctrl)
    if fid in (spec.FID_IRQ_COALESCING, spec.FID_IRQ_CONFIG):
        return req.complete(spec.ST_FEATURE_NOT_CHANGEABLE)
    if fid == spec.FID_NUM_QUEUES:
        if (cdw11 & 0xFFFF) == 0xFFFF or (cdw11 >> 16) == 0xFFFF:
            return req.complete(spec.ST_INVALID_FIELD)
        ctrl.num_queues_set = True
        return req.complete(0, _num_queues(ctrl))
    if fid == spec.FID_KATO:
        kato = cdw11
        kas = ctrl.admin_qp.opts.kas
        if kato and kas:
            kato = math.ceil(kato / (kas * 100)) * kas * 100
        ctrl.kato_ms = kato
        ctrl.start_keep_alive()
        return req.complete(0)
    if fid == spec.FID_TEMP_THRESHOLD:
        tmpsel, thsel = (cdw11 >> 16) & 0xF, (cdw11 >> 20) & 0x3
        if thsel > 1 or (tmpsel not in (0, 0xF)):
            return req.complete(spec.ST_INVALID_FIELD)
        ctrl.temp_thresholds[(tmpsel, thsel)] = cdw11 & 0xFFFF
        return req.complete(0)
    if fid == spec.FID_ASYNC_EVENT_CONFIG:
        supported = OAES_DISC_CHANGE if ctrl.subsys.is_discovery else (OAES_NS_ATTR | 0xFF)
        if ctrl.subsys.ana_reporting:
            supported |= ana.AEC_ANA
        ctrl.features[fid] = cdw11 & supported
        return req.complete(0)
    if fid == spec.FID_VOLATILE_WC:
        return _set_vwc(req, ctrl, cdw11 & 0x1)
    if fid in (
        spec.FID_ARBITRATION,
        spec.FID_POWER_MGMT,
        spec.FID_ERROR_RECOVERY,
        spec.FID_WRITE_ATOMICITY,
    ):
        if fid == spec.FID_POWER_MGMT and (cdw11 & 0x1F) != 0:
            return req.complete(spec.ST_INVALID_FIELD)  # only power state 0 exists
        ctrl.features[fid] = cdw11
        return req.complete(0)
    req.complete(spec.ST_INVALID_FIELD)


# Host Identifier, Reservation Notification Mask, Reservation Persistence
_RESV_GET = {
    spec.FID_HOST_ID: reservation_io.get_host_id,
    reservation.FID_RESV_MASK: reservation_io.get_mask,
    reservation.FID_RESV_PERSIST: reservation_io.get_persist,
}
_RESV_SET = {
    spec.FID_HOST_ID: reservation_io.set_host_id,
    reservation.FID_RESV_MASK: reservation_io.set_mask,
    reservation.FID_RESV_PERSIST: reservation_io.set_persist,
}


def _set_vwc(req: Request, ctrl: Controller, vwc: int) -> None:
    """VWC 0: write-through (every write durable before it completes) on all
    I/O queues of the controller, on every reactor; 1: back to write-back.
    Completes once every reactor has switched, so a write the host submits
    after this completion is already covered."""
    ctrl.features[spec.FID_VOLATILE_WC] = vwc
    ctrl.vwc_local(vwc)

    def done(ok: bool, result: Any) -> None:
        req.complete(0 if ok else spec.ST_INTERNAL)

    ctrl.target.ctx.call(
        "nvmf.ctrlr_vwc", {"nqn": ctrl.subsys.nqn, "cntlid": ctrl.cntlid, "vwc": vwc}, done
    )


# -------------------------------------------------------------- the others
def keep_alive(req: Request, ctrl: Controller) -> None:
    ctrl.keep_alive()
    req.complete(0)


def async_event(req: Request, ctrl: Controller) -> None:
    if len(ctrl.aers) >= MAX_ASYNC_EVENTS:
        return req.complete(spec.ST_ASYNC_LIMIT)
    ctrl.aers.append(req)
    ctrl.deliver_events()


def abort(req: Request, ctrl: Controller) -> None:
    req.complete(0, 1)  # DW0 bit 0: command not aborted


HANDLERS: dict[int, Callable[[Request, Controller], None]] = {
    spec.ADMIN_IDENTIFY: identify,
    spec.ADMIN_GET_LOG_PAGE: get_log_page,
    spec.ADMIN_GET_FEATURES: get_features,
    spec.ADMIN_SET_FEATURES: set_features,
    spec.ADMIN_KEEP_ALIVE: keep_alive,
    spec.ADMIN_ASYNC_EVENT: async_event,
    spec.ADMIN_ABORT: abort,
}
