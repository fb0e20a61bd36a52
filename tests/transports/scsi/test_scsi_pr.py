from __future__ import annotations

import json
import struct

from scsi_testlib import BS, I1, I2, Env, key

from blockfabric.transports.scsi import PrStore


def prout(env: Env, sa: int, k: int, sak: int, rtype: int = 0, nexus=I1, flags: int = 0):
    cdb = struct.pack(">BBB2xIBB", 0x5F, sa, rtype, 24, 0, 0)
    p = struct.pack(">QQ4xB3x", k, sak, flags)
    return env.run(cdb, data=p, nexus=nexus)


def prin(env: Env, sa: int, nexus=I1) -> bytes:
    t = env.run(struct.pack(">BB5xHB", 0x5E, sa, 4096, 0), nexus=nexus)
    assert t.status == 0
    return env.data(t)


READ10 = struct.pack(">BBIBHB", 0x28, 0, 0, 0, 1, 0)
WRITE10 = struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 1, 0)


def can_read(env, n) -> bool:
    return env.run(READ10, nexus=n).status == 0


def can_write(env, n) -> bool:
    t = env.run(WRITE10, data=bytes(BS), nexus=n)
    assert t.status in (0, 0x18)
    return t.status == 0


def test_register_and_read_keys(env: Env) -> None:
    assert prout(env, 0, 0, 0xAA).status == 0
    assert prout(env, 0, 0, 0xBB, nexus=I2).status == 0
    d = prin(env, 0)
    assert d == struct.pack(">IIQQ", 2, 16, 0xAA, 0xBB)
    assert prout(env, 0, 0x1, 0xCC).status == 0x18  # wrong key
    assert prout(env, 0, 0xAA, 0).status == 0  # unregister
    assert prin(env, 0) == struct.pack(">IIQ", 3, 8, 0xBB)
    assert prout(env, 6, 0x999, 0xDD).status == 0  # register and ignore


def test_reserve_release_and_access(env: Env) -> None:
    prout(env, 0, 0, 0xAA)
    prout(env, 0, 0, 0xBB, nexus=I2)
    assert prout(env, 1, 0xBB, 0, rtype=1, nexus=I1).status == 0x18  # key mismatch
    assert prout(env, 1, 0xAA, 0, rtype=1).status == 0  # WE
    d = prin(env, 1)
    assert d == struct.pack(">IIQ4xxBH", 2, 16, 0xAA, 0x01, 0)
    assert can_read(env, I2) and not can_write(env, I2) and can_write(env, I1)
    assert prout(env, 1, 0xBB, 0, rtype=1, nexus=I2).status == 0x18
    t = prout(env, 2, 0xAA, 0, rtype=3)  # wrong type
    assert key(t) == (5, 0x26, 4)
    assert prout(env, 2, 0xAA, 0, rtype=1).status == 0
    assert prin(env, 1) == struct.pack(">II", 2, 0)
    assert can_write(env, I2)


def test_access_matrix(env: Env) -> None:
    i3 = ("iqn.x:3,i,0x3", I1[1])
    expect = {  # type: (registered non-holder read, write, unregistered read, write)
        1: (True, False, True, False),
        3: (False, False, False, False),
        5: (True, True, True, False),
        6: (True, True, False, False),
        7: (True, True, True, False),
        8: (True, True, False, False),
    }
    for rtype, (rr, rw, ur, uw) in expect.items():
        prout(env, 0, 0, 0xAA)
        prout(env, 0, 0, 0xBB, nexus=I2)
        assert prout(env, 1, 0xAA, 0, rtype=rtype).status == 0
        got = (can_read(env, I2), can_write(env, I2), can_read(env, i3), can_write(env, i3))
        assert got == (rr, rw, ur, uw), rtype
        assert can_write(env, I1)
        assert prout(env, 3, 0xAA, 0).status == 0  # CLEAR
        assert env.dev.pop_ua(0, I2) == (0x2A, 0x03)


def test_preempt_and_ua(env: Env) -> None:
    prout(env, 0, 0, 0xAA)
    prout(env, 0, 0, 0xBB, nexus=I2)
    prout(env, 1, 0xAA, 0, rtype=3)
    assert prout(env, 4, 0xBB, 0xAA, rtype=1, nexus=I2).status == 0
    d = prin(env, 1, nexus=I2)
    assert d[8:16] == struct.pack(">Q", 0xBB) and d[21] == 1
    assert prin(env, 0, nexus=I2)[8:] == struct.pack(">Q", 0xBB)
    t = env.run([0, 0, 0, 0, 0, 0], nexus=I1)
    assert key(t) == (6, 0x2A, 5)
    # preempting a key nobody has is a conflict; key 0 without reservation invalid
    prout(env, 2, 0xBB, 0, rtype=1, nexus=I2)
    assert prout(env, 4, 0xBB, 0x77, rtype=1, nexus=I2).status == 0x18
    assert key(prout(env, 4, 0xBB, 0, rtype=1, nexus=I2)) == (5, 0x26, 0)


def test_preempt_and_abort_reports_victims(env: Env) -> None:
    aborted = []
    env.dev.on_abort_nexus = aborted.append
    prout(env, 0, 0, 0xAA)
    prout(env, 0, 0, 0xBB, nexus=I2)
    prout(env, 1, 0xAA, 0, rtype=1)
    assert prout(env, 5, 0xBB, 0xAA, rtype=1, nexus=I2).status == 0
    assert aborted == [I1]


def test_param_errors(env: Env) -> None:
    cdb = struct.pack(">BBB2xIBB", 0x5F, 0, 0, 20, 0, 0)
    assert key(env.run(cdb, data=bytes(20))) == (5, 0x1A, 0)
    t = prout(env, 0, 0, 1, flags=0x08)  # SPEC_I_PT
    assert key(t) == (5, 0x26, 0) and t.sense[15:18] == b"\x8b\x00\x14"
    t = env.run(struct.pack(">BB5xHB", 0x5E, 9, 100, 0))
    assert key(t) == (5, 0x24, 0)
    prout(env, 0, 0, 0xAA)
    assert key(prout(env, 1, 0xAA, 0, rtype=2)) == (5, 0x24, 0)


def test_report_caps_and_full_status(env: Env) -> None:
    caps = prin(env, 2)
    assert caps[:2] == b"\x00\x08" and caps[2] & 0x10 and caps[4] == 0xEA and caps[5] == 1
    prout(env, 0, 0, 0xAA)
    prout(env, 1, 0xAA, 0, rtype=5)
    d = prin(env, 3)
    gen, ln = struct.unpack(">II", d[:8])
    assert ln == len(d) - 8
    assert d[8:16] == struct.pack(">Q", 0xAA) and d[20] == 1 and d[21] == 5
    tid_len = struct.unpack(">I", d[28:32])[0]
    tid = d[32 : 32 + tid_len]
    assert tid[0] == 0x45 and tid[4:].rstrip(b"\0") == I1[0].encode() and tid_len % 4 == 0


def test_aptpl_persisted(tmp_path, env: Env) -> None:
    prout(env, 0, 0, 0xAA, flags=0x01)
    prout(env, 1, 0xAA, 0, rtype=1)
    saved = json.loads((tmp_path / "pr.json").read_text())
    assert saved["luns"]["0"]["type"] == 1
    again = PrStore(str(tmp_path / "pr.json"))
    st = again.state(0)
    assert st.regs == {I1: 0xAA} and st.rtype == 1 and st.aptpl
    assert not again.check_access(0, I2, WRITE10)
    prout(env, 0, 0xAA, 0)  # unregister: holder gone, nothing persisted
    assert json.loads((tmp_path / "pr.json").read_text())["luns"] == {}


def test_spc2_reserve_release(env: Env) -> None:
    assert env.run([0x16, 0, 0, 0, 0, 0]).status == 0
    assert env.run([0x16, 0, 0, 0, 0, 0]).status == 0
    assert env.run([0x16, 0, 0, 0, 0, 0], nexus=I2).status == 0x18
    assert env.run([0x17, 0, 0, 0, 0, 0], nexus=I2).status == 0  # no-op
    assert env.run([0x1A, 0, 0x3F, 0, 255, 0], nexus=I2).status == 0x18
    assert env.run([0x12, 0, 0, 0, 36, 0], nexus=I2).status == 0
    assert env.run([0x1A, 0, 0x3F, 0, 255, 0]).status == 0
    assert env.run([0x57] + [0] * 9).status == 0
    assert env.run([0x56] + [0] * 9, nexus=I2).status == 0
    env.dev.nexus_lost(*I2)
    assert env.run([0x16, 0, 0, 0, 0, 0]).status == 0
    prout(env, 0, 0, 0xAA, nexus=I2)  # conflicts: reserved by I1
    env.run([0x17, 0, 0, 0, 0, 0])
    assert prout(env, 0, 0, 0xAA, nexus=I2).status == 0
    assert env.run([0x16, 0, 0, 0, 0, 0]).status == 0x18  # registrations exist
