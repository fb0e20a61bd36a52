from __future__ import annotations

import struct

import pytest
from scsi_testlib import BS, NB, Env, key


def rw10(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", op, flags, lba, 0, n, 0)


def rw16(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", op, flags, lba, n, 0, 0)


def test_write_read_roundtrip_zero_copy(env: Env) -> None:
    data = bytes(range(256)) * 4
    assert env.run(rw10(0x2A, 10, 2), data=data).status == 0
    t = env.run(rw16(0x88, 10, 2))
    assert env.data(t) == data
    assert t.data_in[0].obj is env.ch.mem  # the channel's own memory, no copy


def test_read6_zero_means_256(env: Env) -> None:
    t = env.run([0x08, 0, 0, 0, 0, 0])
    assert len(env.data(t)) == 256 * BS


@pytest.mark.parametrize("lba,n", [(NB, 1), (NB - 1, 2), (NB + 1, 0), (2**32 - 1, 1)])
def test_read_beyond_eol(env: Env, lba: int, n: int) -> None:
    assert key(env.run(rw10(0x28, lba, n))) == (5, 0x21, 0)


def test_zero_blocks_at_end_is_good(env: Env) -> None:
    assert env.run(rw10(0x28, NB, 0)).status == 0
    assert env.run(rw16(0x8A, 0, 0), data=b"").status == 0


def test_rdprotect_rejected(env: Env) -> None:
    t = env.run(rw10(0x28, 0, 1, 0x20))
    assert key(t) == (5, 0x24, 0) and t.sense[15:18] == b"\xcf\x00\x01"


def test_write_edtl_smaller_writes_only_sent_blocks(env: Env) -> None:
    env.run(rw10(0x2A, 0, 2), data=b"a" * 2 * BS)
    t = env.run(rw10(0x2A, 0, 2), data=b"b" * BS)
    assert t.status == 0 and t.transfer_length == 2 * BS
    assert env.ch.mem[: 2 * BS] == b"b" * BS + b"a" * BS


def test_write_fua_and_sync_cache(env: Env) -> None:
    assert env.run(rw10(0x2A, 0, 1, 0x08), data=bytes(BS)).status == 0
    assert env.run([0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]).status == 0
    assert key(env.run(rw16(0x91, NB, 1))) == (5, 0x21, 0)


def test_verify_bytchk(env: Env) -> None:
    env.run(rw10(0x2A, 5, 2), data=b"x" * 2 * BS)
    assert env.run(rw10(0x2F, 5, 2, 0x02), data=b"x" * 2 * BS).status == 0
    bad = bytearray(b"x" * 2 * BS)
    bad[700] = 0
    t = env.run(rw10(0x2F, 5, 2, 0x02), data=bytes(bad))
    assert key(t) == (0xE, 0x1D, 0) and t.sense[0] == 0xF0
    assert struct.unpack(">I", t.sense[3:7])[0] == 700
    assert env.run(rw10(0x2F, 5, 2, 0x00)).status == 0  # BYTCHK 0: medium check only
    assert env.run(rw16(0x8F, 5, 2, 0x06), data=b"x" * BS).status == 0  # BYTCHK 11b
    assert key(env.run(rw10(0x2F, NB, 1))) == (5, 0x21, 0)


def test_write_and_verify(env: Env) -> None:
    assert env.run(rw10(0x2E, 3, 1, 0x02), data=b"q" * BS).status == 0
    assert env.ch.mem[3 * BS : 4 * BS] == b"q" * BS


def caw(lba: int, n: int) -> bytes:
    return struct.pack(">BBQ3xBBB", 0x89, 0, lba, n, 0, 0)


def test_compare_and_write_multi_block(env: Env) -> None:
    env.run(rw10(0x2A, 7, 3), data=b"o" * 3 * BS)
    t = env.run(caw(7, 3), data=b"o" * 3 * BS + b"n" * 3 * BS)
    assert t.status == 0 and env.ch.mem[7 * BS : 10 * BS] == b"n" * 3 * BS
    cmp = bytearray(b"n" * 3 * BS)
    cmp[BS + 17] = ord("z")
    t = env.run(caw(7, 3), data=bytes(cmp) + b"w" * 3 * BS)
    assert key(t) == (0xE, 0x1D, 0)
    assert struct.unpack(">I", t.sense[3:7])[0] == BS + 17
    assert env.ch.mem[7 * BS : 10 * BS] == b"n" * 3 * BS  # untouched


def test_compare_and_write_bad_lengths(env: Env) -> None:
    assert key(env.run(caw(0, 1), data=bytes(4 * BS))) == (5, 0x24, 0)
    mx = env.lun.max_caw_blocks  # compare + write data fit one 128 KiB pool chunk
    assert mx == 128
    t = env.run(caw(0, mx), data=bytes(2 * mx * BS))
    assert t.status == 0
    assert key(env.run(caw(0, mx + 1), data=bytes(2 * (mx + 1) * BS))) == (5, 0x24, 0)
    assert key(env.run(caw(NB, 1), data=bytes(2 * BS))) == (5, 0x21, 0)


def unmap_param(descs: list[tuple[int, int]]) -> bytes:
    body = b"".join(struct.pack(">QII", lba, n, 0) for lba, n in descs)
    return struct.pack(">HH4x", 6 + len(body), len(body)) + body


def unmap_cdb(plen: int) -> bytes:
    return struct.pack(">BB4xBHB", 0x42, 0, 0, plen, 0)


def test_unmap(env: Env) -> None:
    env.run(rw10(0x2A, 0, 8), data=b"\xff" * 8 * BS)
    p = unmap_param([(1, 2), (5, 1), (NB, 0)])
    assert env.run(unmap_cdb(len(p)), data=p).status == 0
    assert env.ch.mem[BS : 3 * BS] == bytes(2 * BS) and env.ch.mem[:BS] == b"\xff" * BS
    assert env.ch.mem[5 * BS : 6 * BS] == bytes(BS)
    assert env.run(unmap_cdb(0), data=b"").status == 0
    assert env.run(unmap_cdb(8), data=unmap_param([])).status == 0


def test_unmap_errors(env: Env) -> None:
    assert key(env.run(unmap_cdb(4), data=bytes(4))) == (5, 0x1A, 0)
    p = unmap_param([(NB - 1, 2)])
    assert key(env.run(unmap_cdb(len(p)), data=p)) == (5, 0x21, 0)
    env.lun.max_unmap_descriptors = 2
    p = unmap_param([(0, 1)] * 3)
    assert key(env.run(unmap_cdb(len(p)), data=p)) == (5, 0x26, 0)
    p = bytearray(unmap_param([(0, 1)]))
    p[2:4] = b"\x00\x40"  # descriptor length beyond the list
    t = env.run(unmap_cdb(len(p)), data=bytes(p))
    assert key(t) == (5, 0x26, 0) and t.sense[15:18] == b"\x80\x00\x02"
    t = env.run(struct.pack(">BB4xBHB", 0x42, 1, 0, 24, 0), data=unmap_param([(0, 1)]))
    assert key(t) == (5, 0x24, 0)


def ws16(lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", 0x93, flags, lba, n, 0, 0)


def test_write_same(env: Env) -> None:
    blk = bytes(range(256)) * 2
    assert env.run(ws16(4, 3), data=blk).status == 0
    assert env.ch.mem[4 * BS : 7 * BS] == blk * 3
    assert env.run(ws16(4, 3, 0x08), data=bytes(BS)).status == 0  # UNMAP bit
    assert env.ch.mem[4 * BS : 7 * BS] == bytes(3 * BS)
    env.ch.mem[NB * BS - BS :] = b"\x01" * BS
    assert env.run(ws16(NB - 2, 0, 0x09)).status == 0  # NDOB, 0 = to the end
    assert env.ch.mem[NB * BS - BS :] == bytes(BS)
    ws10 = struct.pack(">BBIBHB", 0x41, 0, 8, 0, 2, 0)
    assert env.run(ws10, data=b"\x07" * BS).status == 0
    assert env.ch.mem[8 * BS : 10 * BS] == b"\x07" * 2 * BS
    assert key(env.run(ws16(NB + 1, 0), data=bytes(BS))) == (5, 0x21, 0)
    assert key(env.run(ws16(0, 1, 0x20), data=bytes(BS))) == (5, 0x24, 0)


def test_get_lba_status(env: Env) -> None:
    cdb = struct.pack(">BBQIBB", 0x9E, 0x12, 10, 24, 0, 0)
    d = env.data(env.run(cdb))
    assert d == struct.pack(">I4xQIB3x", 20, 10, NB - 10, 0)
    for lba in (NB, NB + 1, 2**63, 2**64 - 1):
        cdb = struct.pack(">BBQIBB", 0x9E, 0x12, lba, 24, 0, 0)
        assert key(env.run(cdb)) == (5, 0x21, 0)


def test_prefetch(env: Env) -> None:
    assert env.run(rw10(0x34, 0, 10)).status == 0
    assert key(env.run(rw16(0x90, NB, 1))) == (5, 0x21, 0)


def test_hot_remove_with_inflight(tmp_path) -> None:
    e = Env(tmp_path, deferred=True)
    out: list = []
    from blockfabric.transports.scsi import ScsiTask

    t = ScsiTask(lun=0, cdb=rw10(0x28, 0, 1), initiator_port="i", target_port="t", tag=9)
    e.dev.execute(t, out.append)
    assert out == [] and ("i", 9, 0) in e.lun.inflight
    gone: list = []
    e.lun.hot_remove(lambda: gone.append(1))
    assert gone == []
    t2 = ScsiTask(lun=0, cdb=rw10(0x28, 0, 1), initiator_port="i", target_port="t", tag=10)
    e.dev.execute(t2, out.append)
    assert key(t2) == (5, 0x25, 0)
    e.ch.run()
    assert t.status == 0 and len(e.data(t)) == BS and gone == [1]


def test_abort_task(tmp_path) -> None:
    e = Env(tmp_path, deferred=True)
    from blockfabric.transports.scsi import ScsiTask

    out: list = []
    t = ScsiTask(lun=0, cdb=rw10(0x28, 0, 1), initiator_port="i", target_port="t", tag=3)
    e.dev.execute(t, out.append)
    assert e.lun.abort_task(3, "i") and not e.lun.abort_task(4, "i")
    e.ch.run()
    assert out == [t] and t.status == 0x40 and not e.lun.inflight


def test_compare_and_write_count_zero_with_data_is_invalid(env: Env) -> None:
    # libiscsi CompareAndWrite.Simple: 256 blocks wraps the 1-byte count to 0
    # while 2*256 blocks of data follow; that must not complete GOOD
    assert env.lun.max_caw_blocks == 128
    env.run(rw10(0x2A, 0, 4), data=b"A" * 4 * BS)
    t = env.run(caw(0, 0), data=b"A" * 2 * BS)
    assert key(t) == (5, 0x24, 0) and t.sense[15:18] == b"\xc0\x00\x0d"
    assert env.ch.mem[: 4 * BS] == b"A" * 4 * BS
    assert env.run(caw(0, 0), data=b"").status == 0  # no data: a real no-op
    # above the B0h limit: INVALID FIELD IN CDB too
    env.lun.max_caw_blocks = 2
    assert key(env.run(caw(0, 3), data=bytes(6 * BS))) == (5, 0x24, 0)


def test_write_same_unmap_ignores_data_pattern(env: Env) -> None:
    # libiscsi WriteSame10.UnmapUntilEnd: UNMAP=1 with a 0xFF block and count 0
    # (to the end); LBPRZ=1 is reported, so the blocks must read back as zero
    rc16 = env.data(env.run(struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0)))
    assert rc16[14] & 0x40  # LBPRZ
    env.ch.mem[(NB - 5) * BS :] = b"\xff" * 5 * BS
    ws10 = struct.pack(">BBIBHB", 0x41, 0x08, NB - 5, 0, 0, 0)
    assert env.run(ws10, data=b"\xff" * BS).status == 0
    assert env.data(env.run(rw10(0x28, NB - 5, 5))) == bytes(5 * BS)
    ws = ws16(NB - 3, 3, 0x08)
    env.ch.mem[(NB - 3) * BS :] = b"\x11" * 3 * BS
    assert env.run(ws, data=b"\x22" * BS).status == 0
    assert env.ch.mem[(NB - 3) * BS :] == bytes(3 * BS)


def test_orwrite(env: Env) -> None:
    orw = struct.pack(">BBQIBB", 0x8B, 0, 3, 2, 0, 0)
    env.run(rw10(0x2A, 3, 2), data=b"\x0f" * BS + b"\x10" * BS)
    assert env.run(orw, data=b"\xf0" * BS + b"\x01" * BS).status == 0
    assert env.ch.mem[3 * BS : 5 * BS] == b"\xff" * BS + b"\x11" * BS
    # zero blocks: a no-op; beyond the end; ORPROTECT without protection info
    assert env.run(struct.pack(">BBQIBB", 0x8B, 0, 0, 0, 0, 0), data=b"").status == 0
    beyond = struct.pack(">BBQIBB", 0x8B, 0, NB - 1, 2, 0, 0)
    assert key(env.run(beyond, data=bytes(2 * BS))) == (5, 0x21, 0)
    prot = struct.pack(">BBQIBB", 0x8B, 0x20, 0, 1, 0, 0)
    assert key(env.run(prot, data=bytes(BS))) == (5, 0x24, 0)
    # listed in REPORT SUPPORTED OPERATION CODES (one command, option 1)
    rsoc = struct.pack(">BBBBHIBB", 0xA3, 0x0C, 0x01, 0x8B, 0, 64, 0, 0)
    d = env.data(env.run(rsoc))
    assert d[1] & 0x07 == 0x03 and d[4] == 0x8B
