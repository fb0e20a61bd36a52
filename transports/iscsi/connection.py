"""One iSCSI connection, sans-I/O: PDUs in (`receive`), encoded PDUs out
through the ``send`` callback. This file holds the PDU dispatch and the
connection state; each other concern has its own file:

* login and FFP text negotiation: negotiation.py (around login.py);
* CmdSN ordering and the command window: the session's interface (session.py);
* write data, R2Ts and Data-Out checks: dataout.py;
* Data-In packing, one implementation for the generic and the fast READ
  path: datain.py;
* task management: tmf.py;
* the task model and the SCSI core's interface (`DeviceLike`, `LunLike`):
  tasks.py.

Here: SCSI command admission (immediate data and unsolicited data rules,
the immediate-command bound, MAX_EDTL), the READ(10)/READ(16) fast path, the
staged-READ budget, execution and the SCSI Response (residual over/underflow
against EDTL), NOP-Out/NOP-In (and target pings via `idle_check`), Logout,
Reject for bad PDUs. ERL 0 only: sequence errors fail the connection.

Bounds against hostile hosts (issue 8): the CmdSN window (MaxCmdSN moves
when commands finish; immediate SCSI commands count too: TASK SET FULL
beyond queue_depth); input stalls while a command waits for pool buffers;
task management answers once the affected tasks really finished; an
exception closes only this connection (`crash`), counted and logged through
HostLog like every host-caused error.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ...bdevs.base import TIME_IO, IoStatus
from ...control.hostlog import HostLog
from ...shm import trace as _tr
from ...shm.trace import G_BDEV, G_ISCSI, TRACE
from ..scsi.cdb import parse_rw
from . import fastread, tmf
from . import pdu as P
from .datain import DataInPacker
from .dataout import DataOut
from .login import LoginOutcome
from .negotiation import LoginPhase, TextExchange
from .params import ConnParams
from .session import Session
from .tasks import (
    CHECK_CONDITION,
    SENSE_HW_ERROR,
    SENSE_INVALID_FIELD_CDB,
    SENSE_LUN_GONE,
    TASK_SET_FULL,
    ConnEnv,
    DeviceLike,
    LunLike,
    Task,
    block_size,
)
from .xfer import CHUNK, STREAM_OPS, HeapBufs

log = logging.getLogger(__name__)

MAX_EDTL = 64 * 1024 * 1024  # biggest write buffer one command may ask for
STAGED_READ_BUDGET = 8 * 1024 * 1024  # pool bytes of staged READs per connection
LOGIN_READER_SIZE = 0  # receive buffer before login: two maximal login PDUs
FFP_READER_SIZE = 256 * 1024  # receive buffer in full feature phase
_READ_OPS = frozenset({0x08, 0x28, 0xA8, 0x88})
_RW_OPS = _READ_OPS | {0x0A, 0x2A, 0xAA, 0x8A}  # READ/WRITE (6/10/12/16): a traced LBA
# READ(10) / READ(16) CDB fields from byte 1: flags, LBA, transfer length
_R10 = struct.Struct(">BIxH")
_R16 = struct.Struct(">BQI")
_OP_SCSI_CMD = P.OP_SCSI_CMD
_Pdu = P.Pdu
_TRACED_BY_PDU = G_ISCSI | G_BDEV


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
        self.login: LoginPhase | None = LoginPhase(self)
        self.state = "login"
        self.session: Session | None = None
        self.cid = 0
        self.statsn = 0
        self.cp = ConnParams()
        self.outcome: LoginOutcome | None = None
        self._ttt = 0
        # fast READ path: ITT whose bdev completion is being awaited inline
        self._fast_itt = -1
        self._fast_box: list[Any] = []
        # the batched READ path (fastread.py); off: every PDU goes one by one
        self.fast_scan = True
        self.tasks: dict[int, Task] = {}
        self._ping_ttt = P.RSVD_TAG
        self.ping_sent_at: float | None = None
        self.last_rx = 0.0
        self.close_reason = ""
        self.pdus_in = 0
        self.pdus_out = 0
        self.stats = {"rejects": 0, "errors": 0, "r2t_timeouts": 0, "digest_errors": 0}
        self.now: Callable[[], float] = time.monotonic
        # transfer buffers: the reactor's share of the shared pool
        self.iobufs: Any = getattr(env, "iobufs", None) or HeapBufs()
        # input flow control: a command waiting for pool buffers stops the
        # reading of further PDUs (they wait here, as copies, in order)
        self._stalled_by: Task | None = None
        self._backlog: deque[P.Pdu | P.PduError] = deque()
        self.on_flow: Callable[[], None] | None = None  # the driver re-arms reading
        self.dataout = DataOut(self, int(env.view.options.get("max_r2t_per_connection", 4) or 4))
        self.datain = DataInPacker()
        self.text = TextExchange(self)
        # READs of bdevs that copy (aio, nvme) stage their data in pool
        # buffers: at most STAGED_READ_BUDGET bytes of them run at once per
        # connection (a bigger one runs alone), the others wait here
        self._staged_bytes = 0
        self._staged_waiting: deque[Task] = deque()
        # the driver calls cb once everything sent so far left the socket
        self.after_sent: Callable[[Callable[[], None]], None] = _call_now
        self.hostlog = HostLog(log, f"iscsi {peer_addr}")
        self.tp_id = _tr.new_object_id()  # this connection in the trace

    # ------------------------------------------------------------------ io
    def send(self, bufs: list[P.Buffer]) -> None:
        if self.state != "closed":
            self.pdus_out += 1
            self._send(bufs)

    def close(self, reason: str) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        self.close_reason = reason
        if TRACE.mask & G_ISCSI:
            TRACE.rec(_tr.TP_ISCSI_CLOSE, self.tp_id)
        for t in list(self.tasks.values()):
            self.drop_task(t, abort=True)
        s = self.session
        if s is not None and s.detach(self):
            self.env.sessions.remove(s)
            self._nexus_lost(s)
        # what a dead connection no longer needs goes at once, not when the
        # cyclic garbage collector finds it (a login flood makes thousands)
        self.reader.release()
        if self.login is not None:
            self.login.release()
            self.login = None
        self._backlog.clear()
        self.text.release()
        self._on_close(reason)

    def _nexus_lost(self, s: Session) -> None:
        dev = self.env.device(s.target_name) if s.target else None
        if dev is None:
            return
        try:
            dev.nexus_lost(s.initiator_port, s.target_port)
        except Exception:  # best effort: the device keeps its state
            log.exception("nexus_lost failed")

    def feed(self, data: P.Buffer) -> None:
        """Convenience for tests and handoff: frame bytes and process them."""
        self.receive(self.reader.feed_bytes(data))

    def pdu_error(self, e: P.PduError) -> None:
        self.hostlog.event(logging.INFO, "%s", e)
        if e.reason == P.REJ_DATA_DIGEST or "digest" in str(e):
            self.stats["digest_errors"] += 1
        if self.state == "ffp":
            self.reject(e.bhs or bytes(P.BHS_LEN), e.reason)
        if e.fatal or self.state != "ffp":
            self.close(str(e))

    def on_recv(self, n: int) -> None:
        """``n`` bytes arrived in the reader's `recv_buffer`: the batched READ
        path (fastread.py) answers the plain READs at their head, then the
        rest is framed and handled PDU by PDU."""
        reader = self.reader
        reader.advance(n)
        if (
            self.fast_scan
            # traced requests go PDU by PDU, where every phase records, and
            # timed reads through IoChannel.read, which times them
            and not TRACE.mask & _TRACED_BY_PDU
            and not TIME_IO
            and self.state == "ffp"
            and self._stalled_by is None
            and not self._backlog
            and not reader.header_digest
            and not reader.broken
        ):
            try:
                fastread.scan(self)
            except Exception:
                self.crash("a PDU")
                return
        self.receive(reader.feed(0))

    def receive(self, pdus: list[P.Pdu | P.PduError]) -> None:
        # one try for the batch: an exception closes the connection, so the
        # PDUs after it would be ignored anyway
        try:
            for i, pdu in enumerate(pdus):
                if self._stalled_by is not None:
                    # waiting for pool buffers: keep the rest, in order, as
                    # copies (the driver reads no more until the stall ends)
                    for p in pdus[i:]:
                        self._backlog.append(_copy(p))
                    return
                self._one(pdu)
        except Exception:
            self.crash("a PDU")

    def _one(self, pdu: P.Pdu | P.PduError) -> None:
        if pdu.__class__ is not _Pdu:
            if self.state != "closed":
                assert isinstance(pdu, P.PduError)
                self.pdu_error(pdu)
            return
        assert isinstance(pdu, P.Pdu)
        self.pdus_in += 1
        if TRACE.mask & G_ISCSI:
            TRACE.rec(_tr.TP_ISCSI_PDU, self.tp_id, pdu.itt, 0, pdu.dlen, pdu.opcode)
        state = self.state
        if state == "ffp":
            s = self.session
            assert s is not None
            if (
                pdu.bhs[0] == _OP_SCSI_CMD  # not immediate (that bit is set otherwise)
                and not s.discovery
                and s.next_in_order(pdu.w24)
            ):
                # hot path: the next command in CmdSN order with nothing
                # queued ahead (what Session.order would deliver at once)
                self._scsi_cmd(pdu)
                return
            self._ffp_pdu(pdu, s)
        elif state == "login":
            assert self.login is not None
            self.login.on_pdu(pdu)
        # "logout": a logout response went out; "closed": the rest is ignored

    @property
    def input_stalled(self) -> bool:
        return self._stalled_by is not None

    def stall(self, t: Task) -> None:
        self._stalled_by = t

    def unstall(self, t: Task) -> None:
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

    def guard(self, fn: Callable[..., None], *args: Any) -> None:
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
        t = self.dataout.stalled(now, r2t_timeout)
        if t is not None:
            self.hostlog.event(
                logging.WARNING, "no Data-Out for ITT %#x in %.0f s", t.itt, now - t.last_rx
            )
            self.stats["r2t_timeouts"] += 1
            self.close("Data-Out timeout")

    # --------------------------------------------------------- negotiation
    def enter_ffp(self, sess: Session) -> None:
        """Login done (negotiation.LoginPhase): the full feature phase starts.
        Digests and the receive limit apply from the first FFP PDU; the
        full-size receive buffer only now."""
        self.session = sess
        self.login = None
        self.state = "ffp"
        if TRACE.mask & G_ISCSI:
            TRACE.rec(_tr.TP_ISCSI_LOGIN, self.tp_id, self.cid)
        cp = self.cp
        self.datain.configure(
            cp.max_xmit_dlen, sess.params.max_burst_length, cp.header_digest, cp.data_digest
        )
        self.reader.grow_to(FFP_READER_SIZE)
        self.reader.set_limits(cp.max_recv_dlen, cp.header_digest, cp.data_digest)

    def set_max_xmit_dlen(self, n: int) -> None:
        """The initiator declared a new MaxRecvDataSegmentLength (FFP text)."""
        cp = self.cp
        cp.max_xmit_dlen = n
        s = self.session
        assert s is not None
        self.datain.configure(n, s.params.max_burst_length, cp.header_digest, cp.data_digest)

    # ----------------------------------------------------------------- ffp
    def status_words(self, advance: bool = True) -> tuple[int, int, int]:
        """StatSN (advanced unless ``advance`` is False), ExpCmdSN, MaxCmdSN."""
        sn = self.statsn
        if advance:
            self.statsn = (sn + 1) & 0xFFFFFFFF
        s = self.session
        assert s is not None
        return sn, s.exp_cmdsn, s.max_cmdsn

    def encode(
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

    def new_ttt(self) -> int:
        self._ttt = (self._ttt + 1) & 0x7FFFFFFF or 1
        return self._ttt

    def reject(self, bhs: P.Buffer, reason: int) -> None:
        self.stats["rejects"] += 1
        sn, exp, mx = self.status_words()
        self.send(
            self.encode(
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

    def seq_error(self, pdu: P.Pdu, why: str) -> None:
        # ERL 0 cannot recover a broken data sequence: reject, fail the connection
        self.reject(pdu.bhs, P.REJ_PROTOCOL)
        self.close(why)

    def _ffp_pdu(self, pdu: P.Pdu, s: Session) -> None:
        op = pdu.opcode
        if op == P.OP_DATA_OUT:
            self.dataout.data_out(pdu)
            return
        if op == P.OP_SNACK or op == P.OP_LOGIN_REQ:
            # ERL 0: no recovery by SNACK; no login in the full feature phase
            self.reject(pdu.bhs, P.REJ_PROTOCOL)
            return
        if s.discovery and op in (P.OP_SCSI_CMD, P.OP_TMF_REQ):
            self.reject(pdu.bhs, P.REJ_PROTOCOL)
            return
        handler = self._handlers.get(op)
        if handler is None:
            self.reject(pdu.bhs, P.REJ_NOT_SUPPORTED)
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
            self.reject(pdu.bhs, P.REJ_INVALID_FIELD)
            return
        sn, exp, mx = self.status_words()
        data = bytes(pdu.data[: self.cp.max_xmit_dlen])
        self.send(
            self.encode(
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
            self._ping_ttt = self.new_ttt()
            self.ping_sent_at = now
            sn, exp, mx = self.status_words(advance=False)
            self.send(
                self.encode(
                    P.OP_NOP_IN, 0x80, 0, 0, 0, P.RSVD_TAG, (self._ping_ttt, sn, exp, mx, 0, 0, 0)
                )
            )
        return True

    # ---------------------------------------------------------- SCSI command
    def _scsi_cmd(self, pdu: P.Pdu) -> None:
        """A SCSI command in CmdSN order (or immediate). It holds a window
        slot; a task that takes the command over releases it when it ends,
        otherwise it is released here."""
        s = self.session
        assert s is not None
        imm = pdu.immediate
        if imm:
            if not s.take_immediate():
                # the session already runs queue_depth commands: an immediate
                # one counts against the same bound (SAM-5 TASK SET FULL)
                self._respond_status(pdu.itt, TASK_SET_FULL, pdu.edtl)
                return
        elif pdu.f1 & 0xE0 == 0xC0 and not pdu.dlen and not pdu.ahs_len:
            op = pdu.bhs[32]
            if (
                (op == 0x28 or op == 0x88)
                and pdu.itt not in s.tasks
                and self._fast_read(pdu, op, s)
            ):
                return  # answered, or a task owns the slot now
        try:
            if self._scsi_cmd_slot(pdu, 2 if imm else 1):
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
            self.reject(pdu.bhs, P.REJ_TASK_IN_PROGRESS)
            return False
        f1 = pdu.f1
        rd = bool(f1 & P.F_READ)
        wr = bool(f1 & P.F_WRITE)
        edtl = pdu.edtl
        direction = "write" if wr else ("read" if rd else "none")
        t = Task(itt, pdu.lun, pdu.cdb, edtl, direction)
        t.conn = self
        if TRACE.mask & G_ISCSI:
            self._tr_cmd(itt, pdu.cdb, edtl)
        imm = pdu.data
        sp = s.params
        if len(imm) and (
            not wr or not sp.immediate_data or len(imm) > min(edtl, sp.first_burst_length)
        ):
            self.reject(pdu.bhs, P.REJ_PROTOCOL)
            return False
        if not pdu.final and (not wr or sp.initial_r2t):
            # unsolicited Data-Out announced where none is allowed
            self.reject(pdu.bhs, P.REJ_PROTOCOL)
            return False
        if rd and wr:
            self._respond_error(t, SENSE_INVALID_FIELD_CDB)
            return False
        t.slot = slot
        s.add_task(itt, t)
        self.tasks[itt] = t
        if not wr or edtl == 0:
            if rd and self._staged_read_waits(t):
                return True
            self.execute(t)
            return True
        if edtl > MAX_EDTL:
            self.drop_task(t)
            self._respond_error(t, SENSE_INVALID_FIELD_CDB)
            return True
        bs = block_size(self._lun(t.lun), CHUNK)
        if not self.dataout.start(t, pdu, bs, STREAM_OPS, CHUNK):
            self.drop_task(t)
            self._respond_error(t, SENSE_INVALID_FIELD_CDB)
        return True

    def _lun(self, lun_id: int) -> LunLike | None:
        s = self.session
        assert s is not None
        dev = self.env.device(s.target_name)
        return dev.get_lun(lun_id) if dev is not None else None

    def _fast_read(self, pdu: P.Pdu, op: int, s: Session) -> bool:
        """READ(10)/READ(16) straight to the bdev channel, skipping the SCSI
        core's generic dispatch, when `DeviceLike.fast_lun` says no unit
        attention, reservation or removal applies and the CDB is plain (no
        RDPROTECT, in range, EDTL equal to the transfer, within the Block
        Limits maximum, not staged). Anything unusual returns False and takes
        the generic path, which produces the right sense data."""
        dev = self.env.device(s.target_name)
        if dev is None:
            return False
        lun_field = pdu.lun
        top = lun_field >> 48
        if top >> 8 or lun_field & 0xFFFFFFFFFFFF:
            return False
        lun = dev.fast_lun(top, s.nexus)
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
        if TRACE.mask & G_ISCSI:
            self._tr_fast(itt, lba, edtl, op)
        box = self._fast_box
        box.clear()
        self._fast_itt = itt
        later: list[Task] = []

        def done(st: Any, data: Any, _itt: int = itt, _lun: int = lun_field) -> None:
            if self._fast_itt == _itt:
                box.append(st)
                box.append(data)
            elif later:
                self.guard(self._fast_read_async_done, later[0], _lun, st, data)

        ch.read(lba, n, done)
        self._fast_itt = -1
        if box:
            s.done(False)  # before the response, so its MaxCmdSN is current
            self._read_data(itt, lun_field, edtl, box[0], box[1])
            return True
        # the bdev completes later: track the command like any other task
        # (task management waits for it: t.io)
        t = Task(itt, lun_field, b"", edtl, "read")
        t.conn = self
        t.slot = 1
        t.io = 1
        later.append(t)
        s.add_task(itt, t)
        self.tasks[itt] = t
        return True

    def _tr_fast(self, itt: int, lba: int, n: int, op: int) -> None:
        """Tracepoints of a fast-path READ: parsed and submitted in one step."""
        TRACE.rec(_tr.TP_ISCSI_CMD, self.tp_id, itt, lba, n, op)
        TRACE.rec(_tr.TP_ISCSI_SUBMIT, self.tp_id, itt, lba, n)

    def _tr_cmd(self, itt: int, cdb: bytes, edtl: int) -> None:
        try:
            lba = parse_rw(cdb).lba if cdb and cdb[0] in _RW_OPS else 0
        except Exception:
            lba = 0
        TRACE.rec(_tr.TP_ISCSI_CMD, self.tp_id, itt, lba, edtl, cdb[0] if cdb else 0)

    def _fast_read_async_done(self, t: Task, lun_field: int, st: Any, data: Any) -> None:
        self.io_done(t)
        if t.dead or self.state == "closed":
            return
        self.drop_task(t)
        self._read_data(t.itt, lun_field, t.edtl, st, data)

    def _read_data(self, itt: int, lun_field: int, edtl: int, st: Any, data: Any) -> None:
        """The fast path's bdev read is done: Data-In with the status, or the
        SCSI core's sense data for an I/O error."""
        if TRACE.mask & G_ISCSI:
            TRACE.rec(_tr.TP_ISCSI_DONE, self.tp_id, itt, 0, 0, int(st or 0))
        if st or data is None or len(data) != edtl:
            self._fast_read_error(itt, lun_field, edtl, st)
            return
        if self.state == "closed":
            return
        s = self.session
        assert s is not None
        sn = self.statsn
        self.statsn = (sn + 1) & 0xFFFFFFFF
        send = self._send
        if TRACE.mask & G_ISCSI:
            TRACE.rec(_tr.TP_ISCSI_DATAIN, self.tp_id, itt, 0, edtl, 1)
        for p in self.datain.pack(
            itt, lun_field, (data,), edtl, 0, 0, 0, True, sn, s.exp_cmdsn, s.max_cmdsn
        ):
            self.pdus_out += 1
            send(p)

    def _fast_read_error(self, itt: int, lun_field: int, edtl: int, st: Any) -> None:
        # an I/O error: let the SCSI core map it onto sense data
        t = Task(itt, lun_field, b"", edtl, "read")
        sess = self.session
        assert sess is not None
        dev = self.env.device(sess.target_name)
        lun = dev.fast_lun(t.lun, sess.nexus) if dev is not None else None
        st_task = self.env.make_task(lun=t.lun, tag=itt, direction="read")
        if lun is not None:
            lun.io_error(st_task, IoStatus(int(st) or IoStatus.FAILED), read=True)
        else:
            st_task.check_condition(SENSE_HW_ERROR)
        self.complete(t, st_task)

    # -------------------------------------------------------- staged READs
    def _staged_read_waits(self, t: Task) -> bool:
        """True when this READ must wait for the connection's staging budget."""
        if not t.cdb or t.cdb[0] not in _READ_OPS:
            return False
        lun = self._lun(t.lun)
        if lun is None or not lun.stage_reads:
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
            self.guard(self.execute, nxt)

    # ------------------------------------------------------------ execution
    def scsi_task(self, t: Task, data_out: memoryview | None, direction: str) -> Any:
        """The SCSI core's task for (a piece of) ``t``."""
        s = self.session
        assert s is not None
        return self.env.make_task(
            lun=t.lun,
            cdb=t.cdb,
            initiator_port=s.initiator_port,
            target_port=s.target_port,
            tag=t.itt,
            data_out=data_out,
            expected_transfer_length=t.edtl,
            direction=direction,
        )

    def execute(self, t: Task) -> None:
        s = self.session
        assert s is not None
        dev = self.env.device(s.target_name)
        reg = t.regions[0] if t.regions else None
        data = reg.iov.views[0][: t.edtl] if reg is not None and t.edtl else None
        st = self.scsi_task(t, data, t.direction)
        t.scsi = st
        t.io += 1
        if reg is not None:
            reg.pending += 1
            reg.closed = True
            t.region = None
        if dev is None:
            # the target went away: the LUN is gone
            st.status = CHECK_CONDITION
            st.sense = SENSE_LUN_GONE
            self._executed(t, st)
            return

        def done(task: Any, _t: Task = t) -> None:
            self.guard(self._executed, _t, task)

        if TRACE.mask & G_ISCSI:
            TRACE.rec(_tr.TP_ISCSI_SUBMIT, self.tp_id, t.itt, 0, t.edtl)
        dev.execute(st, done)

    def _executed(self, t: Task, st: Any) -> None:
        if TRACE.mask & G_ISCSI:
            TRACE.rec(_tr.TP_ISCSI_DONE, self.tp_id, t.itt, 0, 0, int(st.status))
        for reg in t.regions:
            reg.pending -= 1
            reg.release_if_idle(self.iobufs)
        t.regions.clear()
        self.io_done(t)
        self.complete(t, st)

    def io_done(self, t: Task) -> None:
        t.io -= 1
        if not t.io and t.waiters:
            ws, t.waiters = t.waiters, []
            for w in ws:
                w()

    def complete(self, t: Task, st: Any) -> None:
        iovs = st.iovs
        if t.dead or self.state == "closed":
            self._release_iovs(iovs)
            return
        self.drop_task(t)
        t.dead = True  # answered: nothing may answer it again
        if st.aborted:
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
            tl = st.transfer_length
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
            s = self.session
            assert s is not None
            collapse = not sense
            sn = self.statsn
            if collapse:
                self.statsn = (sn + 1) & 0xFFFFFFFF
            pdus = self.datain.pack(
                t.itt,
                t.lun_field,
                data_in,
                send_len,
                status,
                flags,
                residual,
                collapse,
                sn,
                s.exp_cmdsn,
                s.max_cmdsn,
            )
            if TRACE.mask & G_ISCSI:
                TRACE.rec(_tr.TP_ISCSI_DATAIN, self.tp_id, t.itt, 0, send_len, int(collapse))
            for p in pdus:
                self.send(p)
            if collapse:
                return
            datasn = len(pdus)
        sn, exp, mx = self.status_words()
        data = (len(sense).to_bytes(2, "big") + sense) if sense else b""
        if TRACE.mask & G_ISCSI:
            TRACE.rec(_tr.TP_ISCSI_RESP, self.tp_id, t.itt, 0, 0, status)
        self.send(
            self.encode(
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

    def _respond_status(self, itt: int, status: int, edtl: int) -> None:
        """A SCSI Response with a status and no sense (TASK SET FULL, BUSY)."""
        if TRACE.mask & G_ISCSI:
            TRACE.rec(_tr.TP_ISCSI_RESP, self.tp_id, itt, 0, 0, status)
        sn, exp, mx = self.status_words()
        flags, residual = (P.F_UNDERFLOW, edtl) if edtl else (0, 0)
        self.send(
            self.encode(
                P.OP_SCSI_RESP, 0x80 | flags, 0, status, 0, itt, (0, sn, exp, mx, 0, 0, residual)
            )
        )

    def _respond_error(self, t: Task, sense: bytes) -> None:
        if TRACE.mask & G_ISCSI:
            TRACE.rec(_tr.TP_ISCSI_RESP, self.tp_id, t.itt, 0, 0, CHECK_CONDITION)
        sn, exp, mx = self.status_words()
        flags, residual = (P.F_UNDERFLOW, t.edtl) if t.edtl else (0, 0)
        data = len(sense).to_bytes(2, "big") + sense
        self.send(
            self.encode(
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

    def drop_task(self, t: Task, abort: bool = False) -> None:
        """Forget a task (answered, failed or aborted): its window slot, its
        buffers (dataout.release), its staging budget."""
        t.dead = abort or t.dead
        self.tasks.pop(t.itt, None)
        s = self.session
        if s is not None:
            s.remove_task(t.itt, t)
            if t.slot:
                slot, t.slot = t.slot, 0
                s.done(slot == 2)
        self.dataout.release(t)
        if t.staged:
            self._staged_done(t)
        if abort and self._stalled_by is t:
            self.unstall(t)  # it will never get its buffer: the input goes on
        if abort:
            t.dead = True

    # ------------------------------------------------------------------ TMF
    def _tmf(self, pdu: P.Pdu) -> None:
        tmf.handle(self, pdu)

    def _text(self, pdu: P.Pdu) -> None:
        self.text.on_pdu(pdu)

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
                other = s.connection(pdu.cid)
                if other is None:
                    resp = 1  # CID not found
                else:
                    other.close("logged out by another connection")
        elif reason == 2:
            resp = 2  # connection recovery is not supported at ERL 0
        else:
            self.reject(pdu.bhs, P.REJ_INVALID_FIELD)
            return
        sn, exp, mx = self.status_words()
        t2w = s.params.default_time2wait if resp == 0 else 0
        t2r = s.params.default_time2retain if resp == 0 else 0
        self.send(
            self.encode(
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


def _copy(p: P.Pdu | P.PduError) -> P.Pdu | P.PduError:
    if isinstance(p, P.PduError):
        return p
    return P.Pdu(bytes(p.bhs), bytes(p.ahs), bytes(p.data))


def _call_now(cb: Callable[[], None]) -> None:
    cb()


__all__ = ["MAX_EDTL", "STAGED_READ_BUDGET", "Connection", "ConnEnv", "DeviceLike", "Task"]
