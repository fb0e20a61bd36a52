"""iSCSI sessions: the CmdSN window and command ordering shared by the
connections of a session (RFC 7143 sections 3.2.2 and 4.2.2), and the
reactor-local session table (a target's sessions all live on its home reactor,
so reinstatement and MC/S need no cross-process state)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .params import SessionParams

if TYPE_CHECKING:
    from .connection import Connection
    from .nodes import TargetView


def sn_lt(a: int, b: int) -> bool:
    """Serial number arithmetic (RFC 1982, 32 bits): a < b."""
    return a != b and ((b - a) & 0xFFFFFFFF) < 0x80000000


def sn_le(a: int, b: int) -> bool:
    return a == b or sn_lt(a, b)


class Session:
    def __init__(
        self,
        tsih: int,
        isid: int,
        initiator_name: str,
        target: TargetView | None,
        params: SessionParams,
        cmdsn: int,
        pg_tag: int,
        queue_depth: int = 64,
    ) -> None:
        self.tsih = tsih
        self.isid = isid
        self.initiator_name = initiator_name
        self.target = target
        self.target_name = target.name if target else ""
        self.discovery = target is None
        self.params = params
        self.max_connections = params.max_connections
        self.pg_tag = pg_tag
        self.queue_depth = max(1, queue_depth)
        self.exp_cmdsn = cmdsn & 0xFFFFFFFF
        # MaxCmdSN moves when commands complete, not when they arrive: the
        # free window plus the commands outstanding never exceed queue_depth
        self.max_cmdsn = (self.exp_cmdsn + self.queue_depth - 1) & 0xFFFFFFFF
        self.outstanding = 0  # delivered non-immediate commands not yet finished
        self.outstanding_immediate = 0
        self.stats = {"cmdsn_dropped": 0, "immediate_refused": 0}
        self.connections: list[Connection] = []
        # commands that arrived ahead of ExpCmdSN (MC/S): cmdsn -> deliver()
        self._ahead: dict[int, Callable[[], None]] = {}
        # CmdSNs aborted (ABORT TASK) before they arrived: skipped on arrival
        self._aborted_sns: set[int] = set()
        # ITT -> task object of any connection (task management looks here)
        self.tasks: dict[int, Any] = {}
        self.initiator_port = f"{initiator_name},i,0x{isid:012x}"
        self.target_port = f"{self.target_name},t,0x{pg_tag:04x}"
        self.nexus = (self.initiator_port, self.target_port)
        self.closed = False

    # ------------------------------------------------------------ tasks
    def add_task(self, itt: int, task: Any) -> None:
        self.tasks[itt] = task

    def task(self, itt: int) -> Any:
        return self.tasks.get(itt)

    def remove_task(self, itt: int, task: Any) -> None:
        """Forget ``task`` under ``itt`` (only if it is still that task)."""
        if self.tasks.get(itt) is task:
            del self.tasks[itt]

    def tasks_of_lun(self, lun: int) -> list[Any]:
        return [t for t in self.tasks.values() if t.lun == lun]

    def all_tasks(self) -> list[Any]:
        return list(self.tasks.values())

    # ------------------------------------------------------ connections
    def attach(self, conn: Connection) -> None:
        self.connections.append(conn)

    def detach(self, conn: Connection) -> bool:
        """``conn`` is gone; True when it was the last one (the session is
        closed then, and the caller removes it from the registry)."""
        if conn in self.connections:
            self.connections.remove(conn)
        if self.connections:
            return False
        self.closed = True
        return True

    def connection(self, cid: int) -> Connection | None:
        return next((c for c in self.connections if c.cid == cid), None)

    def free_slots(self) -> int:
        """CmdSNs the initiator may still use: [ExpCmdSN, MaxCmdSN]."""
        return (self.max_cmdsn + 1 - self.exp_cmdsn) & 0xFFFFFFFF

    def took(self) -> None:
        """A non-immediate command was delivered (ExpCmdSN passed it)."""
        self.outstanding += 1

    def take_immediate(self) -> bool:
        """Admit an immediate command that will hold resources (a SCSI
        command): it counts against the window like any other, so it is
        refused when the session already has queue_depth commands running."""
        if self.outstanding + self.outstanding_immediate >= self.queue_depth:
            self.stats["immediate_refused"] += 1
            return False
        self.outstanding_immediate += 1
        return True

    def done(self, immediate: bool) -> None:
        """A command finished (response sent, aborted or dropped): its slot
        opens the window again unless immediate commands hold it.

        The window invariant: free CmdSNs + commands outstanding never exceed
        queue_depth, and MaxCmdSN never moves back. So MaxCmdSN becomes
        ExpCmdSN + queue_depth - 1 - outstanding when that is further on
        (one subtraction, no loop: this runs once per command)."""
        if immediate:
            if self.outstanding_immediate:
                self.outstanding_immediate -= 1
        elif self.outstanding:
            self.outstanding -= 1
        want = (
            self.exp_cmdsn + self.queue_depth - 1 - self.outstanding - self.outstanding_immediate
        ) & 0xFFFFFFFF
        # grow only: `want` lies ahead of MaxCmdSN by less than queue_depth
        if (want - self.max_cmdsn) & 0xFFFFFFFF <= self.queue_depth and want != self.max_cmdsn:
            self.max_cmdsn = want

    def next_in_order(self, cmdsn: int) -> bool:
        """The hot path of `order` for a non-immediate command: True when
        ``cmdsn`` is ExpCmdSN, nothing waits ahead of it, no abort marks it
        and the window is open; the command is then taken (ExpCmdSN moves on,
        it counts as outstanding) and must be run by the caller. False: the
        caller goes through `order`, which handles every other case."""
        if (
            cmdsn != self.exp_cmdsn
            or self._ahead
            or self._aborted_sns
            or self.max_cmdsn == (cmdsn - 1) & 0xFFFFFFFF
        ):
            return False
        self.exp_cmdsn = (cmdsn + 1) & 0xFFFFFFFF
        self.outstanding += 1
        return True

    def connection_count(self) -> int:
        return len(self.connections)

    def in_window(self, cmdsn: int) -> bool:
        return sn_le(self.exp_cmdsn, cmdsn) and sn_le(cmdsn, self.max_cmdsn)

    def order(
        self,
        cmdsn: int,
        immediate: bool,
        deliver: Callable[[], None],
        keep: Callable[[], Callable[[], None]],
    ) -> bool:
        """Deliver a command in CmdSN order. Immediate commands go at once.
        ``keep()`` returns a deliver function that owns copies of the PDU's
        buffers (called only when the command must wait). Returns False when
        the command is outside the window and was dropped (RFC 7143 3.2.2.1)."""
        if immediate:
            deliver()
            return True
        if not self.in_window(cmdsn):
            self.stats["cmdsn_dropped"] += 1
            return False
        if cmdsn != self.exp_cmdsn:
            if cmdsn not in self._ahead:
                self._ahead[cmdsn] = keep()
            return True
        self.exp_cmdsn = (self.exp_cmdsn + 1) & 0xFFFFFFFF
        self.outstanding += 1
        if not self._aborted_sns or not self._skip(cmdsn):
            deliver()
        else:
            self.done(False)
        while self._ahead:
            nxt = self._ahead.pop(self.exp_cmdsn, None)
            if nxt is None:
                break
            self.exp_cmdsn = (self.exp_cmdsn + 1) & 0xFFFFFFFF
            self.outstanding += 1
            nxt()
        return True

    def _done_window(self) -> None:
        self.done(False)

    def _skip(self, cmdsn: int) -> bool:
        if cmdsn in self._aborted_sns:
            self._aborted_sns.discard(cmdsn)
            return True
        # forget marks the window has left behind
        self._aborted_sns = {x for x in self._aborted_sns if self.in_window(x)}
        return False

    def discard_pending(self, cmdsn: int) -> None:
        """An aborted command that is still waiting for a CmdSN gap: it keeps
        its place in the order but does nothing when its turn comes."""
        if cmdsn in self._ahead:
            self._ahead[cmdsn] = self._done_window
        elif len(self._aborted_sns) < 1024:
            self._aborted_sns.add(cmdsn)

    def close(self) -> None:
        """Close every connection (logout of the session, reinstatement)."""
        if self.closed:
            return
        self.closed = True
        for c in list(self.connections):
            c.close("session closed")
        self.connections.clear()


class SessionRegistry:
    """The sessions of one reactor (implements login.SessionTable)."""

    def __init__(self, reactor_id: int = 0, num_reactors: int = 1) -> None:
        self.sessions: dict[int, Session] = {}
        self._next = 0
        self._rid = reactor_id
        self._n = max(1, num_reactors)

    def by_tsih(self, tsih: int) -> Session | None:
        return self.sessions.get(tsih)

    def find(self, initiator_name: str, isid: int, target_name: str) -> Session | None:
        iname, tname = initiator_name.lower(), target_name.lower()
        for s in self.sessions.values():
            if (
                s.isid == isid
                and s.initiator_name.lower() == iname
                and s.target_name.lower() == tname
            ):
                return s
        return None

    def alloc_tsih(self) -> int:
        # reactor id in the low bits keeps TSIHs distinct across reactors
        for _ in range(0x10000):
            self._next = (self._next + 1) % (0x10000 // self._n)
            tsih = self._next * self._n + self._rid
            if tsih and tsih <= 0xFFFF and tsih not in self.sessions:
                return tsih
        raise RuntimeError("no free TSIH")

    def count(self) -> int:
        return len(self.sessions)

    def add(self, s: Session) -> None:
        self.sessions[s.tsih] = s

    def remove(self, s: Session) -> None:
        if self.sessions.get(s.tsih) is s:
            del self.sessions[s.tsih]
