"""Reactor-side NVMe-oF target objects built from the configuration snapshot.

Owns: `TransportOpts` (the options of one transport, from the snapshot),
`Namespace`, `Subsystem` (rebuilt from ``ctx.nvmf_config`` on every
ConfigUpdate), `Controller` (the admin-queue side of an association:
properties CC/CSTS, features, keep-alive timer, AER slots, changed-namespace
list, error log ring, counters) and `NvmfTarget`, one per reactor
(``target_for(ctx)``), shared by every transport of the reactor: it holds
them, answers the supervisor's "nvmf.*" events and builds the poll group's
statistics. Queue pairs are in qpair.py, requests in request.py, the
transport ops table in transport.py; no transport module is imported here.

A controller lives on the reactor that accepted its admin queue; its I/O
queues may live on any reactor and only know (subsystem, cntlid). Anything
that spans reactors goes through the supervisor's controller directory
(state.py) with ``ctx.call``.
"""

from __future__ import annotations

import collections
import logging
import struct
import time
import uuid as uuid_mod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...bdevs.base import Bdev, IoChannel
from ...control.keyring import parse_dhchap_secret
from ...runtime.loop import Timer
from ...shm import trace as _tr
from ...shm.trace import G_NVMF, TRACE
from ..context import ReactorContext
from . import ana, reservation_io, spec
from .nqn import DISCOVERY_NQN
from .qpair import Counters, QueuePair
from .reservation import CtrlResv, ResvView
from .transport import UnknownTransport, find_transport, get_transport

if TYPE_CHECKING:
    from .request import Request

log = logging.getLogger(__name__)

FIRMWARE_REV = "0.1.0"
VENDOR_ID = 0  # no PCI vendor id, like a software target without one
IEEE_OUI = b"\x00\x00\x00"
MAX_ASYNC_EVENTS = 4  # AERL = 3
ERROR_LOG_ENTRIES = 128  # ELPE = 127
DISC_KATO_MS = 120_000  # discovery controller connected with KATO 0


class TransportOpts:
    """The options of one transport a reactor needs, from the snapshot
    (the transport's defaults fill what the snapshot lacks)."""

    def __init__(self, d: dict[str, Any] | None, trtype: str) -> None:
        o: dict[str, Any] = dict(get_transport(trtype).defaults())
        if d:
            o.update(d)
        self.trtype = trtype
        self.raw = o
        self.max_queue_depth = int(o["max_queue_depth"])
        self.max_io_qpairs_per_ctrlr = int(o["max_io_qpairs_per_ctrlr"])
        self.in_capsule_data_size = int(o["in_capsule_data_size"])
        self.max_io_size = int(o["max_io_size"])
        self.io_unit_size = int(o["io_unit_size"])
        self.max_aq_depth = int(o["max_aq_depth"])
        self.c2h_success = bool(o.get("c2h_success", False))
        self.kas = int(o.get("kas", 100))
        self.sock_priority = int(o.get("sock_priority", 0))
        self.connect_timeout = int(o.get("connect_timeout_ms", 10000)) / 1000.0
        self.h2c_data_timeout = int(o.get("h2c_data_timeout_ms", 10000)) / 1000.0
        self.max_unsent_bytes = int(o.get("max_unsent_bytes", 4 << 20))
        self.max_connections = int(o.get("max_connections_per_reactor", 1024))
        # the admin queue accepts 8 KiB in capsule (Linux sends Connect data inline)
        self.admin_icd = max(8192, self.in_capsule_data_size)

    @property
    def mdts(self) -> int:
        n, size = 0, 4096
        while size * 2 <= self.max_io_size:
            size *= 2
            n += 1
        return n


class Namespace:
    __slots__ = (
        "nsid",
        "bdev_name",
        "uuid",
        "nguid",
        "eui64",
        "anagrpid",
        "bdev",
        "chan",
        "copies",
        # NVMe reservations (reservation_io.set_view): the view while a
        # reservation is held (else None), PTPL active, a PTPL file exists
        "resv",
        "resv_ptpl",
        "ptpl_capable",
    )

    def __init__(self, d: dict[str, Any]) -> None:
        self.nsid = int(d["nsid"])
        self.bdev_name = str(d["bdev_name"])
        self.uuid = uuid_mod.UUID(d["uuid"]).bytes if d.get("uuid") else b"\0" * 16
        self.nguid = bytes.fromhex(d["nguid"]) if d.get("nguid") else b"\0" * 16
        self.eui64 = bytes.fromhex(d["eui64"]) if d.get("eui64") else b"\0" * 8
        self.anagrpid = int(d.get("anagrpid") or self.nsid)  # ANA group (default: the NSID)
        # this reactor's bdev and channel, looked up on first I/O (a new
        # snapshot builds new Namespace objects, so the cache never goes stale)
        self.bdev: Bdev | None = None
        self.chan: IoChannel | None = None
        # the channel copies read data (aio, nvme): reads go into pool buffers
        self.copies = False
        self.resv: ResvView | None = None
        self.resv_ptpl = False
        self.ptpl_capable = bool(d.get("ptpl_file"))
        reservation_io.set_view(self, d.get("resv"))

    def ident(self) -> tuple[str, bytes, bytes, bytes, int]:
        return (self.bdev_name, self.uuid, self.nguid, self.eui64, self.anagrpid)


class Subsystem:
    def __init__(self, d: dict[str, Any]) -> None:
        self.nqn: str = d["nqn"]
        self.subtype: str = d.get("subtype", "NVMe")
        self.is_discovery = self.subtype == "Discovery" or self.nqn == DISCOVERY_NQN
        self.serial: str = d.get("serial_number", "")
        self.model: str = d.get("model_number", "")
        self.max_namespaces = int(d.get("max_namespaces", 0))
        self.allow_any_host = bool(d.get("allow_any_host", False))
        self.hosts = set(d.get("hosts", ()))
        # hosts with a TLS PSK (nvmf_subsystem_add_host --psk): TLS connections only
        self.tls_hosts = set(d.get("host_psks", ()))
        self.listeners: list[dict[str, Any]] = list(d.get("listeners", ()))
        self.listener_keys = {
            li.get("key", f"{li['traddr']}:{li['trsvcid']}") for li in self.listeners
        }
        self.ana_reporting = bool(d.get("ana_reporting", False))
        self.ana = ana.listener_map(self.listeners)  # listener key -> ANA states
        self.namespaces: dict[int, Namespace] = {}
        for nd in d.get("namespaces", ()):
            ns = Namespace(nd)
            self.namespaces[ns.nsid] = ns
        # DH-HMAC-CHAP (auth.py): the material of each host's keys, the offered lists
        self.dhchap_secrets: dict[str, list[str | None]] = dict(d.get("dhchap_secrets") or {})
        self.dhchap_digests: list[str] = list(d.get("dhchap_digests") or ())
        self.dhchap_dhgroups: list[str] = list(d.get("dhchap_dhgroups") or ())
        self._dhchap_parsed: dict[str, tuple[Any, Any]] = {}

    def dhchap_keys(self, hostnqn: str) -> tuple[Any, Any]:
        """(host key, controller key) of ``hostnqn`` as DhchapSecret, None when unset."""
        got = self._dhchap_parsed.get(hostnqn)
        if got is None:
            m = list(self.dhchap_secrets.get(hostnqn) or ()) + [None, None]
            got = (
                parse_dhchap_secret(m[0]) if m[0] else None,
                parse_dhchap_secret(m[1]) if m[1] else None,
            )
            self._dhchap_parsed[hostnqn] = got
        return got

    def host_allowed(self, hostnqn: str) -> bool:
        return self.is_discovery or self.allow_any_host or hostnqn in self.hosts

    def listener_allowed(self, key: str) -> bool:
        # like SPDK (deprecated) and Linux nvmet, discovery answers on every port
        return self.is_discovery or key in self.listener_keys

    @property
    def nn(self) -> int:
        top = max(self.namespaces, default=0)
        return max(self.max_namespaces, top) if self.max_namespaces else max(top, 1024)


class Controller:
    def __init__(
        self,
        target: NvmfTarget,
        subsys: Subsystem,
        cntlid: int,
        hostnqn: str,
        hostid: bytes,
        kato_ms: int,
        admin_qp: QueuePair,
    ) -> None:
        self.target = target
        self.subsys = subsys
        self.cntlid = cntlid
        self.hostnqn = hostnqn
        self.hostid = hostid
        self.admin_qp = admin_qp
        self.kato_ms = kato_ms
        self.cc = 0
        self.csts = 0
        self.features: dict[int, int] = {
            spec.FID_ARBITRATION: 0,
            spec.FID_POWER_MGMT: 0,
            spec.FID_ERROR_RECOVERY: 0,
            spec.FID_VOLATILE_WC: 1,
            spec.FID_WRITE_ATOMICITY: 0,
            spec.FID_ASYNC_EVENT_CONFIG: 0,
        }
        self.temp_thresholds: dict[tuple[int, int], int] = {}
        self.num_queues_set = False
        self.aers: list[Request] = []
        self.pending_events: collections.deque[tuple[str, int]] = collections.deque()
        self.masked: set[str] = set()  # event kinds waiting for their log page read
        self.changed_ns: list[int] = []
        self.changed_ns_overflow = False
        self.errors: collections.deque[bytes] = collections.deque(maxlen=ERROR_LOG_ENTRIES)
        self.error_count = 0
        self.counters = Counters()
        self.io_qpairs: set[QueuePair] = set()  # this reactor's I/O queues
        self.last_ka = time.monotonic()
        self._timer: Timer | None = None
        self.ana_timer: Timer | None = None  # end of an ANA transition (ana.py)
        self.destroyed = False
        self.disc_genctr = target.genctr
        self.resv = CtrlResv()  # reservation notification masks and log

    @property
    def key(self) -> tuple[str, int]:
        return (self.subsys.nqn, self.cntlid)

    @property
    def ready(self) -> bool:
        return bool(self.csts & spec.CSTS_RDY)

    # -- keep alive -----------------------------------------------------------
    def start_keep_alive(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.kato_ms > 0 and not self.destroyed:
            self.last_ka = time.monotonic()
            self._timer = self.target.ctx.loop.call_later(self.kato_ms / 1000.0, self._check_kato)

    def keep_alive(self) -> None:
        self.last_ka = time.monotonic()

    def _check_kato(self) -> None:
        self._timer = None
        try:
            self._check_kato_now()
        except Exception:  # containment: this controller only
            self.target.stats["qpair_exceptions"] += 1
            log.exception("nvmf: keep-alive check of cntlid %d failed: tearing down", self.cntlid)
            self.target.destroy_controller(self, "internal error")

    def _check_kato_now(self) -> None:
        if self.destroyed or self.kato_ms <= 0:
            return
        deadline = self.last_ka + self.kato_ms / 1000.0
        now = time.monotonic()
        if now >= deadline:
            msg = "keep-alive timeout (%d ms) for %s cntlid %d: tearing down"
            if TRACE.mask & G_NVMF:
                TRACE.rec(_tr.TP_KATO_EXPIRED, self.cntlid, 0, self.kato_ms)
            hl = getattr(self.admin_qp, "hlog", None)
            if hl is not None:
                hl.event(logging.WARNING, msg, self.kato_ms, self.subsys.nqn, self.cntlid)
            else:
                log.warning("nvmf: " + msg, self.kato_ms, self.subsys.nqn, self.cntlid)
            self.target.stats["keep_alive_expiries"] += 1
            self.target.destroy_controller(self, "keep-alive timeout")
        else:
            self._timer = self.target.ctx.loop.call_later(deadline - now, self._check_kato)

    # -- async events -----------------------------------------------------------
    def post_event(self, kind: str, dw0: int) -> None:
        """Queue an async event unless one of the same kind is still masked
        (sent and its log page not read yet)."""
        if kind in self.masked or self.destroyed:
            return
        self.masked.add(kind)
        self.pending_events.append((kind, dw0))
        self.deliver_events()

    def deliver_events(self) -> None:
        while self.aers and self.pending_events:
            req = self.aers.pop(0)
            _, dw0 = self.pending_events.popleft()
            req.qp.complete(req, 0, dw0)

    def unmask(self, kind: str) -> None:
        self.masked.discard(kind)

    def ns_changed(self, nsids: list[int]) -> None:
        for nsid in nsids:
            if nsid not in self.changed_ns:
                if len(self.changed_ns) >= 1024:
                    self.changed_ns_overflow = True
                else:
                    self.changed_ns.append(nsid)
        if self.features[spec.FID_ASYNC_EVENT_CONFIG] & spec.AEC_NS_ATTR:
            self.post_event(
                "ns",
                spec.aen_dw0(spec.AER_TYPE_NOTICE, spec.AER_NOTICE_NS_CHANGED, spec.LID_CHANGED_NS),
            )

    def disc_changed(self) -> None:
        if self.features[spec.FID_ASYNC_EVENT_CONFIG] & spec.AEC_DISC_LOG_CHANGE:
            self.post_event(
                "disc",
                spec.aen_dw0(
                    spec.AER_TYPE_NOTICE, spec.AER_NOTICE_DISC_CHANGED, spec.LID_DISCOVERY
                ),
            )

    def vwc_local(self, vwc: int) -> None:
        """Switch this reactor's I/O queues of the controller (the supervisor
        tells the other reactors)."""
        for qp in self.io_qpairs:
            qp.write_through = not vwc

    # -- error log ----------------------------------------------------------------
    def record_error(
        self,
        qid: int,
        cid: int,
        status: int,
        nsid: int = 0,
        loc: int = 0xFFFF,
        trtype: int | None = None,
    ) -> None:
        """Error log entry; TRTYPE is the transport of the queue it happened
        on (the admin queue's when not given)."""
        self.error_count += 1
        entry = bytearray(64)
        struct.pack_into("<QHHHHQI", entry, 0, self.error_count, qid, cid, status, loc, 0, nsid)
        entry[29] = self.admin_qp.transport.trtype_code if trtype is None else trtype
        self.errors.appendleft(bytes(entry))

    # -- teardown -------------------------------------------------------------------
    def stop(self) -> None:
        self.destroyed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.ana_timer is not None:
            self.ana_timer.cancel()
            self.ana_timer = None
        self.aers.clear()
        self.pending_events.clear()


class NvmfTarget:
    """Everything NVMe-oF on one reactor."""

    def __init__(self, ctx: ReactorContext) -> None:
        self.ctx = ctx
        self.subsystems: dict[str, Subsystem] = {}
        self.has_secure_listeners = False  # a --secure-channel listener exists (TLS)
        self.transport_opts: dict[str, TransportOpts] = {}
        self._applied: dict[str, Any] | None = None
        self.genctr = 0
        self.controllers: dict[tuple[str, int], Controller] = {}
        self.qpairs: set[QueuePair] = set()
        self.stats = {
            "admin_qpairs": 0,
            "io_qpairs": 0,
            "completed_nvme_io": 0,
            # hostile hosts (issue 8)
            "qpair_exceptions": 0,  # handler exceptions contained (connection closed)
            "connect_timeouts": 0,  # no ICReq + Connect in time
            "h2c_timeouts": 0,  # R2T transfers whose data never came
            "refused_connections": 0,  # over max_connections_per_reactor
            "iobuf_waits": 0,  # R2T transfers that queued for pool buffers
            "admin_data_bytes": 0,  # admin payload bytes built
            # transport errors and expiries (issue 13: Prometheus metrics)
            "c2h_term_reqs": 0,  # C2HTermReq sent (fatal errors of the host's stream)
            "h2c_term_reqs": 0,  # H2CTermReq received
            "hdgst_errors": 0,  # header digest mismatches (fatal)
            "ddgst_errors": 0,  # data digest mismatches (the command fails)
            "keep_alive_expiries": 0,  # controllers torn down for a keep-alive timeout
        }
        self.clock: Callable[[], float] = time.monotonic  # tests substitute a fake clock
        self.stopping = False  # reactor shutdown: no messages to the supervisor
        self.apply_config(getattr(ctx, "nvmf_config", None) or {})

    # -- configuration ---------------------------------------------------------
    def on_config(self) -> None:
        """A driver's on_config: apply the reactor's snapshot once, however
        many NVMe-oF transport drivers the reactor has."""
        snap = getattr(self.ctx, "nvmf_config", None) or {}
        if snap is self._applied and snap:
            return
        self.apply_config(snap)

    def apply_config(self, snap: dict[str, Any]) -> None:
        """Install a new snapshot; emit namespace / discovery change events
        and drop associations the new configuration no longer allows."""
        self._applied = snap
        old = self.subsystems
        confs: dict[str, dict[str, Any]] = dict(snap.get("transports") or {})
        topts: dict[str, TransportOpts] = {}
        for tt, c in confs.items():
            try:
                topts[tt] = TransportOpts(c, tt)
            except UnknownTransport as e:  # created in the supervisor, not loadable here
                log.error(
                    "nvmf: reactor %d cannot load transport %s: %s", self.ctx.reactor_id, tt, e
                )
        self.transport_opts = topts
        new = {nqn: Subsystem(d) for nqn, d in (snap.get("subsystems") or {}).items()}
        if DISCOVERY_NQN not in new:
            new[DISCOVERY_NQN] = Subsystem({"nqn": DISCOVERY_NQN, "subtype": "Discovery"})
        disc_changed = int(snap.get("genctr", 0)) != self.genctr
        self.genctr = int(snap.get("genctr", 0))
        self.subsystems = new
        self.has_secure_listeners = any(
            li.get("secure_channel") for ss in new.values() for li in ss.listeners
        )
        for ctrl in list(self.controllers.values()):
            ss = new.get(ctrl.subsys.nqn)
            if ss is None or not ss.host_allowed(ctrl.hostnqn):
                self.destroy_controller(ctrl, "subsystem deleted or host removed")
                continue
            prev = old.get(ss.nqn, ctrl.subsys)
            ctrl.subsys = ss
            if ss.is_discovery:
                if disc_changed:
                    ctrl.disc_changed()
                continue
            changed = [
                nsid
                for nsid in sorted(set(prev.namespaces) | set(ss.namespaces))
                if (prev.namespaces.get(nsid) and prev.namespaces[nsid].ident())
                != (ss.namespaces.get(nsid) and ss.namespaces[nsid].ident())
            ]
            if changed:
                ctrl.ns_changed(changed)
            ana.controller_config(ctrl, prev, self._call_later)
        for qp in list(self.qpairs):
            ss = new.get(qp.subsys.nqn) if qp.subsys is not None else None
            if qp.subsys is None:
                continue
            if (
                ss is None
                or not ss.host_allowed(qp.hostnqn)
                or not ss.listener_allowed(qp.listener)
            ):
                qp.close("no longer allowed by the configuration")
            else:
                qp.subsys = ss

    def _call_later(self, delay: float, cb: Callable[[], None]) -> Timer:
        return self.ctx.loop.call_later(delay, cb)

    def subsystem(self, nqn: str) -> Subsystem | None:
        return self.subsystems.get(nqn)

    def opts_for(self, trtype: str) -> TransportOpts:
        """The options of ``trtype`` (its defaults when it was not created)."""
        o = self.transport_opts.get(trtype)
        if o is None:
            o = self.transport_opts[trtype] = TransportOpts(None, trtype)
        return o

    def configured_transports(self) -> list[str]:
        return sorted(self.transport_opts)

    # -- controllers ----------------------------------------------------------------
    def add_controller(self, ctrl: Controller) -> None:
        self.controllers[ctrl.key] = ctrl
        if TRACE.mask & G_NVMF:
            TRACE.rec(_tr.TP_CTRLR_CREATE, ctrl.cntlid, getattr(ctrl.admin_qp, "tp_id", 0))

    def destroy_controller(self, ctrl: Controller, reason: str, notify: bool = True) -> None:
        """Tear down a controller owned here: its admin queue, its local I/O
        queues; the supervisor frees the cntlid and tells other reactors."""
        if ctrl.destroyed:
            return
        if TRACE.mask & G_NVMF:
            TRACE.rec(_tr.TP_CTRLR_DESTROY, ctrl.cntlid)
        ctrl.stop()
        self.controllers.pop(ctrl.key, None)
        for qp in list(ctrl.io_qpairs):
            qp.close(reason)
        if not ctrl.admin_qp.closed:
            ctrl.admin_qp.close(reason)
        if notify and not self.stopping:
            self.ctx.call(
                "nvmf.ctrlr_gone", {"nqn": ctrl.subsys.nqn, "cntlid": ctrl.cntlid}, _ignore_reply
            )

    def close_ctrlr_queues(self, nqn: str, cntlid: int, io_only: bool) -> int:
        """Event from the supervisor: close what this reactor holds of a controller."""
        n = 0
        for qp in list(self.qpairs):
            if qp.subsys is not None and qp.subsys.nqn == nqn and qp.cntlid == cntlid:
                if qp.qid > 0 or (qp.qid == 0 and not io_only):
                    qp.close("controller destroyed" if not io_only else "controller reset")
                    n += 1
        ctrl = self.controllers.get((nqn, cntlid))
        if ctrl is not None and not io_only:
            self.destroy_controller(ctrl, "controller destroyed", notify=False)
        return n

    def find_local_ctrlr(self, nqn: str, cntlid: int) -> Controller | None:
        return self.controllers.get((nqn, cntlid))

    def qpair_closed(self, qp: QueuePair) -> None:
        self.qpairs.discard(qp)
        if TRACE.mask & G_NVMF:
            TRACE.rec(_tr.TP_QP_DISCONNECT, qp.tp_id, max(qp.qid, 0), qp.cntlid)
        if qp.qid == 0 and qp.ctrl is not None:
            self.destroy_controller(qp.ctrl, "admin queue closed")
        elif qp.qid > 0 and qp.subsys is not None:
            ctrl = self.controllers.get((qp.subsys.nqn, qp.cntlid))
            if ctrl is not None:
                ctrl.io_qpairs.discard(qp)
            if self.stopping:
                return
            self.ctx.call(
                "nvmf.qpair_gone",
                {"nqn": qp.subsys.nqn, "cntlid": qp.cntlid, "qid": qp.qid},
                _ignore_reply,
            )

    # -- queries (driver.on_event) ------------------------------------------------------
    def counters_for(self, nqn: str, cntlid: int) -> dict[str, int]:
        c = Counters()
        for qp in self.qpairs:
            if qp.subsys is not None and qp.subsys.nqn == nqn and qp.cntlid == cntlid:
                for k in Counters.__slots__:
                    setattr(c, k, getattr(c, k) + getattr(qp.counters, k))
        return c.as_dict()

    def get_qpairs(self, nqn: str | None) -> list[dict[str, Any]]:
        return [
            qp.describe()
            for qp in self.qpairs
            if qp.subsys is not None and (nqn is None or qp.subsys.nqn == nqn) and qp.qid >= 0
        ]

    def get_controllers(self, nqn: str | None) -> list[dict[str, Any]]:
        out = []
        for ctrl in self.controllers.values():
            if nqn is None or ctrl.subsys.nqn == nqn:
                out.append(
                    {
                        "cntlid": ctrl.cntlid,
                        "hostnqn": ctrl.hostnqn,
                        "hostid": str(uuid_mod.UUID(bytes=ctrl.hostid)),
                        "num_io_qpairs": len(ctrl.io_qpairs),
                        "subnqn": ctrl.subsys.nqn,
                        "reactor": self.ctx.reactor_id,
                    }
                )
        return out

    def get_stats(self) -> dict[str, Any]:
        return {
            "name": f"nvmf_tgt_poll_group_{self.ctx.reactor_id}",
            "admin_qpairs": self.stats["admin_qpairs"],
            "io_qpairs": self.stats["io_qpairs"],
            "current_admin_qpairs": sum(1 for q in self.qpairs if q.qid == 0),
            "current_io_qpairs": sum(1 for q in self.qpairs if q.qid > 0),
            "pending_bdev_io": 0,
            "completed_nvme_io": self.stats["completed_nvme_io"],
            "qpair_exceptions": self.stats["qpair_exceptions"],
            "connect_timeouts": self.stats["connect_timeouts"],
            "h2c_timeouts": self.stats["h2c_timeouts"],
            "refused_connections": self.stats["refused_connections"],
            "iobuf_waits": self.stats["iobuf_waits"],
            # blockfabric extension (issue 13): errors and expiries
            **{
                k: self.stats[k]
                for k in (
                    "c2h_term_reqs",
                    "h2c_term_reqs",
                    "hdgst_errors",
                    "ddgst_errors",
                    "keep_alive_expiries",
                )
            },
            "transports": [
                ops.poll_group_stats(self)
                for ops in map(find_transport, self.configured_transports())
                if ops is not None
            ],
        }

    def set_write_through(self, nqn: str, cntlid: int, on: bool) -> int:
        """Volatile Write Cache changed on a controller: switch its I/O queues here."""
        n = 0
        for qp in self.qpairs:
            if qp.qid > 0 and qp.subsys is not None and qp.subsys.nqn == nqn:
                if qp.cntlid == cntlid:
                    qp.write_through = on
                    n += 1
        return n

    def on_event(self, op: str, args: dict[str, Any]) -> Any:
        """The supervisor's "nvmf.*" broadcasts and queries (any transport's
        driver forwards them here; the answer covers every transport):

        * "nvmf.destroy_ctrlr" {nqn, cntlid, io_only}  -> number of queues closed
        * "nvmf.disconnect_host" {nqn, hostnqn}        -> number of controllers closed
        * "nvmf.get_qpairs" {nqn?}                      -> [qpair description]
        * "nvmf.get_controllers" {nqn?}                 -> [controller description]
        * "nvmf.stats" {}                               -> poll group statistics
        * "nvmf.counters" {nqn, cntlid}                 -> {read_bytes, write_bytes, ...}
        * "nvmf.set_vwc" {nqn, cntlid, vwc}             -> number of I/O queues switched
        * "nvmf.bdev_resized" {name}                    -> controllers sent the ns-changed AEN
        """
        nqn = args.get("nqn")
        if op.startswith("nvmf.resv_") or op == "nvmf.set_hostid":
            return reservation_io.on_event(self, op, args)
        if op == "nvmf.destroy_ctrlr":
            return self.close_ctrlr_queues(str(nqn), int(args["cntlid"]), bool(args.get("io_only")))
        if op == "nvmf.disconnect_host":
            n = 0
            for ctrl in list(self.controllers.values()):
                if ctrl.subsys.nqn == nqn and ctrl.hostnqn == args.get("hostnqn"):
                    self.destroy_controller(ctrl, "host removed")
                    n += 1
            return n
        if op == "nvmf.get_qpairs":
            return self.get_qpairs(nqn)
        if op == "nvmf.get_controllers":
            return self.get_controllers(nqn)
        if op == "nvmf.stats":
            return self.get_stats()
        if op == "nvmf.counters":
            return self.counters_for(str(nqn), int(args["cntlid"]))
        if op == "nvmf.set_vwc":
            return self.set_write_through(str(nqn), int(args["cntlid"]), not int(args["vwc"]))
        if op == "nvmf.bdev_resized":  # {name}: namespace attribute changed AEN to its hosts
            n = 0
            for ctrl in list(self.controllers.values()):
                nsids = [
                    ns.nsid
                    for ns in ctrl.subsys.namespaces.values()
                    if ns.bdev_name == args.get("name")
                ]
                if nsids:
                    ctrl.ns_changed(nsids)
                    n += 1
            return n
        log.debug("nvmf: unknown event %s", op)
        return None

    def shutdown(self) -> None:
        self.stopping = True
        for ctrl in list(self.controllers.values()):
            self.destroy_controller(ctrl, "shutdown", notify=False)
        for qp in list(self.qpairs):
            qp.close("shutdown")


_TARGETS: dict[int, NvmfTarget] = {}


def target_for(ctx: ReactorContext) -> NvmfTarget:
    """The reactor's NVMe-oF target (created on first use), shared by every
    transport driver of the reactor."""
    t = _TARGETS.get(id(ctx))
    if t is None or t.ctx is not ctx:
        t = NvmfTarget(ctx)
        _TARGETS[id(ctx)] = t
    return t


def drop_target(ctx: ReactorContext) -> NvmfTarget | None:
    """Forget the reactor's target (reactor shutdown); returns it, once."""
    return _TARGETS.pop(id(ctx), None)


def _ignore_reply(ok: bool, result: Any) -> None:
    if not ok:
        log.debug("nvmf: supervisor call failed: %s", result)


ReplyCb = Callable[[bool, Any], None]
