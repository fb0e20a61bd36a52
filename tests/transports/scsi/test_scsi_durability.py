"""Write semantics (issue 9): WCE write-through, FUA/FUA_NV, SYNCHRONIZE CACHE,
COMPARE AND WRITE through the bdev's atomic call, durable APTPL file; and the
range/transfer bounds of issue 8 (WRITE SAME iterates, MAXIMUM TRANSFER LENGTH)."""

from __future__ import annotations

import os
import struct
import uuid

from scsi_testlib import BS, Env, key

from blockfabric.bdevs.base import Bdev, IoChannel, IoStatus
from blockfabric.shm.iobuf import IoBufs
from blockfabric.shm.pool import BufferPool
from blockfabric.transports.scsi import PrStore, ScsiDevice, ScsiLun, ScsiTask
from blockfabric.transports.scsi import pr as pr_mod


def rw10(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", op, flags, lba, 0, n, 0)


def rw16(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", op, flags, lba, n, 0, 0)


def caw(lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQ3xBBB", 0x89, flags, lba, n, 0, 0)


def set_wce(env: Env, on: bool, save: bool = False) -> None:
    cur = env.data(env.run([0x1A, 8, 0x08, 0, 255, 0]))
    page = bytearray(cur[4:])
    page[2] = (page[2] & ~0x04) | (0x04 if on else 0)
    param = bytes(4) + bytes(page)
    t = env.run([0x15, 0x10 | (1 if save else 0), 0, 0, len(param), 0], data=param)
    assert t.status == 0, t


def wce_of(env: Env, pc: int) -> int:
    d = env.data(env.run([0x1A, 8, (pc << 6) | 0x08, 0, 255, 0]))
    assert d[4] == 0x08 and d[5] == 0x12
    return d[6] & 0x04


def test_fua_bits_reach_the_channel(env: Env) -> None:
    env.run(rw10(0x2A, 0, 1), data=bytes(BS))  # WRITE(10), no FUA
    env.run(rw10(0x2A, 1, 1, 0x08), data=bytes(BS))  # FUA
    env.run(rw10(0x2A, 2, 1, 0x02), data=bytes(BS))  # FUA_NV: treated as FUA
    env.run(rw16(0x8A, 3, 1, 0x08), data=bytes(BS))  # WRITE(16) FUA
    env.run(struct.pack(">BBIIBB", 0xAA, 0x08, 4, 1, 0, 0), data=bytes(BS))  # WRITE(12) FUA
    env.run([0x0A, 0, 0, 5, 1, 0], data=bytes(BS))  # WRITE(6): no FUA bit exists
    env.run(rw10(0x2E, 6, 1), data=bytes(BS))  # WRITE AND VERIFY: on the medium
    assert env.ch.writes == [
        (0, 1, False),
        (1, 1, True),
        (2, 1, True),
        (3, 1, True),
        (4, 1, True),
        (5, 1, False),
        (6, 1, True),
    ]


def test_wce_zero_is_write_through_and_mode_pages_report_it(env: Env) -> None:
    assert wce_of(env, 0) and wce_of(env, 1) and wce_of(env, 2) and wce_of(env, 3)
    set_wce(env, False)
    assert not env.lun.mode.wce
    assert not wce_of(env, 0)  # current
    assert wce_of(env, 1)  # changeable mask
    assert wce_of(env, 2)  # default
    assert wce_of(env, 3)  # saved: MODE SELECT without SP does not save
    env.run(rw10(0x2A, 0, 1), data=bytes(BS))
    env.run([0x0A, 0, 0, 1, 1, 0], data=bytes(BS))
    env.run(rw16(0x93, 2, 4), data=b"\x5a" * BS)  # WRITE SAME(16) pattern
    assert all(fua for _, _, fua in env.ch.writes) and len(env.ch.writes) == 3
    # WRITE SAME of zeroes (write zeroes: no fua flag) is flushed instead
    f0 = env.ch.flushes
    assert env.run(rw16(0x93, 8, 4), data=bytes(BS)).status == 0
    assert env.ch.flushes == f0 + 1
    set_wce(env, False, save=True)
    assert not wce_of(env, 3)
    set_wce(env, True)
    env.ch.writes.clear()
    env.run(rw10(0x2A, 0, 1), data=bytes(BS))
    assert env.ch.writes == [(0, 1, False)]


def test_mode_sense_dpofua(env: Env) -> None:
    d6 = env.data(env.run([0x1A, 8, 0x3F, 0, 255, 0]))
    assert d6[2] & 0x10
    d10 = env.data(env.run([0x5A, 8, 0x3F, 0, 0, 0, 0, 1, 0, 0]))
    assert d10[3] & 0x10


def test_sync_cache_flushes_and_reports_errors(env: Env) -> None:
    assert env.run([0x35] + [0] * 9).status == 0
    assert env.run([0x91] + [0] * 15).status == 0
    assert env.ch.flushes == 2
    env.ch.flush_status = IoStatus.FAILED
    t = env.run([0x35] + [0] * 9)
    assert key(t) == (3, 0x0C, 0)  # MEDIUM ERROR, WRITE ERROR


def test_compare_and_write_uses_the_atomic_call(env: Env) -> None:
    env.run(rw10(0x2A, 7, 2), data=b"o" * 2 * BS)
    t = env.run(caw(7, 2, 0x08), data=b"o" * 2 * BS + b"n" * 2 * BS)
    assert t.status == 0 and env.ch.caw == [(7, True)]
    cmp = bytearray(b"n" * 2 * BS)
    cmp[BS + 333] = 0
    t = env.run(caw(7, 2), data=bytes(cmp) + b"w" * 2 * BS)
    assert key(t) == (0xE, 0x1D, 0)
    assert t.sense[0] & 0x80  # VALID: INFORMATION holds the offset
    assert struct.unpack(">I", t.sense[3:7])[0] == BS + 333
    assert env.ch.mem[7 * BS : 9 * BS] == b"n" * 2 * BS  # nothing written
    assert env.ch.caw[-1] == (7, False)


def test_max_transfer_length(env: Env) -> None:
    env.lun.max_transfer_blocks = 8
    assert env.run(rw10(0x28, 0, 8)).status == 0
    t = env.run(rw10(0x28, 0, 9))
    assert key(t) == (5, 0x24, 0) and t.sense[15:18] == b"\xc0\x00\x07"
    t = env.run(rw16(0x88, 0, 9))
    assert key(t) == (5, 0x24, 0) and t.sense[15:18] == b"\xc0\x00\x0a"
    t = env.run(rw10(0x2A, 0, 9), data=bytes(9 * BS))
    assert key(t) == (5, 0x24, 0)
    assert not env.ch.writes
    vpd = env.data(env.run([0x12, 1, 0xB0, 0, 255, 0]))
    assert struct.unpack(">I", vpd[8:12])[0] == 8


class _SinkChannel(IoChannel):
    """Completes every I/O at once and remembers nothing (a 1 TiB null LUN)."""

    def __init__(self, bdev: Bdev) -> None:
        super().__init__(bdev)
        self.writes = 0
        self.last = -1

    def write(self, off, data, cb, fua=False):  # type: ignore[override]
        self.writes += 1
        self.last = off + len(data) // self.bdev.block_size
        cb(IoStatus.SUCCESS)

    def _do_write_zeroes(self, off, n, cb):
        cb(IoStatus.SUCCESS)


def test_write_same_iterates_on_a_huge_lun(tmp_path) -> None:
    nb = (1 << 40) // BS  # 1 TiB
    bdev = Bdev(name="Null0", block_size=BS, num_blocks=nb, uuid=str(uuid.uuid4()))
    ch = _SinkChannel(bdev)
    dev = ScsiDevice("iqn.2024-01.test:tgt", PrStore(None), power_on_ua=False)
    lun = ScsiLun(0, bdev, lambda: ch, dev)
    dev.add_lun(lun)
    n = (16 << 30) // BS  # 16 GiB of pattern: 16384 writes of 1 MiB, far past the recursion limit
    cdb = struct.pack(">BBQIBB", 0x93, 0, nb - n, n, 0, 0)
    t = ScsiTask(0, cdb, "i", "t", 1, memoryview(b"\xa5" * BS), BS, "write")
    out: list[ScsiTask] = []
    dev.execute(t, out.append)
    assert out == [t] and t.status == 0, t
    assert ch.writes == 16384 and ch.last == nb


def test_abort_completes_only_when_the_write_finished(tmp_path) -> None:
    env = Env(tmp_path, deferred=True)
    t = ScsiTask(0, rw10(0x2A, 0, 1), "i", "t", 5, memoryview(b"x" * BS), BS, "write")
    out: list[ScsiTask] = []
    env.dev.execute(t, out.append)
    assert out == [] and env.ch.pending
    done: list[str] = []
    assert env.lun.abort_task(5, "i", lambda: done.append("complete"))
    assert done == []  # the write is still in flight
    env.ch.run()
    assert out == [t] and t.status == 0x40 and done == ["complete"]
    # nothing in flight: complete at once
    env.lun.abort_task_set("i", lambda: done.append("set"))
    env.lun.reset(lambda: done.append("reset"))
    assert done == ["complete", "set", "reset"]


def test_staged_reads_use_pool_buffers(tmp_path) -> None:
    name = f"scsi-stage-{os.getpid()}"
    pool = BufferPool.create(name, 1, mem_mb=8, reactor_id=0, hugepages="never")
    try:
        iob = IoBufs(pool)
        env = Env(tmp_path)
        env.ch.copies = True
        lun = ScsiLun(1, env.bdev, lambda: env.ch, env.dev, iobufs=iob)
        lun.stage_reads = True  # as for aio / nvme
        env.dev.add_lun(lun)
        env.ch.mem[: 600 * BS] = bytes(range(256)) * (600 * BS // 256)
        t = env.run(rw10(0x28, 0, 600), lun=1)  # 300 KiB: three chunks, three bdev reads
        assert t.status == 0 and env.ch.reads_into == 3
        assert b"".join(bytes(m) for m in t.data_in) == bytes(env.ch.mem[: 600 * BS])
        assert len(t.iovs) == 1 and iob.in_use == 3
        for v in t.iovs:
            iob.release(v)
        assert iob.in_use == 0
    finally:
        pool.destroy()


def test_aptpl_file_is_fsynced(tmp_path, monkeypatch) -> None:
    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(pr_mod.os, "fsync", fsync)
    path = tmp_path / "pr.json"
    pr_mod.durable_replace(str(path), b'{"luns": {}}')
    assert path.read_bytes() == b'{"luns": {}}' and len(synced) == 2  # file, then folder
    assert not (tmp_path / "pr.json.tmp").exists()


class _OldChannel(IoChannel):
    """A module still on the interface without FUA: write(offset, data, cb)."""

    def __init__(self, bdev: Bdev) -> None:
        super().__init__(bdev)
        self.log: list[str] = []
        self.mem = bytearray(bdev.block_size * bdev.num_blocks)

    def write(self, off, data, cb):  # type: ignore[override]
        self.log.append("write")
        self.mem[off * BS : off * BS + len(data)] = data
        cb(IoStatus.SUCCESS)

    def read(self, off, n, cb):  # type: ignore[override]
        cb(IoStatus.SUCCESS, memoryview(self.mem)[off * BS : (off + n) * BS])

    def compare_and_write(self, off, cmp, wr, cb):  # type: ignore[override]
        if bytes(self.mem[off * BS : off * BS + len(cmp)]) != bytes(cmp):
            cb(IoStatus.MISCOMPARE)
            return
        self.write(off, wr, cb)

    def _do_flush(self, cb):
        self.log.append("flush")
        cb(IoStatus.SUCCESS)


def test_fua_on_a_module_without_fua_flushes(tmp_path) -> None:
    bdev = Bdev(name="Old0", block_size=BS, num_blocks=64, uuid=str(uuid.uuid4()))
    ch = _OldChannel(bdev)
    dev = ScsiDevice("iqn.2024-01.test:tgt", PrStore(None), power_on_ua=False)
    lun = ScsiLun(0, bdev, lambda: ch, dev)
    dev.add_lun(lun)

    def run(cdb: bytes, data: bytes) -> ScsiTask:
        t = ScsiTask(0, cdb, "i", "t", 1, memoryview(data), len(data), "write")
        out: list[ScsiTask] = []
        dev.execute(t, out.append)
        assert out == [t]
        return t

    assert run(rw10(0x2A, 0, 1), bytes(BS)).status == 0
    assert ch.log == ["write"]
    assert run(rw10(0x2A, 0, 1, 0x08), bytes(BS)).status == 0
    assert ch.log == ["write", "write", "flush"]
    t = run(caw(0, 1, 0x08), bytes(BS) + b"\x01" * BS)
    assert t.status == 0 and ch.log[-1] == "flush" and ch.mem[:BS] == b"\x01" * BS
    t = run(caw(0, 1), bytes(BS) + b"\x02" * BS)  # miscompare: no offset from old channels
    assert key(t) == (0xE, 0x1D, 0) and struct.unpack(">I", t.sense[3:7])[0] == 0


def test_saved_wce_survives_a_restart(tmp_path) -> None:
    path = str(tmp_path / "mode.json")
    env = Env(tmp_path)
    env.lun.mode = type(env.lun.mode)(path)
    set_wce(env, False)  # current only: not saved
    assert not os.path.exists(path)
    set_wce(env, False, save=True)
    assert os.path.exists(path)
    # a new LUN object (target restart) starts from the saved values
    env2 = Env(tmp_path)
    env2.lun.mode = type(env2.lun.mode)(path)
    assert not env2.lun.mode.wce and not wce_of(env2, 0) and not wce_of(env2, 3)
    assert wce_of(env2, 2)  # the default is still WCE=1
    env2.run(rw10(0x2A, 0, 1), data=bytes(BS))
    assert env2.ch.writes == [(0, 1, True)]  # write-through after the restart
    # a damaged file gives the defaults
    with open(path, "w") as f:
        f.write("{not json")
    assert type(env2.lun.mode)(path).wce
