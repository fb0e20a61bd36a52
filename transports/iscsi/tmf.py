"""Task management (RFC 7143 11.5-11.6): ABORT TASK, ABORT TASK SET, LUN
RESET, TARGET WARM RESET. "Function complete" goes out only once every
affected task has really finished: its SCSI execution (and so its last bdev
write) or its fast-path read completed (RFC 7143 11.5; issue 8)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from . import pdu as P
from .session import Session, sn_le, sn_lt
from .tasks import DeviceLike, Task

if TYPE_CHECKING:
    from .connection import Connection

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


class _Pending:
    """Counts what a TMF waits for; the response goes when it reaches 0."""

    __slots__ = ("conn", "itt", "resp", "left")

    def __init__(self, conn: Connection, itt: int) -> None:
        self.conn = conn
        self.itt = itt
        self.resp = TMF_RSP_COMPLETE
        self.left = 1  # a guard: the response cannot go before handle() ends

    def wait_for(self) -> Callable[[], None]:
        self.left += 1
        return self.one_done

    def one_done(self) -> None:
        self.left -= 1
        c = self.conn
        if self.left == 0 and c.state == "ffp":
            sn, exp, mx = c.status_words()
            c.send(
                c.encode(P.OP_TMF_RESP, 0x80, self.resp, 0, 0, self.itt, (0, sn, exp, mx, 0, 0, 0))
            )


def handle(conn: Connection, pdu: P.Pdu) -> None:
    """One Task Management Function Request of ``conn``."""
    s = conn.session
    assert s is not None
    fn = pdu.function
    lun_id = P.lun_to_int(pdu.lun)
    dev = conn.env.device(s.target_name)
    p = _Pending(conn, pdu.itt)
    if fn == TMF_ABORT_TASK:
        t = s.task(pdu.ref_task_tag)
        if t is not None:
            _abort(conn, dev, s, t, p)
        else:
            p.resp = _abort_missing(s, pdu.w32, pdu.cmdsn)
    elif fn in (TMF_ABORT_TASK_SET, TMF_LUN_RESET):
        lun = dev.get_lun(lun_id) if dev is not None else None
        if lun is None:
            p.resp = TMF_RSP_NO_LUN
        else:
            for t in s.tasks_of_lun(lun_id):
                _abort(conn, dev, s, t, p)
            if fn == TMF_LUN_RESET:
                # other initiators' tasks on the LUN go as well
                lun.reset(p.wait_for())
            else:
                lun.abort_task_set(s.initiator_port, p.wait_for())
    elif fn == TMF_TARGET_WARM_RESET:
        for t in s.all_tasks():
            _abort(conn, dev, s, t, p)
        if dev is not None:
            dev.target_reset(p.wait_for())
    else:
        p.resp = TMF_RSP_NOT_SUPPORTED
    p.one_done()


def _abort(conn: Connection, dev: DeviceLike | None, s: Session, t: Task, p: _Pending) -> None:
    owner: Connection = t.conn or conn
    owner.drop_task(t, abort=True)
    if t.io:
        t.waiters.append(p.wait_for())
    if t.scsi is not None and dev is not None:
        lun = dev.get_lun(t.lun)
        if lun is not None:
            lun.abort_task(t.itt, s.initiator_port)


def _abort_missing(s: Session, refcmdsn: int, cmdsn: int) -> int:
    """ABORT TASK for a tag we do not know (RFC 7143 11.5.1): a command not yet
    received (RefCmdSN still in the window, before the TMF) counts as received
    and aborted; one already done (RefCmdSN below ExpCmdSN) does not exist."""
    if sn_le(s.exp_cmdsn, refcmdsn) and sn_lt(refcmdsn, cmdsn):
        s.discard_pending(refcmdsn)
        return TMF_RSP_COMPLETE
    return TMF_RSP_NO_TASK
