"""One logical unit: command dispatch, unit attentions, reservation checks,
in-flight tracking for task management and hot-remove."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from blockfabric.bdevs.base import Bdev, IoChannel, IoStatus
from blockfabric.control.hostlog import HostLog

from . import cdb as C
from . import inquiry, sbc, spc
from .mode import ModePages
from .sense import (
    ASC_BUS_DEVICE_RESET,
    ASC_INTERNAL_TARGET_FAILURE,
    ASC_INVALID_OPCODE,
    ASC_LBA_OUT_OF_RANGE,
    ASC_LUN_NOT_SUPPORTED,
    ASC_MISCOMPARE_VERIFY,
    ASC_MODE_PARAMS_CHANGED,
    ASC_UNRECOVERED_READ,
    ASC_WRITE_ERROR,
    BUSY,
    CHECK_CONDITION,
    GOOD,
    HARDWARE_ERROR,
    ILLEGAL_REQUEST,
    MEDIUM_ERROR,
    MISCOMPARE,
    RESERVATION_CONFLICT,
    TASK_ABORTED,
    UNIT_ATTENTION,
    SenseError,
    build_sense,
    invalid_cdb,
    invalid_opcode,
    param_list_length,
)
from .task import ScsiTask

if TYPE_CHECKING:
    from .device import ScsiDevice

log = logging.getLogger(__name__)

Done = Callable[[ScsiTask], None]
Handler = Callable[["ScsiLun", ScsiTask, Done], None]

# commands that neither report nor clear a pending unit attention (SAM-5 5.14)
_UA_EXEMPT = frozenset({C.INQUIRY, C.REPORT_LUNS, C.REQUEST_SENSE})


def _sync(fn: Callable[[ScsiLun, ScsiTask], None]) -> Handler:
    def h(lun: ScsiLun, task: ScsiTask, fin: Done) -> None:
        fn(lun, task)
        fin(task)

    return h


# bytes of one READ/WRITE (Block Limits VPD); libiscsi's WRITE SAME tests
# write 65536 blocks of 512 bytes in one command
DEFAULT_MAX_TRANSFER = 32 * 1024 * 1024
CAW_BUFFER = 128 * 1024  # compare + write data of one COMPARE AND WRITE (one pool chunk)

Key = tuple[str, int, int]  # (initiator port, tag, offset of a piece of the transfer)


class ScsiLun:
    # limits reported in the Block Limits VPD page
    max_caw_blocks = 255
    max_transfer_blocks = 0  # 0: no limit
    max_unmap_lba_count = 0xFFFFFFFF
    max_unmap_descriptors = 4096
    max_write_same_blocks = 0  # 0: no limit

    def __init__(
        self,
        lun_id: int,
        bdev: Bdev,
        channel_getter: Callable[[], IoChannel | None],
        device: ScsiDevice,
        iobufs: Any = None,
        max_transfer_bytes: int = DEFAULT_MAX_TRANSFER,
        mode_path: str | None = None,
    ) -> None:
        self.lun_id = lun_id
        self.bdev = bdev
        self.channel_getter = channel_getter
        # the channel the transports' fast paths last got (refreshed when removed)
        self.fast_channel: IoChannel | None = None
        self.device = device
        # mode pages; saved values (MODE SELECT SP=1, e.g. WCE) persist in mode_path
        self.mode = ModePages(mode_path)
        self.read_only = False
        self.removed = False
        self.inflight: dict[Key, ScsiTask] = {}
        self._on_gone: Callable[[], None] | None = None
        # task-management waits: (which tasks, callback once none is in flight)
        self._idle_waiters: list[tuple[Callable[[Key], bool], Callable[[], None]]] = []
        # internal errors while executing a command: logged rate-limited (a
        # host that can trigger one must not flood the log)
        self.errors = HostLog(log, f"scsi {device.name} lun {lun_id}")
        bs = bdev.block_size
        self.optimal_transfer_blocks = max(1, (1 << 20) // bs)
        self.max_transfer_blocks = max(1, max_transfer_bytes // bs)
        # the compare and the write data of one COMPARE AND WRITE fit one chunk
        self.max_caw_blocks = max(1, min(255, CAW_BUFFER // (2 * bs)))
        # transfer buffers from the shared pool (shm/iobuf.IoBufs); reads of a
        # bdev that copies (aio, nvme) are staged there, malloc stays zero-copy
        self.iobufs = iobufs
        self.stage_reads = iobufs is not None and bdev.MODULE in ("aio", "nvme")

    # ----------------------------------------------------------- helpers
    def channel(self) -> IoChannel:
        ch = self.channel_getter()
        if ch is None or self.removed:
            raise SenseError(ILLEGAL_REQUEST, ASC_LUN_NOT_SUPPORTED)
        return ch

    def io_error(self, task: ScsiTask, st: IoStatus, read: bool) -> None:
        """Map a bdev completion status onto SCSI status/sense."""
        if st == IoStatus.NOMEM:
            task.status, task.sense, task.data_in = BUSY, b"", []
            return
        if st == IoStatus.OUT_OF_RANGE:
            sense = build_sense(ILLEGAL_REQUEST, *ASC_LBA_OUT_OF_RANGE)
        elif st == IoStatus.REMOVED:
            sense = build_sense(ILLEGAL_REQUEST, *ASC_LUN_NOT_SUPPORTED)
        elif st == IoStatus.MISCOMPARE:
            sense = build_sense(MISCOMPARE, *ASC_MISCOMPARE_VERIFY)
        elif st == IoStatus.UNSUPPORTED:
            sense = build_sense(ILLEGAL_REQUEST, *ASC_INVALID_OPCODE)
        else:
            sense = build_sense(MEDIUM_ERROR, *(ASC_UNRECOVERED_READ if read else ASC_WRITE_ERROR))
        task.check_condition(sense)

    # ----------------------------------------------------------- execute
    def execute(self, task: ScsiTask, done: Done) -> None:
        """Run one command; `done(task)` is called exactly once, maybe before return."""
        task.status = GOOD
        try:
            cdb = task.cdb
            if not cdb:
                raise invalid_opcode()
            op = cdb[0]
            if self.removed:
                task.check_condition(build_sense(ILLEGAL_REQUEST, *ASC_LUN_NOT_SUPPORTED))
                done(task)
                return
            handler = _HANDLERS.get(op)
            if handler is None:
                raise invalid_opcode()
            if len(cdb) < C.cdb_length(op):
                raise invalid_cdb(0)
            nexus = (task.initiator_port, task.target_port)
            dev = self.device
            if op not in _UA_EXEMPT and not task.offset:
                ua = dev.pop_ua(self.lun_id, nexus)
                if ua is not None:
                    task.check_condition(build_sense(UNIT_ATTENTION, *ua))
                    done(task)
                    return
            if not dev.pr_store.check_access(self.lun_id, nexus, cdb):
                task.status = RESERVATION_CONFLICT
                done(task)
                return
        except SenseError as e:
            task.check_condition(e.sense)
            done(task)
            return
        key = (task.initiator_port, task.tag, task.offset)
        self.inflight[key] = task

        def fin(t: ScsiTask, _done: Done = done, _key: Key = key) -> None:
            if self.inflight.get(_key) is t:
                del self.inflight[_key]
            if t.aborted:
                t.status, t.sense, t.data_in = TASK_ABORTED, b"", []
            _done(t)
            if self._idle_waiters:
                self._wake_idle()
            if self.removed and not self.inflight:
                self._gone()

        try:
            handler(self, task, fin)
        except SenseError as e:
            task.check_condition(e.sense)
            fin(task)
        except Exception:  # never let a command take the reactor down
            self.errors.event(logging.ERROR, "internal error in %s", task, exc_info=True)
            if self.inflight.get(key) is task:
                task.check_condition(build_sense(HARDWARE_ERROR, *ASC_INTERNAL_TARGET_FAILURE))
                fin(task)

    # ------------------------------------------------- task management
    def abort_task(
        self, tag: int, initiator_port: str, on_done: Callable[[], None] | None = None
    ) -> bool:
        """ABORT TASK: the task (every piece of it) completes with TASK ABORTED
        status when its I/O returns (the transport may then drop the
        response); ``on_done`` runs once none of it is in flight any more, so
        "function complete" goes out only after the medium saw its last
        write (RFC 7143 11.5). False if unknown (``on_done`` runs at once)."""

        def match(k: Key) -> bool:
            return k[0] == initiator_port and k[1] == tag

        return self._abort(match, on_done) > 0

    def abort_task_set(
        self, initiator_port: str | None = None, on_done: Callable[[], None] | None = None
    ) -> int:
        """ABORT TASK SET (one initiator) or every task (None); ``on_done``
        once none of them is in flight."""

        def match(k: Key) -> bool:
            return initiator_port is None or k[0] == initiator_port

        return self._abort(match, on_done)

    def _abort(self, match: Callable[[Key], bool], on_done: Callable[[], None] | None) -> int:
        n = 0
        for k, t in self.inflight.items():
            if match(k):
                t.aborted = True
                n += 1
        if on_done is not None:
            if n:
                self._idle_waiters.append((match, on_done))
            else:
                on_done()
        return n

    def _wake_idle(self) -> None:
        ready = [w for w in self._idle_waiters if not any(w[0](k) for k in self.inflight)]
        if not ready:
            return
        self._idle_waiters = [w for w in self._idle_waiters if w not in ready]
        for _, cb in ready:
            cb()

    def reset(self, on_done: Callable[[], None] | None = None) -> None:
        """LOGICAL UNIT RESET: abort every task, drop SPC-2 reservations (persistent
        ones survive), and tell every I_T nexus with a unit attention 29h/03h;
        ``on_done`` once every aborted task has finished."""
        self.abort_task_set(None, on_done)
        self.device.pr_store.lun_reset(self.lun_id)
        self.device.establish_ua(self.lun_id, None, ASC_BUS_DEVICE_RESET)

    def hot_remove(self, on_gone: Callable[[], None] | None = None) -> None:
        """New commands fail with LOGICAL UNIT NOT SUPPORTED; `on_gone` runs once
        the in-flight ones have completed (maybe immediately)."""
        self.removed = True
        self._on_gone = on_gone
        if not self.inflight:
            self._gone()

    def _gone(self) -> None:
        cb, self._on_gone = self._on_gone, None
        if cb is not None:
            cb()


# ------------------------------------------------------------------ SPC glue
def _inquiry(lun: ScsiLun, task: ScsiTask) -> None:
    task.set_data(inquiry.inquiry(lun, task), C.be(task.cdb, 3, 2))


def _request_sense(lun: ScsiLun, task: ScsiTask) -> None:
    ua = lun.device.pop_ua(lun.lun_id, (task.initiator_port, task.target_port))
    spc.request_sense(lun, task, build_sense(UNIT_ATTENTION, *ua) if ua else None)


def _report_luns(lun: ScsiLun, task: ScsiTask) -> None:
    spc.report_luns(list(lun.device.luns), task)


def _mode_sense(lun: ScsiLun, task: ScsiTask) -> None:
    wp = lun.mode.swp or lun.read_only
    data = lun.mode.sense(task.cdb, lun.bdev.block_size, lun.bdev.num_blocks, wp)
    task.set_data(data, C.allocation_length(task.cdb))


def _mode_select(lun: ScsiLun, task: ScsiTask) -> None:
    cdb = task.cdb
    plen = C.be(cdb, 7, 2) if cdb[0] == C.MODE_SELECT_10 else cdb[4]
    if task.data_out_length() < plen:
        raise param_list_length()
    param = task.data_out if task.data_out is not None else memoryview(b"")
    if lun.mode.select(cdb, param, lun.bdev.block_size):
        lun.device.establish_ua(
            lun.lun_id,
            None,
            ASC_MODE_PARAMS_CHANGED,
            exclude=(task.initiator_port, task.target_port),
        )


def _maintenance_in(lun: ScsiLun, task: ScsiTask) -> None:
    if task.cdb[1] & 0x1F != C.MI_REPORT_SUPPORTED_OPCODES:
        raise invalid_cdb(1, 4)
    spc.report_supported_opcodes(lun, task)


def _pr_in(lun: ScsiLun, task: ScsiTask) -> None:
    r = lun.device.pr_store.pr_in(lun.lun_id, (task.initiator_port, task.target_port), task.cdb)
    _apply_pr(lun, task, r)
    if r.status == GOOD:
        task.set_data(r.data, C.be(task.cdb, 7, 2))


def _pr_out(lun: ScsiLun, task: ScsiTask) -> None:
    cdb = task.cdb
    param = task.data_out if task.data_out is not None else memoryview(b"")
    r = lun.device.pr_store.pr_out(lun.lun_id, (task.initiator_port, task.target_port), cdb, param)
    _apply_pr(lun, task, r)


def _legacy(lun: ScsiLun, task: ScsiTask) -> None:
    cdb = task.cdb
    store = lun.device.pr_store
    nexus = (task.initiator_port, task.target_port)
    if cdb[0] == C.RESERVE_10 and cdb[1] & 0x02:
        raise invalid_cdb(1, 1)  # third-party reservations are not supported
    if cdb[0] == C.RESERVE_6 and cdb[1] & 0x01:
        raise invalid_cdb(1, 0)  # extent reservations are obsolete
    if cdb[0] in (C.RESERVE_6, C.RESERVE_10):
        r = store.legacy_reserve(lun.lun_id, nexus)
    else:
        r = store.legacy_release(lun.lun_id, nexus)
    _apply_pr(lun, task, r)


def _apply_pr(lun: ScsiLun, task: ScsiTask, r: object) -> None:
    from .pr import PrResult

    assert isinstance(r, PrResult)
    lun.device.apply_pr_result(r)
    if r.status == CHECK_CONDITION:
        task.check_condition(r.sense)
    else:
        task.status = r.status


_HANDLERS: dict[int, Handler] = {
    C.TEST_UNIT_READY: _sync(spc.test_unit_ready),
    C.REQUEST_SENSE: _sync(_request_sense),
    C.INQUIRY: _sync(_inquiry),
    C.REPORT_LUNS: _sync(_report_luns),
    C.MODE_SENSE_6: _sync(_mode_sense),
    C.MODE_SENSE_10: _sync(_mode_sense),
    C.MODE_SELECT_6: _sync(_mode_select),
    C.MODE_SELECT_10: _sync(_mode_select),
    C.START_STOP_UNIT: _sync(spc.start_stop_unit),
    C.MAINTENANCE_IN: _sync(_maintenance_in),
    C.PERSISTENT_RESERVE_IN: _sync(_pr_in),
    C.PERSISTENT_RESERVE_OUT: _sync(_pr_out),
    C.RESERVE_6: _sync(_legacy),
    C.RESERVE_10: _sync(_legacy),
    C.RELEASE_6: _sync(_legacy),
    C.RELEASE_10: _sync(_legacy),
    C.READ_6: sbc.read,
    C.READ_10: sbc.read,
    C.READ_12: sbc.read,
    C.READ_16: sbc.read,
    C.WRITE_6: sbc.write,
    C.WRITE_10: sbc.write,
    C.WRITE_12: sbc.write,
    C.WRITE_16: sbc.write,
    C.ORWRITE_16: sbc.orwrite,
    C.WRITE_VERIFY_10: sbc.write_verify,
    C.WRITE_VERIFY_12: sbc.write_verify,
    C.WRITE_VERIFY_16: sbc.write_verify,
    C.VERIFY_10: sbc.verify,
    C.VERIFY_12: sbc.verify,
    C.VERIFY_16: sbc.verify,
    C.COMPARE_AND_WRITE: sbc.compare_and_write,
    C.UNMAP: sbc.unmap,
    C.WRITE_SAME_10: sbc.write_same,
    C.WRITE_SAME_16: sbc.write_same,
    C.SYNCHRONIZE_CACHE_10: sbc.sync_cache,
    C.SYNCHRONIZE_CACHE_16: sbc.sync_cache,
    C.PRE_FETCH_10: sbc.pre_fetch,
    C.PRE_FETCH_16: sbc.pre_fetch,
    C.READ_CAPACITY_10: sbc.read_capacity_10,
    C.SERVICE_ACTION_IN_16: sbc.service_action_in,
}
