from __future__ import annotations

import struct

from scsi_testlib import BS, I1, I2, NB, Env, key

from blockfabric.transports.scsi import PrStore, ScsiDevice


def test_tur_and_invalid_opcode(env: Env) -> None:
    assert env.run([0, 0, 0, 0, 0, 0]).status == 0
    t = env.run([0xFF, 0, 0, 0, 0, 0])
    assert key(t) == (5, 0x20, 0)


def test_standard_inquiry(env: Env) -> None:
    t = env.run([0x12, 0, 0, 1, 4, 0])
    d = env.data(t)
    assert len(d) == 74 and d[0] == 0 and d[2] == 6 and d[3] == 0x12
    assert d[4] == len(d) - 5
    assert d[8:16] == b"BLKFABRC" and d[16:32] == b"Malloc disk     "
    assert d[7] & 0x02  # CmdQue
    assert env.data(env.run([0x12, 0, 0, 0, 5, 0])) == d[:5]  # alloc truncates


def test_inquiry_bad_fields(env: Env) -> None:
    t = env.run([0x12, 0, 0x80, 0, 255, 0])  # page code without EVPD
    assert key(t) == (5, 0x24, 0) and t.sense[15:18] == b"\xc0\x00\x02"
    t = env.run([0x12, 1, 0x99, 0, 255, 0])
    assert key(t) == (5, 0x24, 0)
    t = env.run([0x12, 2, 0, 0, 255, 0])  # CMDDT
    assert t.sense[15:18] == b"\xc9\x00\x01"


def test_vpd_pages(env: Env) -> None:
    d = env.data(env.run([0x12, 1, 0, 0, 255, 0]))
    assert d[:4] == b"\x00\x00\x00\x07" and d[4:] == bytes([0, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2])
    for page in d[4:]:
        p = env.data(env.run([0x12, 1, page, 0x10, 0, 0]))
        assert p[1] == page and struct.unpack(">H", p[2:4])[0] == len(p) - 4
    sn = env.data(env.run([0x12, 1, 0x80, 0, 255, 0]))
    assert sn[4:] == b"12345678123456789abcdef012345678"
    di = env.data(env.run([0x12, 1, 0x83, 1, 0, 0]))
    assert di[4:8] == b"\x01\x03\x00\x10" and di[8] >> 4 == 6
    assert di[9:24] == bytes.fromhex("345678123456789abcdef012345678")
    assert b"iqn.2024-01.test:tgt,t,0x0001\x00" in di
    bl = env.data(env.run([0x12, 1, 0xB0, 0, 255, 0]))
    assert bl[3] == 0x3C and bl[5] == 128  # MAXIMUM COMPARE AND WRITE LENGTH
    # MAXIMUM TRANSFER LENGTH: 32 MiB of 512-byte blocks
    assert struct.unpack(">I", bl[8:12])[0] == 32 * 1024 * 1024 // 512
    assert struct.unpack(">I", bl[20:24])[0] == 0xFFFFFFFF
    assert env.data(env.run([0x12, 1, 0xB1, 0, 255, 0]))[4:6] == b"\x00\x01"
    assert env.data(env.run([0x12, 1, 0xB2, 0, 255, 0]))[4:8] == b"\x00\xe4\x02\x00"


def test_missing_lun(env: Env) -> None:
    t = env.run([0x12, 0, 0, 0, 96, 0], lun=5)
    assert env.data(t)[0] == 0x7F
    assert key(env.run([0, 0, 0, 0, 0, 0], lun=5)) == (5, 0x25, 0)
    t = env.run([0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], lun=5)
    assert env.data(t) == b"\0\0\0\x08" + bytes(4) + bytes(8)


def test_report_luns(env: Env) -> None:
    t = env.run([0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0])
    assert key(t) == (5, 0x24, 0)
    t = env.run([0xA0, 0, 3, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    assert key(t) == (5, 0x24, 0)


def test_request_sense_no_sense(env: Env) -> None:
    d = env.data(env.run([3, 0, 0, 0, 252, 0]))
    assert len(d) == 18 and d[0] == 0x70 and d[2] == 0 and d[7] == 10


def test_power_on_ua_then_cleared(tmp_path) -> None:
    e = Env(tmp_path)
    e.dev.power_on_ua = True
    e.dev._nexuses.clear()
    assert e.run([0x12, 0, 0, 0, 36, 0]).status == 0  # INQUIRY does not consume
    t = e.run([0, 0, 0, 0, 0, 0])
    assert key(t) == (6, 0x29, 0)
    assert e.run([0, 0, 0, 0, 0, 0]).status == 0


def test_lun_reset_ua_and_request_sense(env: Env) -> None:
    env.run([0, 0, 0, 0, 0, 0])
    env.run([0, 0, 0, 0, 0, 0], nexus=I2)
    env.lun.reset()
    d = env.data(env.run([3, 0, 0, 0, 18, 0]))
    assert (d[2], d[12], d[13]) == (6, 0x29, 3)
    assert env.run([0, 0, 0, 0, 0, 0]).status == 0
    assert key(env.run([0, 0, 0, 0, 0, 0], nexus=I2)) == (6, 0x29, 3)


def test_read_capacity(env: Env) -> None:
    assert env.data(env.run([0x25] + [0] * 9)) == struct.pack(">II", NB - 1, BS)
    assert key(env.run([0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0])) == (5, 0x24, 0)
    d = env.data(env.run([0x9E, 0x10] + [0] * 8 + [0, 0, 0, 32, 0, 0]))
    assert d[:12] == struct.pack(">QI", NB - 1, BS) and d[14] == 0xC0 and len(d) == 32


def test_mode_sense_pages(env: Env) -> None:
    d = env.data(env.run([0x1A, 0, 0x3F, 0, 255, 0]))
    assert d[0] == len(d) - 1 and d[2] == 0x10 and d[3] == 8
    assert d[4:12] == struct.pack(">II", NB, BS)
    pages = d[12:]
    assert pages[0] == 1 and pages[12] == 8 and pages[32] == 0x0A and len(pages) == 44
    d = env.data(env.run([0x5A, 0x08, 0x08, 0, 0, 0, 0, 1, 0, 0]))
    assert struct.unpack(">H", d[:2])[0] == len(d) - 2 and d[8] == 8 and d[10] & 4
    saved = env.data(env.run([0x1A, 8, 0xC8, 0, 255, 0]))  # PC 3: saved values
    assert saved[4:6] == b"\x08\x12" and saved[6] & 0x04
    t = env.run([0x1A, 0, 0x05, 0, 255, 0])
    assert key(t) == (5, 0x24, 0) and t.sense[15:18] == b"\xcd\x00\x02"
    ch = env.data(env.run([0x1A, 8, 0x48, 0, 255, 0]))
    assert ch[4:6] == b"\x08\x12" and ch[6] == 4


def test_mode_select_swp_write_protect(env: Env) -> None:
    env.run([0, 0, 0, 0, 0, 0], nexus=I2)
    cur = env.data(env.run([0x1A, 8, 0x0A, 0, 255, 0]))
    page = bytearray(cur[4:])
    page[4] |= 0x08
    param = bytes(4) + bytes(page)
    t = env.run([0x15, 0x10, 0, 0, len(param), 0], data=param)
    assert t.status == 0
    t = env.run([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], data=bytes(BS))
    assert key(t) == (7, 0x27, 0)
    assert env.data(env.run([0x1A, 8, 0x0A, 0, 255, 0]))[2] & 0x80  # WP
    assert key(env.run([0, 0, 0, 0, 0, 0], nexus=I2)) == (6, 0x2A, 1)
    # change a non-changeable bit -> invalid field in parameter list
    page[2] ^= 0x04
    param = bytes(4) + bytes(page)
    t = env.run([0x15, 0x10, 0, 0, len(param), 0], data=param)
    assert key(t) == (5, 0x26, 0) and t.sense[15:18] == b"\x80\x00\x06"
    t = env.run([0x15, 0x11, 0, 0, len(param), 0], data=param)
    assert key(t) == (5, 0x26, 0)  # SP=1 is accepted, the bad bit is not


def test_rsoc(env: Env) -> None:
    d = env.data(env.run([0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]))
    n = struct.unpack(">I", d[:4])[0]
    assert n % 8 == 0 and n == len(d) - 4
    ops = {d[4 + i] for i in range(0, n, 8)}
    assert {0x28, 0x2A, 0x89, 0x42, 0x5E, 0x9E} <= ops
    d = env.data(env.run([0xA3, 0x0C, 0x81, 0x28, 0, 0, 0, 0, 1, 0, 0, 0]))
    assert d[1] == 0x83 and d[2:4] == b"\x00\x0a" and d[4] == 0x28 and len(d) == 4 + 10 + 12
    d = env.data(env.run([0xA3, 0x0C, 0x02, 0x9E, 0, 0x10, 0, 0, 1, 0, 0, 0]))
    assert d[1] & 7 == 3 and d[4:6] == b"\x9e\xf0"
    assert key(env.run([0xA3, 0x0C, 0x01, 0x9E, 0, 0, 0, 0, 1, 0, 0, 0])) == (5, 0x24, 0)
    d = env.data(env.run([0xA3, 0x0C, 0x01, 0xEE, 0, 0, 0, 0, 1, 0, 0, 0]))
    assert d[1] & 7 == 1


def test_start_stop(env: Env) -> None:
    assert env.run([0x1B, 0, 0, 0, 1, 0]).status == 0
    assert key(env.run([0x1B, 0, 0, 0, 0x50, 0])) == (5, 0x24, 0)


def test_device_without_lun0(tmp_path) -> None:
    d = ScsiDevice("t", PrStore(None), power_on_ua=False)
    out = []
    from blockfabric.transports.scsi import ScsiTask

    d.execute(ScsiTask(lun=0, cdb=bytes(16), initiator_port=I1[0]), out.append)
    assert key(out[0]) == (5, 0x25, 0)
