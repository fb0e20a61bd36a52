"""Full feature phase against a fake SCSI device."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from blockfabric.transports.iscsi import pdu as P


def _status(r: P.Pdu) -> tuple[int, int]:
    return r.w36 >> 24, (r.w36 >> 16) & 0xFF


def test_login_then_read_collapsed_status(kit: Any) -> None:
    h = kit.Harness()
    final = h.login()
    assert final.opcode == P.OP_LOGIN_RESP and final.transit and final.nsg == 3
    assert final.tsih != 0
    h.env.dev.blocks[0:1024] = bytes(range(256)) * 4
    r = h.cmd(kit.read10(0, 2), 1024, read=True)
    assert [p.opcode for p in r] == [P.OP_DATA_IN]
    d = r[0]
    assert d.f1 & P.F_FINAL and d.f1 & P.F_STATUS and d.b3 == 0
    assert bytes(d.data) == bytes(range(256)) * 4
    assert d.w44 == 0 and d.datasn == 0 and d.buffer_offset == 0


def test_read_split_by_initiator_mrdsl(kit: Any) -> None:
    h = kit.Harness()
    h.login(extra=[])
    h.conn.set_max_xmit_dlen(512)
    r = h.cmd(kit.read10(0, 3), 1536, read=True)
    assert [p.datasn for p in r] == [0, 1, 2]
    assert [p.buffer_offset for p in r] == [0, 512, 1024]
    assert not r[0].f1 & P.F_STATUS and r[2].f1 & P.F_STATUS
    # StatSN only in the PDU with status
    assert r[0].w24 == 0


def test_read_underflow_and_overflow(kit: Any) -> None:
    h = kit.Harness()
    h.login()
    r = h.cmd(kit.read10(0, 1), 4096, read=True)
    assert r[-1].f1 & P.F_UNDERFLOW and r[-1].w44 == 4096 - 512
    r = h.cmd(kit.read10(0, 2), 512, read=True)
    assert len(r[0].data) == 512
    assert r[-1].f1 & P.F_OVERFLOW and r[-1].w44 == 512


def test_check_condition_sends_separate_response_with_sense(kit: Any) -> None:
    h = kit.Harness()
    h.login()
    r = h.cmd(bytes([0xEE] + [0] * 9), 0)
    assert len(r) == 1 and r[0].opcode == P.OP_SCSI_RESP
    assert r[0].b3 == 2
    slen = struct.unpack(">H", r[0].data[:2])[0]
    assert slen == 18 and r[0].data[2 + 12] == 0x20


def test_write_immediate_data(kit: Any) -> None:
    h = kit.Harness()
    h.login()
    r = h.cmd(kit.write10(1, 1), 512, write=True, data=b"\xab" * 512)
    assert r[0].opcode == P.OP_SCSI_RESP and r[0].b3 == 0
    assert h.env.dev.blocks[512:1024] == b"\xab" * 512


def test_write_r2t_sequence_with_max_outstanding(kit: Any) -> None:
    st = kit.make_state(max_r2t_per_connection=2)
    h = kit.Harness(st)
    h.login(
        extra=[
            ("MaxOutstandingR2T", "4"),
            ("MaxBurstLength", "1024"),
            ("FirstBurstLength", "512"),
            ("ImmediateData", "No"),
        ]
    )
    assert h.conn.session.params.max_outstanding_r2t == 2
    itt = 0x999
    r = h.cmd(kit.write10(0, 8), 4096, write=True, itt=itt)
    assert [p.opcode for p in r] == [P.OP_R2T, P.OP_R2T]
    assert [(p.w36, p.w40, p.w44) for p in r] == [(0, 0, 1024), (1, 1024, 1024)]
    payload = bytes(range(256)) * 16
    out = h.data_out(itt, r[0].ttt, 0, 0, payload[:512], False)
    assert out == []
    out = h.data_out(itt, r[0].ttt, 1, 512, payload[512:1024], True)
    # first burst done: one more R2T keeps two outstanding
    assert [p.opcode for p in out] == [P.OP_R2T] and out[0].w40 == 2048 and out[0].w36 == 2
    out += h.data_out(itt, r[1].ttt, 0, 1024, payload[1024:2048], True)
    assert out[-1].opcode == P.OP_R2T and out[-1].w40 == 3072
    res = h.data_out(itt, out[0].ttt, 0, 2048, payload[2048:3072], True)
    assert res == []
    res += h.data_out(itt, out[1].ttt, 0, 3072, payload[3072:], True)
    assert res[-1].opcode == P.OP_SCSI_RESP and res[-1].b3 == 0
    assert res[-1].w36 == 4  # ExpDataSN = R2Ts sent
    assert bytes(h.env.dev.blocks[:4096]) == payload


def test_unsolicited_data_out(kit: Any) -> None:
    h = kit.Harness()
    h.login(extra=[("InitialR2T", "No")])
    # our side says InitialR2T=Yes by default: OR gives Yes, so F=0 is an error
    assert h.conn.session.params.initial_r2t
    r = h.cmd(kit.write10(0, 2), 1024, write=True, final=False)
    assert r[0].opcode == P.OP_REJECT and r[0].b2 == P.REJ_PROTOCOL


def test_unsolicited_data_out_allowed(kit: Any) -> None:
    st = kit.make_state()
    st.options["initial_r2t"] = False
    h = kit.Harness(st)
    h.login(extra=[("InitialR2T", "No"), ("FirstBurstLength", "1024")])
    assert not h.conn.session.params.initial_r2t
    itt = 0x55
    r = h.cmd(kit.write10(0, 4), 2048, write=True, data=b"a" * 512, final=False, itt=itt)
    assert r == []
    r = h.data_out(itt, P.RSVD_TAG, 0, 512, b"b" * 512, True)
    assert r[0].opcode == P.OP_R2T and r[0].w40 == 1024 and r[0].w44 == 1024
    r = h.data_out(itt, r[0].ttt, 0, 1024, b"c" * 1024, True)
    assert r[0].opcode == P.OP_SCSI_RESP and r[0].b3 == 0
    assert h.env.dev.blocks[:2048] == b"a" * 512 + b"b" * 512 + b"c" * 1024


def test_data_out_bad_datasn_terminates_task(kit: Any) -> None:
    # libiscsi iSCSIdatasn: a wrong DataSN fails the command (Reject), the
    # rest of the burst is discarded quietly, and the connection stays usable
    h = kit.Harness()
    h.login(extra=[("ImmediateData", "No")])
    r = h.cmd(kit.write10(0, 2), 1024, write=True, itt=7)
    ttt = r[0].ttt
    out = h.data_out(7, ttt, 1, 0, b"x" * 512, False)
    assert [p.opcode for p in out] == [P.OP_REJECT] and out[0].b2 == P.REJ_PROTOCOL
    assert not h.closed and h.conn.state == "ffp"
    assert 7 not in h.conn.tasks and 7 not in h.conn.session.tasks
    assert h.data_out(7, ttt, 0, 512, b"y" * 512, True) == []
    assert not h.env.dev.executed and h.env.dev.blocks[:1024] == bytes(1024)
    # same ITT again, now with DataSN 0, 1: the write completes GOOD
    r = h.cmd(kit.write10(0, 2), 1024, write=True, itt=7)
    assert r[0].opcode == P.OP_R2T
    assert h.data_out(7, r[0].ttt, 0, 0, b"a" * 512, False) == []
    out = h.data_out(7, r[0].ttt, 1, 512, b"b" * 512, True)
    assert out[0].opcode == P.OP_SCSI_RESP and out[0].b3 == 0
    assert h.env.dev.blocks[:1024] == b"a" * 512 + b"b" * 512


@pytest.mark.parametrize("datasn", [0, 27, 0xFFFFFFFF])
def test_data_out_datasn_variants_rejected(kit: Any, datasn: int) -> None:
    h = kit.Harness()
    h.login(extra=[("ImmediateData", "No")])
    r = h.cmd(kit.write10(0, 2), 1024, write=True, itt=9)
    first = 0 if datasn == 0 else datasn
    out = h.data_out(9, r[0].ttt, first, 0, b"x" * 512, False)
    if datasn == 0:  # 0 is right for the first PDU; repeat it for the second
        assert out == []
        out = h.data_out(9, r[0].ttt, 0, 512, b"x" * 512, True)
    assert out[0].opcode == P.OP_REJECT and h.conn.state == "ffp"
    assert not h.env.dev.executed


def test_data_out_unknown_ttt_rejected(kit: Any) -> None:
    h = kit.Harness()
    h.login()
    out = h.data_out(7, 0x1234, 0, 0, b"x" * 512, True)
    assert out[0].opcode == P.OP_REJECT and out[0].b2 == P.REJ_INVALID_FIELD
    assert bytes(out[0].data[:1]) == bytes([P.OP_DATA_OUT | 0x00])
    assert h.conn.state == "ffp"


def test_cmdsn_window(kit: Any) -> None:
    h = kit.Harness()
    h.login()
    s = h.conn.session
    exp, mx = s.exp_cmdsn, s.max_cmdsn
    assert mx == exp + 63
    # too high: silently dropped
    assert h.cmd(b"\0" * 6, 0, cmdsn=mx + 1) == []
    # too low: dropped
    assert h.cmd(b"\0" * 6, 0, cmdsn=exp - 1) == []
    assert s.exp_cmdsn == exp
    # ahead of ExpCmdSN: held until the gap is filled, then both run in order
    assert h.cmd(b"\0" * 6, 0, cmdsn=exp + 1) == []
    r = h.cmd(b"\0" * 6, 0, cmdsn=exp)
    assert len(r) == 2 and s.exp_cmdsn == exp + 2
    assert r[0].w28 == exp + 1 or r[0].w28 == exp + 2
    # immediate commands do not consume CmdSN
    r = h.cmd(b"\0" * 6, 0, cmdsn=s.exp_cmdsn, immediate=True)
    assert r[0].opcode == P.OP_SCSI_RESP and s.exp_cmdsn == exp + 2


def test_statsn_increments(kit: Any) -> None:
    h = kit.Harness()
    h.login()
    a = h.cmd(b"\0" * 6, 0)[0].w24
    b = h.cmd(b"\0" * 6, 0)[0].w24
    assert b == a + 1


def test_nop_out_ping_and_target_ping(kit: Any) -> None:
    h = kit.Harness()
    h.login()
    w = (P.RSVD_TAG, h.cmdsn, 0, 0, 0, 0, 0)
    r = h.feed(P.encode_request(P.OP_NOP_OUT, 0x80, 0, 0x77, w, b"ping!", immediate=True))
    assert r[0].opcode == P.OP_NOP_IN and r[0].itt == 0x77 and bytes(r[0].data) == b"ping!"
    assert r[0].ttt == P.RSVD_TAG
    # target ping after the interval; an answer clears it
    c = h.conn
    c.last_rx = 0.0
    n = len(h.out)
    assert c.idle_check(100.0, 30, 60)
    ping = kit.decode(h.out[n])
    assert ping.opcode == P.OP_NOP_IN and ping.itt == P.RSVD_TAG and ping.ttt != P.RSVD_TAG
    h.feed(
        P.encode_request(
            P.OP_NOP_OUT, 0x80, 0, P.RSVD_TAG, (ping.ttt, h.cmdsn, 0, 0, 0, 0, 0), immediate=True
        )
    )
    assert c.ping_sent_at is None
    # unanswered ping: the connection is dropped after nop_timeout
    c.last_rx = 100.0
    assert c.idle_check(200.0, 30, 60)
    assert not c.idle_check(261.0, 30, 60)
    assert h.closed == ["NOP-In ping timed out"]


def _tmf(h: Any, fn: int, ref: int = 0, lun: int = 0, refcmdsn: int = 0) -> P.Pdu:
    w = (ref, h.cmdsn, 0, refcmdsn, 0, 0, 0)
    return h.feed(
        P.encode_request(
            P.OP_TMF_REQ, 0x80 | fn, P.int_to_lun(lun), h.next_itt(), w, immediate=True
        )
    )[0]


def test_task_management(kit: Any) -> None:
    h = kit.Harness()
    h.login()
    h.env.dev.defer = True
    h.cmd(kit.read10(0, 1), 512, read=True, itt=0x42)
    n = len(h.out)
    h.feed(
        P.encode_request(
            P.OP_TMF_REQ, 0x81, 0, 0x4343, (0x42, h.cmdsn, 0, 0, 0, 0, 0), immediate=True
        )
    )
    # "function complete" waits until the aborted task has really finished
    assert len(h.out) == n
    assert h.env.dev.luns[0].aborted == [(0x42, h.conn.session.initiator_port)]
    task, done = h.env.dev.pending.pop()
    h.env.dev.run(task)
    done(task)
    # ... and the aborted command's completion produces no response of its own
    assert len(h.out) == n + 1
    r = kit.decode(h.out[-1])
    assert r.opcode == P.OP_TMF_RESP and r.b2 == 0 and r.itt == 0x4343
    # unknown task with RefCmdSN outside the window -> task does not exist
    assert _tmf(h, 1, ref=0x4242, refcmdsn=h.cmdsn + 1000).b2 == 1
    # a command that already completed (RefCmdSN < ExpCmdSN) -> task does not exist
    # (libiscsi AbortTaskSimpleAsync: WRITE GOOD must pair with this answer)
    done_sn = h.cmdsn
    h.env.dev.defer = False
    h.cmd(kit.write10(0, 1), 512, write=True, data=b"z" * 512, itt=0x77)
    assert _tmf(h, 1, ref=0x77, refcmdsn=done_sn).b2 == 1
    assert _tmf(h, 5).b2 == 0 and h.env.dev.luns[0].resets == 1
    assert _tmf(h, 5, lun=3).b2 == 2
    assert _tmf(h, 2).b2 == 0
    assert _tmf(h, 6).b2 == 0
    for fn in (3, 4, 7, 8):
        assert _tmf(h, fn).b2 == 5


def test_logout_session(kit: Any) -> None:
    h = kit.Harness()
    h.login()
    w = (0, h.cmdsn, 0, 0, 0, 0, 0)
    r = h.feed(P.encode_request(P.OP_LOGOUT_REQ, 0x80 | 0, 0, 0x99, w, immediate=True))
    assert r[0].opcode == P.OP_LOGOUT_RESP and r[0].b2 == 0
    assert r[0].w40 == (2 << 16) | 20
    assert h.closed == ["logout"]
    assert h.env.sessions.count() == 0
    assert h.env.dev.lost


def test_logout_recovery_not_supported(kit: Any) -> None:
    h = kit.Harness()
    h.login()
    r = h.feed(
        P.encode_request(
            P.OP_LOGOUT_REQ, 0x80 | 2, 0, 0x99, (0, h.cmdsn, 0, 0, 0, 0, 0), immediate=True
        )
    )
    assert r[0].b2 == 2 and h.conn.state == "ffp"
    r = h.feed(
        P.encode_request(
            P.OP_LOGOUT_REQ, 0x80 | 1, 0, 0x9A, (5 << 16, h.cmdsn, 0, 0, 0, 0, 0), immediate=True
        )
    )
    assert r[0].b2 == 1


def test_snack_and_login_in_ffp_rejected(kit: Any) -> None:
    h = kit.Harness()
    h.login()
    r = h.feed(P.encode_request(P.OP_SNACK, 0x80, 0, 1, (0, 0, 0, 0, 0, 0, 0)))
    assert r[0].opcode == P.OP_REJECT and r[0].b2 == P.REJ_PROTOCOL
    r = h.feed(kit.login_req([("InitiatorName", "x")]))
    assert r[0].opcode == P.OP_REJECT


def test_bad_opcode_rejected_not_fatal(kit: Any) -> None:
    h = kit.Harness()
    h.login()
    raw = bytearray(P.encode_request(P.OP_NOP_OUT, 0x80, 0, 1, (P.RSVD_TAG, 0, 0, 0, 0, 0, 0)))
    raw[0] = 0x1C
    r = h.feed(bytes(raw))
    assert r[0].opcode == P.OP_REJECT and r[0].b2 == P.REJ_NOT_SUPPORTED
    assert h.conn.state == "ffp"


def test_text_sendtargets_in_normal_session(kit: Any) -> None:
    h = kit.Harness()
    h.login()
    w = (P.RSVD_TAG, h.cmdsn, 0, 0, 0, 0, 0)
    h.cmdsn += 1
    r = h.feed(P.encode_request(P.OP_TEXT_REQ, 0x80, 0, 0x31, w, b"SendTargets=All\0X-foo=1\0"))
    assert r[0].opcode == P.OP_TEXT_RESP and r[0].final
    body = bytes(r[0].data).split(b"\0")
    assert b"TargetName=" + kit.TARGET.encode() in body
    assert b"TargetAddress=127.0.0.1:3260,1" in body
    assert b"X-foo=NotUnderstood" in body


def test_reinstatement_closes_old_session(kit: Any) -> None:
    st = kit.make_state()
    h1 = kit.Harness(st)
    h1.login()
    old = h1.conn.session
    h2 = kit.Harness(st, env=h1.env)
    h2.login()
    assert h1.closed and old.closed
    assert h2.conn.session is not old
    assert h1.env.sessions.count() == 1


def test_mcs_second_connection(kit: Any) -> None:
    h1 = kit.Harness()
    h1.login(extra=[("MaxConnections", "8")])
    assert h1.conn.session.max_connections == 2
    tsih = h1.conn.session.tsih
    h2 = kit.Harness(h1.state, env=h1.env)
    h2.cmdsn = h1.cmdsn
    h2.login(tsih=tsih, cid=1, cmdsn=h1.conn.session.exp_cmdsn)
    assert h2.conn.session is h1.conn.session
    assert h1.conn.session.connection_count() == 2
    # MaxConnections (2) reached: a third connection is refused 02/06
    h3 = kit.Harness(h1.state, env=h1.env)
    keys = [("InitiatorName", kit.INIT), ("TargetName", kit.TARGET), ("AuthMethod", "None")]
    r = h3.feed(kit.login_req(keys, csg=0, nsg=1, tsih=tsih, cid=2))
    assert r[0].w36 >> 16 == 0x0206


def test_abort_task_not_yet_received(kit: Any) -> None:
    # RefCmdSN in the window and before the TMF: counted as received and
    # aborted; when the gap fills it must not execute
    h = kit.Harness()
    h.login()
    gap = h.cmdsn
    h.cmd(kit.read10(0, 1), 512, read=True, itt=0x61, cmdsn=gap + 1)
    assert not h.env.dev.executed
    r = h.feed(
        P.encode_request(
            P.OP_TMF_REQ, 0x81, 0, 0x99, (0x60, gap + 2, 0, gap, 0, 0, 0), immediate=True
        )
    )[0]
    assert r.opcode == P.OP_TMF_RESP and r.b2 == 0
    out = h.cmd(kit.read10(0, 1), 512, read=True, itt=0x60, cmdsn=gap)
    # the aborted 0x60 does nothing; 0x61 (waiting behind it) now runs
    assert [t.tag for t in h.env.dev.executed] == [0x61]
    assert [p.itt for p in out] == [0x61]
