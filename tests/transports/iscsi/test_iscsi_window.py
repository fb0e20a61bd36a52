"""The CmdSN window bounds outstanding commands: MaxCmdSN advances when
commands complete, immediate commands count against the same bound."""

from __future__ import annotations

from typing import Any

from blockfabric.transports.iscsi import pdu as P
from blockfabric.transports.iscsi.session import Session


def _deferred(kit: Any, qd: int = 4) -> Any:
    st = kit.make_state(max_queue_depth=qd)
    h = kit.Harness(st)
    h.login()
    h.env.dev.defer = True
    return h


def test_max_queue_depth_caps_target_queue_depth(kit: Any) -> None:
    h = _deferred(kit, qd=4)
    s = h.conn.session
    assert s.queue_depth == 4 and s.max_cmdsn == s.exp_cmdsn + 3


def test_maxcmdsn_moves_on_completion_not_arrival(kit: Any) -> None:
    h = _deferred(kit, qd=4)
    s = h.conn.session
    mx0 = s.max_cmdsn
    for _ in range(4):
        assert h.cmd(b"\0" * 6, 0) == []  # deferred: no response yet
    assert s.max_cmdsn == mx0 and s.free_slots() == 0 and s.outstanding == 4
    # a fifth command is beyond MaxCmdSN: dropped and counted
    assert h.cmd(b"\0" * 6, 0) == []
    assert s.stats["cmdsn_dropped"] == 1 and len(h.env.dev.pending) == 4
    h.cmdsn -= 1  # the dropped CmdSN was never consumed
    # one completion opens exactly one slot, announced in that response
    task, done = h.env.dev.pending.pop(0)
    n = len(h.out)
    h.env.dev.run(task)
    done(task)
    r = kit.decode(h.out[n])
    assert r.opcode == P.OP_SCSI_RESP and r.w32 == mx0 + 1
    assert s.max_cmdsn == mx0 + 1 and s.outstanding == 3
    assert h.cmd(b"\0" * 6, 0) == [] and len(h.env.dev.pending) == 4


def test_immediate_commands_count_against_the_window(kit: Any) -> None:
    h = _deferred(kit, qd=4)
    s = h.conn.session
    for _ in range(2):
        h.cmd(b"\0" * 6, 0)
    for _ in range(2):
        assert h.cmd(b"\0" * 6, 0, immediate=True) == []
    assert s.outstanding == 2 and s.outstanding_immediate == 2
    # the session runs queue_depth commands: the next immediate one is refused
    r = h.cmd(b"\0" * 6, 0, immediate=True)
    assert r[0].opcode == P.OP_SCSI_RESP and r[0].b3 == 0x28  # TASK SET FULL
    assert s.stats["immediate_refused"] == 1 and len(h.env.dev.pending) == 4
    # completions of non-immediate commands do not reopen the window while
    # immediate ones still hold slots
    mx = s.max_cmdsn
    for task, done in h.env.dev.pending[:2]:
        h.env.dev.run(task)
        done(task)
    assert s.max_cmdsn == mx  # 2 free CmdSNs + 2 immediate outstanding = 4
    for task, done in h.env.dev.pending[2:]:
        h.env.dev.run(task)
        done(task)
    assert s.max_cmdsn == mx + 2 and s.free_slots() == 4


def test_flood_of_immediate_commands_is_bounded(kit: Any) -> None:
    h = _deferred(kit, qd=8)
    for _ in range(1000):
        h.cmd(b"\0" * 6, 0, immediate=True)
    assert len(h.env.dev.pending) == 8
    assert h.conn.session.stats["immediate_refused"] == 992


def test_aborted_and_closed_tasks_release_their_slots(kit: Any) -> None:
    h = _deferred(kit, qd=4)
    s = h.conn.session
    for _ in range(4):
        h.cmd(b"\0" * 6, 0)
    assert s.free_slots() == 0
    h.conn.close("test")
    assert s.outstanding == 0


def test_session_window_arithmetic_wraps() -> None:
    from blockfabric.transports.iscsi.params import SessionParams

    s = Session(1, 1, "i", None, SessionParams(), 0xFFFFFFFE, 1, 4)
    assert s.max_cmdsn == 1
    ran: list[int] = []
    for sn in (0xFFFFFFFE, 0xFFFFFFFF, 0, 1):
        assert s.order(sn, False, lambda sn=sn: ran.append(sn), lambda: lambda: None)
    assert s.free_slots() == 0 and not s.in_window(2)
    s.done(False)
    assert s.max_cmdsn == 2 and s.in_window(2)
