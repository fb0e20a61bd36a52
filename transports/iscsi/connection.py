"""One iSCSI connection, sans-I/O: PDUs in (`receive`), encoded PDUs out
through the ``send`` callback. Login is delegated to `login.Login`; after it
this class runs the full feature phase (RFC 7143 sections 3-4, 11):

* CmdSN ordering through the session; StatSN per connection.
* SCSI commands: immediate data, unsolicited Data-Out within FirstBurstLength,
  R2Ts (MaxOutstandingR2T, MaxBurstLength), Data-Out checks (TTT, DataSN,
  BufferOffset, F bit), Data-In split at the initiator's
  MaxRecvDataSegmentLength with status collapsed into the last Data-In when
  there is no sense data, residual over/underflow against EDTL.
* NOP-Out/NOP-In (and target pings via `idle_check`), Task Management, Text
  (SendTargets, FFP negotiation), Logout, Reject for bad PDUs. ERL 0 only:
  sequence errors fail the connection.

Bounds against hostile hosts (issue 8):

* the CmdSN window: MaxCmdSN moves when commands finish (session.py);
  immediate SCSI commands count too (TASK SET FULL beyond queue_depth);
* write data lands in pool buffers (xfer.py), region by region, never the
  whole EDTL; WRITEs are written chunk by chunk as their data arrives; at
  most max_r2t_per_connection commands hold burst buffers, staged READs
  share STAGED_READ_BUDGET; a command that finds the pool empty waits
  (FIFO) and, if its data is already arriving, stops the input;
* task management answers once the affected tasks really finished;
* an exception closes only this connection (`crash`), counted and logged
  through HostLog like every host-caused error.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ...bdevs.base import IoStatus
from ...control.hostlog import HostLog
from ..scsi.cdb import parse_rw
from . import pdu as P
from . import text
from .discovery import send_targets
from .login import Login, LoginOutcome, session_queue_depth
from .nodes import ConfigView
from .params import STAGE_FULL_FEATURE, ConnParams, NegotiationError, Negotiator
from .session import Session, SessionRegistry, sn_le, sn_lt
from .xfer import CHUNK, STREAM_OPS, HeapBufs, Region, iov_get, iov_put

log = logging.getLogger(__name__)

MAX_EDTL = 64 * 1024 * 1024  # biggest write buffer one command may ask for
STAGED_READ_BUDGET = 8 * 1024 * 1024  # pool bytes of staged READs per connection
LOGIN_READER_SIZE = 0  # receive buffer before login: two maximal login PDUs
FFP_READER_SIZE = 256 * 1024  # receive buffer in full feature phase
_READ_OPS = frozenset({0x08, 0x28, 0xA8, 0x88})

# TMF functions and responses (RFC 7143 11.5, 11.6)
TMF_ABORT_TASK = 1
TMF_ABORT_TASK_SET = 2
TMF_CLEAR_ACA = 3
TMF_CLEAR_TASK_SET = 4
TMF_LUN_RESET = 5
TMF_TARGET_WARM_RESET = 6
TMF_TARGET_COLD_RESET = 7
TMF_TASK_REASSIGN = 8
TMF_RSP_COMPLETE = 0
TMF_RSP_NO_TASK = 1
TMF_RSP_NO_LUN = 2
TMF_RSP_NOT_SUPPORTED = 5

# SCSI status / sense for errors we raise ourselves
CHECK_CONDITION = 0x02
TASK_SET_FULL = 0x28
_SENSE_INVALID_FIELD_CDB = bytes(
    [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0, 0, 0]
)


_SENSE_LUN_GONE = bytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x25, 0x00, 0, 0, 0, 0])
_SENSE_HW_ERROR = bytes([0x70, 0, 0x04, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x44, 0x00, 0, 0, 0, 0])
# READ(10) / READ(16) CDB fields from byte 1: flags, LBA, transfer length
_R10 = struct.Struct(">BIxH")
_R16 = struct.Struct(">BQI")
# a Data-In BHS (same layout as pdu._HDR), packed in one call on the hot path
_DATA_IN_HDR = struct.Struct(">4BIQ8I")


class DeviceLike(Protocol):
    def execute(self, task: Any, done: Callable[[Any], None]) -> None: ...

    def fast_lun(self, lun: int, nexus: Any) -> Any:
        """The LUN object when a plain READ may bypass the SCSI core, else None."""
        ...

    def target_reset(self, on_done: Callable[[], None] | None = None) -> None: ...


class ConnEnv(Protocol):
    """What a connection needs from the reactor glue (the driver)."""

    view: ConfigView
    sessions: SessionRegistry

    def device(self, target_name: str) -> DeviceLike | None: ...

    def make_task(self, **kw: Any) -> Any: ...


class R2T:
    __slots__ = ("ttt", "offset", "length", "received", "datasn", "r2tsn")

    def __init__(self, ttt: int, offset: int, length: int, r2tsn: int) -> None:
        self.ttt = ttt
        self.offset = offset
        self.length = length
        self.received = 0
        self.datasn = 0
        self.r2tsn = r2tsn


class Task:
    __slots__ = (
        "itt",
        "lun",
        "lun_field",
        "cdb",
        "edtl",
        "direction",
        "buf",
        "received",
        "next_r2t_offset",
        "r2ts",
        "r2tsn",
        "unsol_open",
        "unsol_datasn",
        "unsol_limit",
        "scsi",
        "dead",
        "exp_datasn",
        "conn",
        "slot",
        "stream",
        "bs",
        "region",
        "regions",
        "wait",
        "carry",
        "submitted",
        "subs",
        "pieces",
        "fail",
        "result",
        "io",
        "waiters",
        "last_rx",
        "imm_pdu",
        "r2t_slot",
        "r2t_queued",
        "staged",
    )

    def __init__(self, itt: int, lun_field: int, cdb: bytes, edtl: int, direction: str) -> None:
        self.itt = itt
        self.lun_field = lun_field
        self.lun = P.lun_to_int(lun_field)
        self.cdb = cdb
        self.edtl = edtl
        self.direction = direction
        self.buf: bytearray | None = None
        self.received = 0
        self.next_r2t_offset = 0
        self.r2ts: dict[int, R2T] = {}
        self.r2tsn = 0
        self.unsol_open = False
        self.unsol_datasn = 0
        self.unsol_limit = 0
        self.scsi: Any = None
        self.dead = False
        self.exp_datasn = 0
        self.conn: Connection | None = None
        # the command-window slot this task holds: 0 none, 1 CmdSN, 2 immediate
        self.slot = 0
        # write data (xfer.py): the region receiving now, every region still
        # holding pool buffers, a pending pool request
        self.stream = False  # written to the bdev piece by piece
        self.bs = 0
        self.region: Region | None = None
        self.regions: list[Region] = []
        self.wait: Any = None
        self.carry = b""  # partial block at the end of the previous region
        self.submitted = 0  # transfer bytes handed to the SCSI core (streamed)
        self.subs = 0  # SCSI pieces in flight
        self.pieces = 0  # SCSI pieces issued
        self.fail: Any = None  # the first piece that did not end GOOD
        self.result: Any = None  # the last piece (its transfer_length)
        self.io = 0  # SCSI executions / bdev reads in flight for this task
        self.waiters: list[Callable[[], None]] = []  # run when io drops to 0
        self.last_rx = 0.0  # last data progress (R2T / Data-Out timeout)
        self.imm_pdu: P.Pdu | None = None
        self.r2t_slot = False  # one of the connection's max_r2t_per_connection
        self.r2t_queued = False
        self.staged = 0  # pool bytes its READ stages (bdevs that copy)


class Connection:
    def __init__(
        self,
        env: ConnEnv,
        listener: str,
        peer_addr: str,
        local_addr: str,
        send: Callable[[list[P.Buffer]], None],
        on_close: Callable[[str], None],
    ) -> None:
        self.env = env
        self.listener = listener
        self.peer_addr = peer_addr
        self.local_addr = local_addr
        self._send = send
        self._on_close = on_close
        # small while logging in (a login PDU carries at most 8 KiB of text):
        # a host that never completes its login holds ~20 KiB, not 256 KiB
        self.reader = P.PduReader(8192, min_size=LOGIN_READER_SIZE)
        self.login: Login | None = Login(env.view, env.sessions, listener, peer_addr)
        self.state = "login"
        self.session: Session | None = None
        self.cid = 0
        self.statsn = 0
        self.cp = ConnParams()
        self.outcome: LoginOutcome | None = None
        self._ttt = 0
        self._ttt_map: dict[int, Task] = {}
        # TTTs of tasks terminated mid-burst: their late Data-Out is dropped quietly
        self._dead_ttts: deque[int] = deque(maxlen=64)
        # fast READ path: ITT whose bdev completion is being awaited inline
        self._fast_itt = -1
        self._fast_box: list[Any] = []
        self.tasks: dict[int, Task] = {}
        self._text_pending: bytearray = bytearray()
        self._text_rest: bytes = b""
        self._text_ttt = P.RSVD_TAG
        self._ping_ttt = P.RSVD_TAG
        self.ping_sent_at: float | None = None
        self.last_rx = 0.0
        self.close_reason = ""
        self.stats = {"pdus_in": 0, "pdus_out": 0, "rejects": 0, "errors": 0}
        self.now: Callable[[], float] = time.monotonic
        # transfer buffers: the reactor's share of the shared pool
        self.iobufs: Any = getattr(env, "iobufs", None) or HeapBufs()
        # input flow control: a command waiting for pool buffers stops the
        # reading of further PDUs (they wait here, as copies, in order)
        self._stalled_by: Task | None = None
        self._backlog: deque[P.Pdu | P.PduError] = deque()
        self.on_flow: Callable[[], None] | None = None  # the driver re-arms reading
        # commands in their R2T phase (holding or awaiting pool buffers for
        # solicited data): at most max_r2t_per_connection, the others wait
        # here without asking the pool, so one connection cannot take it all
        self._r2t_limit = max(1, int(env.view.options.get("max_r2t_per_connection", 4) or 4))
        self._r2t_busy = 0
        self._r2t_waiting: deque[Task] = deque()
        # READs of bdevs that copy (aio, nvme) stage their data in pool
        # buffers: at most STAGED_READ_BUDGET bytes of them run at once per
        # connection (a bigger one runs alone), the others wait here
        self._staged_bytes = 0
        self._staged_waiting: deque[Task] = deque()
        # the driver calls cb once everything sent so far left the socket
        self.after_sent: Callable[[Callable[[], None]], None] = _call_now
        self.hostlog = HostLog(log, f"iscsi {peer_addr}")

    # ------------------------------------------------------------------ io
    def send(self, bufs: list[P.Buffer]) -> None:
        if self.state != "closed":
            self.stats["pdus_out"] += 1
            self._send(bufs)

    def close(self, reason: str) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        self.close_reason = reason
        for t in list(self.tasks.values()):
            self._drop_task(t, abort=True)
        s = self.session
        if s is not None:
            if self in s.connections:
                s.connections.remove(self)
            if not s.connections:
                s.closed = True
                self.env.sessions.remove(s)
                self._nexus_lost(s)
        # what a dead connection no longer needs goes at once, not when the
        # cyclic garbage collector finds it (a login flood makes thousands)
        self.reader.release()
        self.login = None
        self._backlog.clear()
        self._text_pending = bytearray()
        self._text_rest = b""
        self._on_close(reason)

    def _nexus_lost(self, s: Session) -> None:
        dev = self.env.device(s.target_name) if s.target else None
        fn = getattr(dev, "nexus_lost", None)
        if fn is not None:
            try:
                fn(s.initiator_port, s.target_port)
            except Exception:  # best effort: the device keeps its state
                log.exception("nexus_lost failed")

    def feed(self, data: P.Buffer) -> None:
        """Convenience for tests and handoff: frame bytes and process them."""
        self.receive(self.reader.feed_bytes(data))

    def pdu_error(self, e: P.PduError) -> None:
        self.hostlog.event(logging.INFO, "%s", e)
        if self.state == "ffp":
            self._reject(e.bhs or bytes(P.BHS_LEN), e.reason)
        if e.fatal or self.state != "ffp":
            self.close(str(e))

    def receive(self, pdus: list[P.Pdu | P.PduError]) -> None:
        for i, pdu in enumerate(pdus):
            if self.state == "closed":
                return
            if self._stalled_by is not None:
                # waiting for pool buffers: keep the rest, in order, as copies
                # (the driver reads no more until the stall ends)
                for p in pdus[i:]:
                    self._backlog.append(_copy(p))
                return
            self._one(pdu)

    def _one(self, pdu: P.Pdu | P.PduError) -> None:
        try:
            if isinstance(pdu, P.PduError):
                self.pdu_error(pdu)
                return
            self.stats["pdus_in"] += 1
            if self.state == "login":
                self._login_pdu(pdu)
            elif self.state == "ffp":
                self._ffp_pdu(pdu)
            # "logout": a logout response went out; the rest is ignored
        except Exception:
            self.crash("a PDU")

    @property
    def input_stalled(self) -> bool:
        return self._stalled_by is not None

    def _stall(self, t: Task) -> None:
        self._stalled_by = t

    def _unstall(self, t: Task) -> None:
        if self._stalled_by is not t:
            return
        self._stalled_by = None
        while self._backlog and self._stalled_by is None and self.state != "closed":
            self._one(self._backlog.popleft())
        if self._stalled_by is None and self.on_flow is not None:
            self.on_flow()

    # ----------------------------------------------------------- containment
    def crash(self, what: str) -> None:
        """An unexpected exception while handling this connection's ``what``:
        log the traceback (rate-limited), count it, close only this
        connection; its tasks and buffers are freed by close()."""
        self.stats["errors"] += 1
        counter = getattr(self.env, "stats", None)
        if isinstance(counter, dict):
            counter["exceptions"] = counter.get("exceptions", 0) + 1
        self.hostlog.event(logging.ERROR, "internal error handling %s", what, exc_info=True)
        if self.state == "closed":
            return
        try:
            self.close("internal error")
        except Exception:
            self.state = "closed"
            self.hostlog.event(logging.ERROR, "internal error closing", exc_info=True)

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        """Run a completion (bdev/SCSI callback, pool grant) contained."""
        try:
            fn(*args)
        except Exception:
            self.crash("a completion")

    def check_timeouts(self, now: float, r2t_timeout: float) -> None:
        """A write whose data stopped coming (R2T outstanding, or unsolicited
        data announced) for ``r2t_timeout`` seconds fails and closes the
        connection (ERL 0 has no recovery)."""
        if self.state != "ffp" or r2t_timeout <= 0:
            return
        for t in list(self.tasks.values()):
            if (t.r2ts or t.unsol_open) and now - t.last_rx > r2t_timeout:
                self.hostlog.event(
                    logging.WARNING, "no Data-Out for ITT %#x in %.0f s", t.itt, now - t.last_rx
                )
                self.stats["r2t_timeouts"] = self.stats.get("r2t_timeouts", 0) + 1
                self.close("Data-Out timeout")
                return

    # --------------------------------------------------------------- login
    def _login_pdu(self, pdu: P.Pdu) -> None:
        assert self.login is not None
        out = self.login.on_pdu(pdu)
        if self.login.failed:
            self.send(out)
            self.close("login failed: " + getattr(self.login, "error", ""))
            return
        oc = self.login.outcome
        if oc is None:
            self.send(out)
            return
        self.outcome = oc
        self.cid = oc.cid
        self.statsn = oc.statsn
        self.cp = oc.negotiator.conn_params()
        if oc.reinstate is not None:
            old = oc.reinstate
            assert isinstance(old, Session)
            old.close()
            self.env.sessions.remove(old)
        if oc.join is not None:
            sess = oc.join
            assert isinstance(sess, Session)
            for c in list(sess.connections):
                if c.cid == oc.cid:  # connection reinstatement at ERL 0: drop the old one
                    c.close("connection reinstated")
        else:
            qd = session_queue_depth(self.env.view, oc.target)
            sess = Session(
                oc.tsih,
                oc.isid,
                oc.initiator_name,
                oc.target,
                oc.negotiator.session_params(),
                oc.cmdsn,
                oc.pg_tag or 0,
                qd,
            )
            self.env.sessions.add(sess)
        sess.connections.append(self)
        self.session = sess
        self.login = None
        self.state = "ffp"
        self.send(out)
        # digests and the receive limit apply from the first FFP PDU; the
        # full-size receive buffer only now
        self.reader.grow_to(FFP_READER_SIZE)
        self.reader.set_limits(self.cp.max_recv_dlen, self.cp.header_digest, self.cp.data_digest)

    # ----------------------------------------------------------------- ffp
    def _seq(self) -> tuple[int, int]:
        s = self.session
        assert s is not None
        return s.exp_cmdsn, s.max_cmdsn

    def _status_words(self, advance: bool = True) -> tuple[int, int, int]:
        sn = self.statsn
        if advance:
            self.statsn = (sn + 1) & 0xFFFFFFFF
        exp, mx = self._seq()
        return sn, exp, mx

    def _encode(
        self,
        opcode: int,
        f1: int,
        b2: int,
        b3: int,
        lun: int,
        itt: int,
        w: tuple[int, ...],
        data: Any = (),
    ) -> list[P.Buffer]:
        cp = self.cp
        return P.encode(opcode, f1, b2, b3, lun, itt, w, data, cp.header_digest, cp.data_digest)

    def _reject(self, bhs: P.Buffer, reason: int) -> None:
        self.stats["rejects"] += 1
        sn, exp, mx = self._status_words()
        self.send(
            self._encode(
                P.OP_REJECT,
                0x80,
                reason,
                0,
                0,
                P.RSVD_TAG,
                (P.RSVD_TAG, sn, exp, mx, 0, 0, 0),
                bytes(bhs[:48]),
            )
        )

    def _ffp_pdu(self, pdu: P.Pdu) -> None:
        op = pdu.opcode
        s = self.session
        assert s is not None
        if op == P.OP_SCSI_CMD and not s.discovery and not pdu.immediate:
            # hot path: the next command in CmdSN order with nothing queued
            # ahead is what Session.order would deliver at once (no closures)
            sn = pdu.w24
            if sn == s.exp_cmdsn and not s._ahead and s._max_cmdsn != (sn - 1) & 0xFFFFFFFF:
                s.exp_cmdsn = (sn + 1) & 0xFFFFFFFF
                s.outstanding += 1
                if not s._aborted_sns or not s._skip(sn):
                    self._scsi_cmd(pdu)
                else:
                    s.done(False)
                return
        if op == P.OP_DATA_OUT:
            self._data_out(pdu)
            return
        if op == P.OP_SNACK:
            # ERL 0: no recovery by SNACK
            self._reject(pdu.bhs, P.REJ_PROTOCOL)
            return
        if op == P.OP_LOGIN_REQ:
            self._reject(pdu.bhs, P.REJ_PROTOCOL)
            return
        if s.discovery and op in (P.OP_SCSI_CMD, P.OP_TMF_REQ):
            self._reject(pdu.bhs, P.REJ_PROTOCOL)
            return
        handler = self._handlers.get(op)
        if handler is None:
            self._reject(pdu.bhs, P.REJ_NOT_SUPPORTED)
            return
        if op == P.OP_NOP_OUT and pdu.itt == P.RSVD_TAG:
            # a NOP-Out answering our ping (or a no-reply ping): no CmdSN use
            handler(self, pdu)
            return

        def keep() -> Callable[[], None]:
            copy = P.Pdu(bytes(pdu.bhs), bytes(pdu.ahs), bytes(pdu.data))
            return lambda: self._deliver(handler, copy)

        if not s.order(pdu.cmdsn, pdu.immediate, lambda: self._deliver(handler, pdu), keep):
            self.hostlog.event(
                logging.INFO,
                "CmdSN %d outside [%d, %d], dropped",
                pdu.cmdsn,
                s.exp_cmdsn,
                s.max_cmdsn,
            )

    def _deliver(self, handler: Callable[[Connection, P.Pdu], None], pdu: P.Pdu) -> None:
        """Run a command in CmdSN order. A SCSI command owns its window slot
        (released when its task ends); any other command is done on return."""
        s = self.session
        assert s is not None
        if pdu.opcode == P.OP_SCSI_CMD and self.state == "ffp":
            handler(self, pdu)
            return
        try:
            if self.state == "ffp":
                handler(self, pdu)
        finally:
            if not pdu.immediate:
                s.done(False)

    # ----------------------------------------------------------------- NOP
    def _nop_out(self, pdu: P.Pdu) -> None:
        if pdu.itt == P.RSVD_TAG:
            if pdu.ttt != P.RSVD_TAG and pdu.ttt == self._ping_ttt:
                self.ping_sent_at = None
                self._ping_ttt = P.RSVD_TAG
            return
        if pdu.ttt != P.RSVD_TAG:
            self._reject(pdu.bhs, P.REJ_INVALID_FIELD)
            return
        sn, exp, mx = self._status_words()
        data = bytes(pdu.data[: self.cp.max_xmit_dlen])
        self.send(
            self._encode(
                P.OP_NOP_IN, 0x80, 0, 0, pdu.lun, pdu.itt, (P.RSVD_TAG, sn, exp, mx, 0, 0, 0), data
            )
        )

    def idle_check(self, now: float, interval: float, timeout: float) -> bool:
        """Target-initiated NOP-In keepalive. Returns False (and closes) when a
        ping stayed unanswered for ``timeout`` seconds."""
        if self.state != "ffp":
            return True
        if self.ping_sent_at is not None:
            if now - self.ping_sent_at >= timeout and self.last_rx <= self.ping_sent_at:
                self.close("NOP-In ping timed out")
                return False
            if self.last_rx > self.ping_sent_at:
                self.ping_sent_at = None
            return True
        if now - self.last_rx >= interval:
            self._ping_ttt = self._new_ttt()
            self.ping_sent_at = now
            sn, exp, mx = self._status_words(advance=False)
            self.send(
                self._encode(
                    P.OP_NOP_IN, 0x80, 0, 0, 0, P.RSVD_TAG, (self._ping_ttt, sn, exp, mx, 0, 0, 0)
                )
            )
        return True

    def _new_ttt(self) -> int:
        self._ttt = (self._ttt + 1) & 0x7FFFFFFF or 1
        return self._ttt

    # ---------------------------------------------------------- SCSI command
    def _scsi_cmd(self, pdu: P.Pdu) -> None:
        s = self.session
        assert s is not None
        imm = pdu.immediate
        if imm and not s.take_immediate():
            # the session already runs queue_depth commands: an immediate one
            # counts against the same bound (SAM-5 TASK SET FULL)
            self._respond_status(pdu.itt, TASK_SET_FULL, pdu.edtl)
            return
        slot = 2 if imm else 1
        try:
            if self._scsi_cmd_slot(pdu, slot):
                return  # a task owns the slot now
        except BaseException:
            s.done(imm)
            raise
        s.done(imm)

    def _scsi_cmd_slot(self, pdu: P.Pdu, slot: int) -> bool:
        """Start a SCSI command; True when a task took over the window slot."""
        s = self.session
        assert s is not None
        itt = pdu.itt
        if itt in s.tasks:
            self._reject(pdu.bhs, P.REJ_TASK_IN_PROGRESS)
            return False
        f1 = pdu.f1
        if f1 & 0xE0 == 0xC0 and not pdu.dlen and not pdu.ahs_len:
            op = pdu.bhs[32]
            if (op == 0x28 or op == 0x88) and self._fast_read(pdu, op, s, slot):
                return True
        rd = bool(f1 & P.F_READ)
        wr = bool(f1 & P.F_WRITE)
        edtl = pdu.edtl
        direction = "write" if wr else ("read" if rd else "none")
        t = Task(itt, pdu.lun, pdu.cdb, edtl, direction)
        t.conn = self
        imm = pdu.data
        sp = s.params
        if len(imm) and (
            not wr or not sp.immediate_data or len(imm) > min(edtl, sp.first_burst_length)
        ):
            self._reject(pdu.bhs, P.REJ_PROTOCOL)
            return False
        if not pdu.final and (not wr or sp.initial_r2t):
            # unsolicited Data-Out announced where none is allowed
            self._reject(pdu.bhs, P.REJ_PROTOCOL)
            return False
        if rd and wr:
            self._respond_error(t, _SENSE_INVALID_FIELD_CDB)
            return False
        t.slot = slot
        s.tasks[itt] = t
        self.tasks[itt] = t
        if not wr or edtl == 0:
            if rd and self._staged_read_waits(t):
                return True
            self._execute(t)
            return True
        if edtl > MAX_EDTL:
            self._drop_task(t)
            self._respond_error(t, _SENSE_INVALID_FIELD_CDB)
            return True
        t.last_rx = self.now()
        bs = _block_size(self.env.device(s.target_name), t.lun)
        first = len(imm) if pdu.final else min(edtl, sp.first_burst_length)
        streamable = bool(bs and t.cdb and t.cdb[0] in STREAM_OPS)
        if edtl > CHUNK and not streamable:
            # the SCSI core needs this command's data in one piece, and
            # no parameter list or CAW buffer is this long
            self._drop_task(t)
            self._respond_error(t, _SENSE_INVALID_FIELD_CDB)
            return True
        if streamable and (edtl > CHUNK or edtl > first):
            # WRITEs whose data does not all come unsolicited go piece by
            # piece: only the first burst is held before the R2T phase
            # (which max_r2t_per_connection bounds)
            t.stream = True
            t.bs = bs
        if not pdu.final:
            t.unsol_open = True
            t.unsol_limit = first
        if first:
            # immediate / unsolicited data comes without asking: its buffer
            # first (the input stalls while the pool has none)
            size = edtl if not t.stream else first
            t.imm_pdu = pdu
            t.wait = self.iobufs.acquire(size, lambda iov, _t=t: self._got_first(_t, iov))
            if t.wait is not None:
                t.imm_pdu = P.Pdu(bytes(pdu.bhs), bytes(pdu.ahs), bytes(pdu.data))
                self._stall(t)
            return True
        self._advance_write(t)
        return True

    def _fast_read(self, pdu: P.Pdu, op: int, s: Session, slot: int) -> bool:
        """READ(10)/READ(16) straight to the bdev channel, skipping the SCSI
        core's generic dispatch, when `ScsiDevice.fast_lun` says no unit
        attention, reservation or removal applies and the CDB is plain (no
        RDPROTECT, in range, EDTL equal to the transfer). Anything unusual
        returns False and takes the generic path, which produces the right
        sense data."""
        dev = self.env.device(s.target_name)
        if dev is None:
            return False
        fast_lun = getattr(dev, "fast_lun", None)
        lun_field = pdu.lun
        top = lun_field >> 48
        if fast_lun is None or top >> 8 or lun_field & 0xFFFFFFFFFFFF:
            return False
        lun = fast_lun(top, s.nexus)
        if lun is None:
            return False
        if op == 0x28:
            flags, lba, n = _R10.unpack_from(pdu.bhs, 33)
        else:
            flags, lba, n = _R16.unpack_from(pdu.bhs, 33)
        bdev = lun.bdev
        edtl = pdu.w20
        if flags & 0xE0 or not n or lba + n > bdev.num_blocks or n * bdev.block_size != edtl:
            return False
        if n > lun.max_transfer_blocks or lun.stage_reads:
            return False  # the SCSI core refuses it / stages it in pool buffers
        ch = lun.channel_getter()
        if ch is None:
            return False
        itt = pdu.itt
        box = self._fast_box
        box.clear()
        self._fast_itt = itt
        later: list[Task] = []

        def done(st: Any, data: Any, _itt: int = itt, _lun: int = lun_field) -> None:
            if self._fast_itt == _itt:
                box.append(st)
                box.append(data)
            elif later:
                self._guard(self._fast_read_async_done, later[0], _lun, st, data)

        ch.read(lba, n, done)
        self._fast_itt = -1
        if box:
            s.done(slot == 2)  # before the response, so its MaxCmdSN is current
            self._fast_read_done(itt, lun_field, edtl, box[0], box[1])
            return True
        # the bdev completes later: track the command like any other task
        # (task management waits for it: t.io)
        t = Task(itt, lun_field, b"", edtl, "read")
        t.conn = self
        t.slot = slot
        t.io = 1
        later.append(t)
        s.tasks[itt] = t
        self.tasks[itt] = t
        return True

    def _fast_read_async_done(self, t: Task, lun_field: int, st: Any, data: Any) -> None:
        self._io_done(t)
        if t.dead or self.state == "closed":
            return
        self._drop_task(t)
        self._fast_read_done(t.itt, lun_field, t.edtl, st, data)

    def _fast_read_done(self, itt: int, lun_field: int, edtl: int, st: Any, data: Any) -> None:
        if st or data is None or len(data) != edtl:
            # an I/O error: let the SCSI core map it onto sense data
            t = Task(itt, lun_field, b"", edtl, "read")
            from ..scsi.lun import ScsiLun

            sess = self.session
            assert sess is not None
            dev = self.env.device(sess.target_name)
            lun = dev.fast_lun(t.lun, sess.nexus) if dev is not None else None
            st_task = self.env.make_task(lun=t.lun, tag=itt, direction="read")
            if isinstance(lun, ScsiLun):
                lun.io_error(st_task, IoStatus(int(st) or IoStatus.FAILED), read=True)
            else:
                st_task.check_condition(_SENSE_HW_ERROR)
            self._complete(t, st_task)
            return
        cp = self.cp
        sn = self.statsn
        self.statsn = (sn + 1) & 0xFFFFFFFF
        s = self.session
        assert s is not None
        exp = s.exp_cmdsn
        mx = s.max_cmdsn
        if (
            edtl <= cp.max_xmit_dlen
            and edtl <= s.params.max_burst_length
            and not edtl & 3
            and not cp.header_digest
            and not cp.data_digest
        ):
            # the common case: one Data-In, status collapsed into it
            self.stats["pdus_out"] += 1
            if self.state != "closed":
                self._send(
                    [
                        _DATA_IN_HDR.pack(
                            P.OP_DATA_IN,
                            P.F_FINAL | P.F_STATUS,
                            0,
                            0,
                            edtl,
                            lun_field,
                            itt,
                            P.RSVD_TAG,
                            sn,
                            exp,
                            mx,
                            0,
                            0,
                            0,
                        ),
                        data,
                    ]
                )
            return
        self.statsn = sn  # _send_data_in takes the StatSN itself
        self._send_data_in(itt, lun_field, [data], edtl, 0, 0, 0, collapse=True)

    # ------------------------------------------------------ write data
    def _got_first(self, t: Task, iov: Any) -> None:
        """The buffer for the immediate + unsolicited data is there."""
        t.wait = None
        pdu, t.imm_pdu = t.imm_pdu, None
        if t.dead or self.state == "closed" or pdu is None:
            self.iobufs.release(iov)
            self._unstall(t)
            return
        end = t.edtl if not t.stream else t.unsol_limit or len(pdu.data)
        reg = Region(iov, 0, end)
        t.regions.append(reg)
        t.region = reg
        imm = pdu.data
        if len(imm):
            iov_put(iov.views, 0, imm)
        t.received = len(imm)
        t.next_r2t_offset = t.received
        try:
            if t.stream:
                self._pieces(t, t.received)
            if not t.unsol_open:
                t.next_r2t_offset = t.received
                self._region_done(t)
            self._advance_write(t)
        finally:
            # the PDUs that came after this command run now, in order
            self._unstall(t)

    def _advance_write(self, t: Task) -> None:
        """Issue R2Ts for the data still missing, or execute when complete."""
        if t.dead or t.wait is not None or t.unsol_open:
            return
        if t.next_r2t_offset >= t.edtl and not t.r2ts:
            if t.stream:
                self._stream_end(t)
            else:
                self._execute(t)
            return
        s = self.session
        assert s is not None
        sp = s.params
        if t.stream:
            # one R2T sequence at a time; at most one more region still
            # being written while the next one is received
            if t.r2ts or t.region is not None or len(t.regions) > 1:
                return
            if not self._r2t_slot(t):
                return
            off = t.next_r2t_offset
            n = min(sp.max_burst_length, t.edtl - off)
            base = off - len(t.carry)
            t.wait = self.iobufs.acquire(
                off + n - base, lambda iov, _t=t, o=off, k=n: self._got_region(_t, iov, o, k)
            )
            return
        if not t.regions:
            # one region for the whole (<= CHUNK) transfer, then the R2Ts
            if not self._r2t_slot(t):
                return
            t.wait = self.iobufs.acquire(t.edtl, lambda iov, _t=t: self._got_whole(_t, iov))
            return
        while len(t.r2ts) < sp.max_outstanding_r2t and t.next_r2t_offset < t.edtl:
            off = t.next_r2t_offset
            n = min(sp.max_burst_length, t.edtl - off)
            self._send_r2t(t, off, n)

    def _staged_read_waits(self, t: Task) -> bool:
        """True when this READ must wait for the connection's staging budget."""
        if not t.cdb or t.cdb[0] not in _READ_OPS:
            return False
        s = self.session
        assert s is not None
        lun = _get_lun(self.env.device(s.target_name), t.lun)
        if not getattr(lun, "stage_reads", False):
            return False
        try:
            n = parse_rw(t.cdb).nblocks * lun.bdev.block_size
        except Exception:
            return False  # the SCSI core answers the bad CDB
        if self._staged_bytes and self._staged_bytes + n > STAGED_READ_BUDGET:
            t.staged = n  # waiting (positive)
            self._staged_waiting.append(t)
            return True
        self._staged_bytes += n
        t.staged = -n  # running (negative: counted in _staged_bytes)
        return False

    def _staged_done(self, t: Task) -> None:
        if t.staged < 0:
            self._staged_bytes += t.staged
        t.staged = 0
        while self._staged_waiting and self.state == "ffp":
            nxt = self._staged_waiting[0]
            if nxt.dead:
                self._staged_waiting.popleft()
                continue
            if self._staged_bytes and self._staged_bytes + nxt.staged > STAGED_READ_BUDGET:
                return
            self._staged_waiting.popleft()
            self._staged_bytes += nxt.staged
            nxt.staged = -nxt.staged
            self._guard(self._execute, nxt)

    def _r2t_slot(self, t: Task) -> bool:
        if t.r2t_slot:
            return True
        if self._r2t_busy < self._r2t_limit:
            self._r2t_busy += 1
            t.r2t_slot = True
            return True
        if not t.r2t_queued:
            t.r2t_queued = True
            self._r2t_waiting.append(t)
        return False

    def _r2t_release(self, t: Task) -> None:
        if not t.r2t_slot:
            return
        t.r2t_slot = False
        self._r2t_busy -= 1
        while self._r2t_waiting and self._r2t_busy < self._r2t_limit and self.state == "ffp":
            nxt = self._r2t_waiting.popleft()
            nxt.r2t_queued = False
            if not nxt.dead:
                self._guard(self._advance_write, nxt)

    def _got_whole(self, t: Task, iov: Any) -> None:
        t.wait = None
        if t.dead or self.state == "closed":
            self.iobufs.release(iov)
            return
        reg = Region(iov, 0, t.edtl)
        t.regions.append(reg)
        t.region = reg
        self._advance_write(t)

    def _got_region(self, t: Task, iov: Any, off: int, n: int) -> None:
        t.wait = None
        if t.dead or self.state == "closed":
            self.iobufs.release(iov)
            return
        base = off - len(t.carry)
        reg = Region(iov, base, off + n)
        if t.carry:
            iov_put(iov.views, 0, t.carry)
            t.carry = b""
        t.regions.append(reg)
        t.region = reg
        self._send_r2t(t, off, n)

    def _send_r2t(self, t: Task, off: int, n: int) -> None:
        ttt = self._new_ttt()
        r = R2T(ttt, off, n, t.r2tsn)
        t.r2tsn += 1
        t.r2ts[ttt] = r
        self._ttt_map[ttt] = t
        t.next_r2t_offset = off + n
        t.last_rx = self.now()
        sn, exp, mx = self._status_words(advance=False)
        self.send(
            self._encode(
                P.OP_R2T, 0x80, 0, 0, t.lun_field, t.itt, (ttt, sn, exp, mx, r.r2tsn, off, n)
            )
        )

    def _region_done(self, t: Task) -> None:
        """The receiving region has all its data: keep the partial block at
        its end for the next region, let its buffers go once written."""
        reg = t.region
        if reg is None or not t.stream:
            return  # a whole-transfer region stays until the command runs
        t.region = None
        if reg.end < t.edtl:
            tail = reg.end % t.bs
            if tail:
                t.carry = iov_get(reg.iov.views, reg.end - tail - reg.base, tail)
        reg.closed = True
        if reg.release_if_idle(self.iobufs):
            t.regions.remove(reg)

    def _pieces(self, t: Task, rx_end: int) -> None:
        """Hand every complete chunk of the receiving region to the SCSI core
        (whole blocks only; a partial block waits for the next region)."""
        reg = t.region
        if reg is None:
            return
        bs = t.bs
        while t.submitted < rx_end:
            start, cend, view = reg.chunk(t.submitted)
            if rx_end < cend:
                return  # this chunk is not complete yet
            end = cend - cend % bs if (cend == reg.end) else cend
            if end <= t.submitted:
                return
            data = view[t.submitted - start : end - start]
            off = t.submitted
            t.submitted = end
            if t.fail is None:
                self._piece(t, reg, off, data)
            if cend == reg.end:
                return

    def _piece(self, t: Task, reg: Region | None, off: int, data: memoryview) -> None:
        s = self.session
        assert s is not None
        dev = self.env.device(s.target_name)
        st = self.env.make_task(
            lun=t.lun,
            cdb=t.cdb,
            initiator_port=s.initiator_port,
            target_port=s.target_port,
            tag=t.itt,
            data_out=data,
            expected_transfer_length=t.edtl,
            direction="write",
        )
        st.offset = off
        t.scsi = st
        t.pieces += 1
        t.subs += 1
        t.io += 1
        if reg is not None:
            reg.pending += 1

        def done(task: Any, _t: Task = t, _r: Region | None = reg) -> None:
            self._guard(self._piece_done, _t, _r, task)

        if dev is None:
            st.status = CHECK_CONDITION
            st.sense = _SENSE_LUN_GONE
            done(st)
            return
        dev.execute(st, done)

    def _piece_done(self, t: Task, reg: Region | None, st: Any) -> None:
        t.subs -= 1
        if reg is not None:
            reg.pending -= 1
            if reg.release_if_idle(self.iobufs) and reg in t.regions:
                t.regions.remove(reg)
        if int(st.status) and t.fail is None:
            t.fail = st
        t.result = st
        self._io_done(t)
        if t.dead or self.state == "closed":
            return
        self._advance_write(t)

    def _stream_end(self, t: Task) -> None:
        """All data is in: answer once every piece has been written."""
        if t.dead or t.region is not None or t.r2ts or t.next_r2t_offset < t.edtl:
            return
        if t.wait is not None or t.unsol_open:
            return
        if not t.pieces:
            # nothing as long as a block arrived: one (empty) piece still runs
            # the CDB's checks and gives the status
            self._piece(t, None, 0, memoryview(b""))
            return
        if t.subs:
            return
        self._complete(t, t.fail or t.result)

    def _data_out(self, pdu: P.Pdu) -> None:
        ttt = pdu.ttt
        s = self.session
        assert s is not None
        if ttt == P.RSVD_TAG:
            t = self.tasks.get(pdu.itt)
            if t is None or not t.unsol_open:
                self._reject(pdu.bhs, P.REJ_INVALID_FIELD)
                return
            if (
                pdu.datasn != t.unsol_datasn
                or pdu.buffer_offset != t.received
                or t.received + pdu.dlen > t.unsol_limit
            ):
                self._seq_error(pdu, "unsolicited Data-Out out of sequence")
                return
            reg = t.region
            assert reg is not None
            iov_put(reg.iov.views, t.received - reg.base, pdu.data)
            t.received += pdu.dlen
            t.unsol_datasn += 1
            t.last_rx = self.now()
            if t.stream:
                self._pieces(t, t.received)
            if pdu.final:
                t.unsol_open = False
                t.next_r2t_offset = t.received
                if t.stream:
                    if t.received < reg.end:
                        reg.end = t.received  # the initiator sent less than FirstBurstLength
                        self._pieces(t, t.received)
                    self._region_done(t)
                self._advance_write(t)
            return
        t = self._ttt_map.get(ttt)
        if t is None or t.itt != pdu.itt:
            if ttt in self._dead_ttts:
                return  # the rest of a burst whose task was terminated: discard
            self._reject(pdu.bhs, P.REJ_INVALID_FIELD)
            return
        r = t.r2ts[ttt]
        if pdu.datasn != r.datasn:
            # ERL 0 has no recovery for lost Data-Out: reject it and terminate
            # the task (the initiator fails the command); the connection lives on
            self._reject(pdu.bhs, P.REJ_PROTOCOL)
            self._dead_ttts.extend(t.r2ts)
            self._drop_task(t, abort=True)
            return
        if pdu.buffer_offset != r.offset + r.received or r.received + pdu.dlen > r.length:
            self._seq_error(
                pdu, f"Data-Out DataSN {pdu.datasn}/offset {pdu.buffer_offset} unexpected"
            )
            return
        if pdu.final and r.received + pdu.dlen != r.length:
            self._seq_error(pdu, "Data-Out F bit before the end of the burst")
            return
        reg = t.region
        assert reg is not None
        off = pdu.buffer_offset
        iov_put(reg.iov.views, off - reg.base, pdu.data)
        r.received += pdu.dlen
        r.datasn += 1
        t.received += pdu.dlen
        t.last_rx = self.now()
        if t.stream:
            self._pieces(t, r.offset + r.received)
        if r.received == r.length:
            del t.r2ts[ttt]
            del self._ttt_map[ttt]
            if t.stream:
                self._region_done(t)
            self._advance_write(t)

    def _seq_error(self, pdu: P.Pdu, why: str) -> None:
        # ERL 0 cannot recover a broken data sequence: reject, fail the connection
        self._reject(pdu.bhs, P.REJ_PROTOCOL)
        self.close(why)

    def _execute(self, t: Task) -> None:
        s = self.session
        assert s is not None
        dev = self.env.device(s.target_name)
        reg = t.regions[0] if t.regions else None
        data = reg.iov.views[0][: t.edtl] if reg is not None and t.edtl else None
        st = self.env.make_task(
            lun=t.lun,
            cdb=t.cdb,
            initiator_port=s.initiator_port,
            target_port=s.target_port,
            tag=t.itt,
            data_out=data,
            expected_transfer_length=t.edtl,
            direction=t.direction,
        )
        t.scsi = st
        t.io += 1
        if reg is not None:
            reg.pending += 1
            reg.closed = True
            t.region = None
        if dev is None:
            # the target went away: the LUN is gone
            st.status = CHECK_CONDITION
            st.sense = _SENSE_LUN_GONE
            self._executed(t, st)
            return

        def done(task: Any, _t: Task = t) -> None:
            self._guard(self._executed, _t, task)

        dev.execute(st, done)

    def _executed(self, t: Task, st: Any) -> None:
        for reg in t.regions:
            reg.pending -= 1
            reg.release_if_idle(self.iobufs)
        t.regions.clear()
        self._io_done(t)
        self._complete(t, st)

    def _io_done(self, t: Task) -> None:
        t.io -= 1
        if not t.io and t.waiters:
            ws, t.waiters = t.waiters, []
            for w in ws:
                w()

    def _complete(self, t: Task, st: Any) -> None:
        iovs = getattr(st, "iovs", None)
        if t.dead or self.state == "closed":
            self._release_iovs(iovs)
            return
        self._drop_task(t)
        t.dead = True  # answered: nothing may answer it again
        if getattr(st, "aborted", False):
            self._release_iovs(iovs)
            return  # aborted tasks get no response (the TMF response covers them)
        try:
            self._respond(t, st)
        finally:
            if iovs:
                # pool buffers behind the Data-In go back once it has been sent
                self.after_sent(lambda: self._release_iovs(iovs))

    def _release_iovs(self, iovs: list[Any] | None) -> None:
        if iovs:
            for v in iovs:
                self.iobufs.release(v)
            iovs.clear()

    def _respond(self, t: Task, st: Any) -> None:
        edtl = t.edtl
        sense = bytes(st.sense or b"")
        status = int(st.status)
        data_in = st.data_in or []
        avail = 0
        for m in data_in:
            avail += len(m)
        flags = 0
        residual = 0
        if t.direction == "write" or (avail == 0 and t.direction != "read"):
            tl = getattr(st, "transfer_length", -1)
            if tl is None or tl < 0:
                tl = edtl if t.direction == "write" else 0
            if tl < edtl:
                flags, residual = P.F_UNDERFLOW, edtl - tl
            elif tl > edtl:
                flags, residual = P.F_OVERFLOW, tl - edtl
        else:
            if avail < edtl:
                flags, residual = P.F_UNDERFLOW, edtl - avail
            elif avail > edtl:
                flags, residual = P.F_OVERFLOW, avail - edtl
        send_len = min(avail, edtl) if t.direction != "write" else 0
        datasn = 0
        if send_len:
            datasn = self._send_data_in(
                t.itt, t.lun_field, data_in, send_len, status, flags, residual, collapse=not sense
            )
            if not sense:
                return
        sn, exp, mx = self._status_words()
        data = (len(sense).to_bytes(2, "big") + sense) if sense else b""
        self.send(
            self._encode(
                P.OP_SCSI_RESP,
                0x80 | flags,
                0,
                status,
                0,
                t.itt,
                (0, sn, exp, mx, datasn or t.r2tsn, 0, residual),
                data,
            )
        )

    def _send_data_in(
        self,
        itt: int,
        lun_field: int,
        data_in: list[memoryview],
        total: int,
        status: int,
        flags: int,
        residual: int,
        collapse: bool,
    ) -> int:
        s = self.session
        assert s is not None
        maxlen = max(512, self.cp.max_xmit_dlen)
        burst = s.params.max_burst_length
        off = 0
        datasn = 0
        pieces = iter(data_in)
        cur: memoryview = memoryview(b"")
        while off < total:
            n = min(maxlen, total - off, burst - (off % burst))
            chunk: list[memoryview] = []
            need = n
            while need:
                if not len(cur):
                    cur = memoryview(next(pieces)).cast("B")
                    continue
                take = cur[:need]
                chunk.append(take)
                cur = cur[len(take) :]
                need -= len(take)
            last = off + n >= total
            f1 = 0
            if last or (off + n) % burst == 0:
                f1 |= P.F_FINAL
            if last and collapse:
                f1 |= P.F_STATUS | flags
                sn, exp, mx = self._status_words()
                w = (P.RSVD_TAG, sn, exp, mx, datasn, off, residual)
                b3 = status
            else:
                exp, mx = self._seq()
                w = (P.RSVD_TAG, 0, exp, mx, datasn, off, 0)
                b3 = 0
            self.send(self._encode(P.OP_DATA_IN, f1, 0, b3, lun_field, itt, w, chunk))
            datasn += 1
            off += n
        return datasn

    def _respond_status(self, itt: int, status: int, edtl: int) -> None:
        """A SCSI Response with a status and no sense (TASK SET FULL, BUSY)."""
        sn, exp, mx = self._status_words()
        flags, residual = (P.F_UNDERFLOW, edtl) if edtl else (0, 0)
        self.send(
            self._encode(
                P.OP_SCSI_RESP, 0x80 | flags, 0, status, 0, itt, (0, sn, exp, mx, 0, 0, residual)
            )
        )

    def _respond_error(self, t: Task, sense: bytes) -> None:
        sn, exp, mx = self._status_words()
        flags, residual = (P.F_UNDERFLOW, t.edtl) if t.edtl else (0, 0)
        data = len(sense).to_bytes(2, "big") + sense
        self.send(
            self._encode(
                P.OP_SCSI_RESP,
                0x80 | flags,
                0,
                CHECK_CONDITION,
                0,
                t.itt,
                (0, sn, exp, mx, 0, 0, residual),
                data,
            )
        )

    def _drop_task(self, t: Task, abort: bool = False) -> None:
        t.dead = abort or t.dead
        self.tasks.pop(t.itt, None)
        s = self.session
        if s is not None and s.tasks.get(t.itt) is t:
            del s.tasks[t.itt]
        if t.slot and s is not None:
            slot, t.slot = t.slot, 0
            s.done(slot == 2)
        # write buffers: those no bdev write uses any more go back now, the
        # others when their write completes
        if t.wait is not None:
            self.iobufs.cancel(t.wait)
            t.wait = None
        t.imm_pdu = None
        t.region = None
        self._r2t_release(t)
        if t.staged:
            self._staged_done(t)
        for reg in list(t.regions):
            reg.closed = True
            if reg.release_if_idle(self.iobufs):
                t.regions.remove(reg)
        if abort and self._stalled_by is t:
            self._unstall(t)  # it will never get its buffer: the input goes on
        for ttt in t.r2ts:
            self._ttt_map.pop(ttt, None)
        t.r2ts.clear()
        if abort:
            t.dead = True

    # ------------------------------------------------------ task management
    def _tmf(self, pdu: P.Pdu) -> None:
        """Task management. "Function complete" goes out only once every
        affected task has really finished: its SCSI execution (and so its
        last bdev write) or its fast-path read completed (RFC 7143 11.5)."""
        s = self.session
        assert s is not None
        fn = pdu.function
        lun_id = P.lun_to_int(pdu.lun)
        dev = self.env.device(s.target_name)
        resp = TMF_RSP_COMPLETE
        pending = [1]  # a guard: the response cannot go before this call ends
        itt = pdu.itt

        def one_done() -> None:
            pending[0] -= 1
            if pending[0] == 0 and self.state == "ffp":
                sn, exp, mx = self._status_words()
                self.send(
                    self._encode(P.OP_TMF_RESP, 0x80, resp, 0, 0, itt, (0, sn, exp, mx, 0, 0, 0))
                )

        def wait_for() -> Callable[[], None]:
            pending[0] += 1
            return one_done

        if fn == TMF_ABORT_TASK:
            t = s.tasks.get(pdu.ref_task_tag)
            if t is not None:
                self._abort(dev, t, wait_for)
            else:
                resp = _abort_missing(s, pdu.w32, pdu.cmdsn)
        elif fn in (TMF_ABORT_TASK_SET, TMF_LUN_RESET):
            lun = _get_lun(dev, lun_id)
            if lun is None:
                resp = TMF_RSP_NO_LUN
            else:
                for t in [x for x in s.tasks.values() if x.lun == lun_id]:
                    self._abort(dev, t, wait_for)
                if fn == TMF_LUN_RESET:
                    # other initiators' tasks on the LUN go as well
                    lun.reset(wait_for())
                else:
                    lun.abort_task_set(s.initiator_port, wait_for())
        elif fn == TMF_TARGET_WARM_RESET:
            for t in list(s.tasks.values()):
                self._abort(dev, t, wait_for)
            if dev is not None:
                dev.target_reset(wait_for())
        else:
            resp = TMF_RSP_NOT_SUPPORTED
        one_done()

    def _abort(self, dev: Any, t: Task, wait_for: Callable[[], Callable[[], None]]) -> None:
        owner = t.conn or self
        owner._drop_task(t, abort=True)
        if t.io:
            t.waiters.append(wait_for())
        if t.scsi is not None:
            lun = _get_lun(dev, t.lun)
            if lun is not None and self.session is not None:
                lun.abort_task(t.itt, self.session.initiator_port)

    # ------------------------------------------------------------------ text
    def _text(self, pdu: P.Pdu) -> None:
        s = self.session
        assert s is not None
        if pdu.ttt != P.RSVD_TAG:
            if pdu.ttt != self._text_ttt:
                self._reject(pdu.bhs, P.REJ_INVALID_FIELD)
                return
            if not self._text_rest:
                self._text_pending += pdu.data
            else:
                self._send_text(pdu.itt, self._text_rest)
                return
        else:
            self._text_pending = bytearray(pdu.data)
            self._text_rest = b""
        if pdu.cont:
            if len(self._text_pending) > 64 * 1024:
                self._reject(pdu.bhs, P.REJ_PROTOCOL)
                self._text_pending = bytearray()
                return
            self._text_ttt = self._new_ttt()
            sn, exp, mx = self._status_words()
            self.send(
                self._encode(
                    P.OP_TEXT_RESP, 0, 0, 0, 0, pdu.itt, (self._text_ttt, sn, exp, mx, 0, 0, 0)
                )
            )
            return
        try:
            pairs = text.parse(self._text_pending)
        except text.TextError:
            self._reject(pdu.bhs, P.REJ_PROTOCOL)
            return
        self._text_pending = bytearray()
        out: list[tuple[str, str]] = []
        oc = self.outcome
        assert oc is not None
        neg = Negotiator(oc.negotiator.ours, discovery=s.discovery, leading=False)
        for k, v in pairs:
            if k == "SendTargets":
                out += send_targets(
                    self.env.view,
                    v,
                    s.initiator_name,
                    self.peer_addr,
                    self.local_addr,
                    None if s.discovery else s.target_name,
                )
        try:
            out += neg.respond([(k, v) for k, v in pairs if k != "SendTargets"], STAGE_FULL_FEATURE)
        except NegotiationError:
            self._reject(pdu.bhs, P.REJ_PROTOCOL)
            return
        if "MaxRecvDataSegmentLength" in neg.declared:
            self.cp.max_xmit_dlen = int(neg.declared["MaxRecvDataSegmentLength"])
        self._send_text(pdu.itt, text.encode(out))

    def _send_text(self, itt: int, data: bytes) -> None:
        n = max(512, self.cp.max_xmit_dlen)
        chunk, rest = data[:n], data[n:]
        self._text_rest = rest
        if rest:
            self._text_ttt = self._new_ttt()
            f1, ttt = P.F_CONT, self._text_ttt
        else:
            self._text_ttt = P.RSVD_TAG
            f1, ttt = P.F_FINAL, P.RSVD_TAG
        sn, exp, mx = self._status_words()
        self.send(
            self._encode(P.OP_TEXT_RESP, f1, 0, 0, 0, itt, (ttt, sn, exp, mx, 0, 0, 0), chunk)
        )

    # ---------------------------------------------------------------- logout
    def _logout(self, pdu: P.Pdu) -> None:
        s = self.session
        assert s is not None
        reason = pdu.function
        resp = 0
        close_self = False
        close_session = False
        if reason == 0:
            close_session = True
        elif reason == 1:
            if pdu.cid == self.cid:
                close_self = True
            else:
                other = next((c for c in s.connections if c.cid == pdu.cid), None)
                if other is None:
                    resp = 1  # CID not found
                else:
                    other.close("logged out by another connection")
        elif reason == 2:
            resp = 2  # connection recovery is not supported at ERL 0
        else:
            self._reject(pdu.bhs, P.REJ_INVALID_FIELD)
            return
        sn, exp, mx = self._status_words()
        t2w = s.params.default_time2wait if resp == 0 else 0
        t2r = s.params.default_time2retain if resp == 0 else 0
        self.send(
            self._encode(
                P.OP_LOGOUT_RESP,
                0x80,
                resp,
                0,
                0,
                pdu.itt,
                (0, sn, exp, mx, 0, (t2w << 16) | t2r, 0),
            )
        )
        if close_session:
            self.state = "logout"
            for c in list(s.connections):
                if c is not self:
                    c.close("session logged out")
            self.close("logout")
        elif close_self:
            self.state = "logout"
            self.close("logout")

    _handlers: dict[int, Callable[[Connection, P.Pdu], None]] = {
        P.OP_NOP_OUT: _nop_out,
        P.OP_SCSI_CMD: _scsi_cmd,
        P.OP_TMF_REQ: _tmf,
        P.OP_TEXT_REQ: _text,
        P.OP_LOGOUT_REQ: _logout,
    }

    # ------------------------------------------------------------- queries
    def info(self) -> dict[str, Any]:
        """iscsi_get_connections entry (SPDK's field names)."""
        s = self.session
        return {
            "id": id(self) & 0xFFFF,
            "cid": self.cid,
            "tsih": s.tsih if s else 0,
            "lcore_id": 0,
            "initiator_addr": self.peer_addr,
            "target_addr": self.local_addr,
            "target_node_name": s.target_name if s else "",
            "initiator_name": s.initiator_name if s else "",
            "state": self.state,
        }


def _abort_missing(s: Session, refcmdsn: int, cmdsn: int) -> int:
    """ABORT TASK for a tag we do not know (RFC 7143 11.5.1): a command not yet
    received (RefCmdSN still in the window, before the TMF) counts as received
    and aborted; one already done (RefCmdSN below ExpCmdSN) does not exist."""
    if sn_le(s.exp_cmdsn, refcmdsn) and sn_lt(refcmdsn, cmdsn):
        s.discard_pending(refcmdsn)
        return TMF_RSP_COMPLETE
    return TMF_RSP_NO_TASK


def _get_lun(dev: Any, lun_id: int) -> Any:
    if dev is None:
        return None
    get = getattr(dev, "get_lun", None)
    if get is not None:
        return get(lun_id)
    luns = getattr(dev, "luns", None)
    return luns.get(lun_id) if isinstance(luns, dict) else None


def _copy(p: P.Pdu | P.PduError) -> P.Pdu | P.PduError:
    if isinstance(p, P.PduError):
        return p
    return P.Pdu(bytes(p.bhs), bytes(p.ahs), bytes(p.data))


def _call_now(cb: Callable[[], None]) -> None:
    cb()


def _block_size(dev: Any, lun_id: int) -> int:
    """Block size of a LUN when its writes can be cut into pool chunks."""
    bdev = getattr(_get_lun(dev, lun_id), "bdev", None)
    bs = getattr(bdev, "block_size", 0)
    return bs if isinstance(bs, int) and 0 < bs <= CHUNK and CHUNK % bs == 0 else 0
