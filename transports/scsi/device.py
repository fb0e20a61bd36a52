"""A SCSI target device (an iSCSI target node): LUN routing, REPORT LUNS,
unit attentions per (LUN, I_T nexus)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ...shm import trace as _tr
from ...shm.trace import G_SCSI, TRACE
from . import cdb as C
from . import inquiry, spc
from .lun import Done, ScsiLun
from .pr import Nexus, PrResult, PrStore
from .sense import (
    ASC_POWER_ON_RESET,
    ASC_REPORTED_LUNS_CHANGED,
    GOOD,
    SenseError,
    build_sense,
    invalid_opcode,
    lun_not_supported_sense,
)
from .task import ScsiTask

MAX_UA_PER_NEXUS = 16


class ScsiDevice:
    def __init__(
        self,
        name: str,
        pr_store: PrStore,
        relative_port_id: int = 1,
        power_on_ua: bool = True,
    ) -> None:
        self.name = name
        self.pr_store = pr_store
        self.relative_port_id = relative_port_id
        self.power_on_ua = power_on_ua
        self.luns: dict[int, ScsiLun] = {}
        self._ua: dict[tuple[int, Nexus], deque[tuple[int, int]]] = {}
        self._nexuses: set[Nexus] = set()
        # called with (initiator_port, target_port) when PREEMPT AND ABORT must
        # abort a nexus' tasks on other reactors; local LUNs are handled here
        self.on_abort_nexus: Callable[[Nexus], None] | None = None
        self.tp_id = _tr.new_object_id()  # this device in the trace

    # ------------------------------------------------------------- LUNs
    def add_lun(self, lun: ScsiLun) -> None:
        self.luns[lun.lun_id] = lun
        for n in self._nexuses:
            if self.power_on_ua:
                self._push_ua(lun.lun_id, n, ASC_POWER_ON_RESET)
        self._luns_changed(lun.lun_id)

    def remove_lun(self, lun_id: int) -> None:
        self.luns.pop(lun_id, None)
        for k in [k for k in self._ua if k[0] == lun_id]:
            del self._ua[k]
        self._luns_changed(lun_id)

    def _luns_changed(self, except_lun: int) -> None:
        for lid in self.luns:
            if lid != except_lun:
                self.establish_ua(lid, None, ASC_REPORTED_LUNS_CHANGED)

    # ------------------------------------------------------- unit attention
    def _push_ua(self, lun_id: int, nexus: Nexus, asc_ascq: tuple[int, int]) -> None:
        q = self._ua.setdefault((lun_id, nexus), deque())
        if asc_ascq not in q and len(q) < MAX_UA_PER_NEXUS:
            q.append(asc_ascq)

    def establish_ua(
        self,
        lun_id: int,
        nexus: Nexus | None,
        asc_ascq: tuple[int, int],
        exclude: Nexus | None = None,
    ) -> None:
        """Queue a unit attention for one nexus, or (nexus None) every known one."""
        targets = [nexus] if nexus is not None else list(self._nexuses)
        for n in targets:
            if n != exclude:
                self._push_ua(lun_id, n, asc_ascq)

    def pop_ua(self, lun_id: int, nexus: Nexus) -> tuple[int, int] | None:
        if not self._ua:
            return None
        q = self._ua.get((lun_id, nexus))
        if not q:
            return None
        ua = q.popleft()
        if not q:
            del self._ua[(lun_id, nexus)]
        return ua

    def _see(self, nexus: Nexus) -> None:
        if nexus not in self._nexuses:
            self._nexuses.add(nexus)
            if self.power_on_ua:
                for lid in self.luns:
                    self._push_ua(lid, nexus, ASC_POWER_ON_RESET)

    def nexus_lost(self, initiator_port: str, target_port: str) -> None:
        """Session gone: forget its UAs and drop its SPC-2 reservations."""
        n = (initiator_port, target_port)
        self._nexuses.discard(n)
        for k in [k for k in self._ua if k[1] == n]:
            del self._ua[k]
        self.pr_store.nexus_lost(n)
        for lun in self.luns.values():
            lun.abort_task_set(initiator_port)

    def target_reset(self, on_done: Callable[[], None] | None = None) -> None:
        """TARGET WARM RESET: every task of every LUN aborted, SPC-2
        reservations dropped, a power-on unit attention for everyone;
        ``on_done`` once every aborted task has finished."""
        luns = list(self.luns.values())
        left = [len(luns) + 1]

        def one() -> None:
            left[0] -= 1
            if left[0] == 0 and on_done is not None:
                on_done()

        for lun in luns:
            lun.abort_task_set(None, one)
            self.pr_store.lun_reset(lun.lun_id)
            self.establish_ua(lun.lun_id, None, ASC_POWER_ON_RESET)
        one()

    def apply_pr_result(self, r: PrResult) -> None:
        for note in r.notices:
            self._push_ua(note.lun, note.nexus, note.asc_ascq)
        for n in r.abort_nexuses:
            for lun in self.luns.values():
                lun.abort_task_set(n[0])
            if self.on_abort_nexus is not None:
                self.on_abort_nexus(n)

    # ------------------------------------------------------------- execute
    def get_lun(self, lun_id: int) -> ScsiLun | None:
        return self.luns.get(lun_id)

    def fast_lun(self, lun_id: int, nexus: Nexus) -> ScsiLun | None:
        """The LUN when a plain READ/WRITE from `nexus` may skip the generic
        dispatch: the nexus is known, no unit attention is pending anywhere on
        this device, the LUN is present and holds no reservation of any kind.
        None means: use `execute` (it applies all of those rules)."""
        if self._ua or nexus not in self._nexuses:
            return None
        lun = self.luns.get(lun_id)
        if lun is None or lun.removed:
            return None
        st = self.pr_store.luns.get(lun_id)
        if st is not None and (st.rtype or st.legacy is not None):
            return None
        return lun

    def _tr_task(self, task: ScsiTask, done: Done) -> Done:
        """Tracepoints of one task (scsi group, called only while it is on)."""
        obj = self.tp_id
        tag = task.tag & 0xFFFFFFFF
        op = task.cdb[0] if task.cdb else 0
        TRACE.rec(_tr.TP_SCSI_TASK, obj, tag, task.lun, task.expected_transfer_length, op)

        def traced(t: ScsiTask) -> None:
            if TRACE.mask & G_SCSI:
                TRACE.rec(_tr.TP_SCSI_DONE, obj, tag, 0, 0, int(t.status))
            done(t)

        return traced

    def execute(self, task: ScsiTask, done: Done) -> None:
        if TRACE.mask & G_SCSI:
            done = self._tr_task(task, done)
        self._see((task.initiator_port, task.target_port))
        lun = self.luns.get(task.lun)
        if lun is not None:
            lun.execute(task, done)
            return
        # no such LUN: answer the commands SPC-4 requires of every LUN
        task.status = GOOD
        try:
            op = task.cdb[0] if task.cdb else -1
            if op == C.REPORT_LUNS:
                spc.report_luns(list(self.luns), task)
            elif op == C.INQUIRY:
                task.set_data(inquiry.inquiry(None, task), C.be(task.cdb, 3, 2))
            elif op == C.REQUEST_SENSE:
                spc.request_sense(None, task, lun_not_supported_sense())
            elif op == -1:
                raise invalid_opcode()
            else:
                task.check_condition(lun_not_supported_sense())
        except SenseError as e:
            task.check_condition(e.sense)
        done(task)


__all__ = ["ScsiDevice", "build_sense"]
