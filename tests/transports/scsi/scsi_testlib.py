from __future__ import annotations

from blockfabric.bdevs.base import Bdev, IoChannel, IoStatus
from blockfabric.transports.scsi import PrStore, ScsiDevice, ScsiLun, ScsiTask

BS = 512
NB = 1024
I1 = ("iqn.2024-01.test:host1,i,0x000000000001", "iqn.2024-01.test:tgt,t,0x0001")
I2 = ("iqn.2024-01.test:host2,i,0x000000000002", "iqn.2024-01.test:tgt,t,0x0001")


class MemChannel(IoChannel):
    """bytearray-backed channel with the new bdev I/O interface (fua on
    writes, read ``into``, flush, compare_and_write with first_diff); it
    records what it was asked. With `deferred` completions wait for run()."""

    def __init__(self, bdev: Bdev, deferred: bool = False, copies: bool = False) -> None:
        super().__init__(bdev)
        self.mem = bytearray(bdev.block_size * bdev.num_blocks)
        self.deferred = deferred
        self.copies = copies  # read into `into` (aio/nvme) instead of zero-copy
        self.pending: list = []
        self.writes: list[tuple[int, int, bool]] = []  # (lba, blocks, fua)
        self.flushes = 0
        self.flush_status = IoStatus.SUCCESS
        self.caw: list[tuple[int, bool]] = []
        self.reads_into = 0

    def _complete(self, fn, *args) -> None:
        if self.deferred:
            self.pending.append((fn, args))
        else:
            fn(*args)

    def run(self) -> None:
        while self.pending:
            fn, args = self.pending.pop(0)
            fn(*args)

    def read(self, off, n, cb, into=None):  # type: ignore[override]
        st = self._check(off, n)
        if st:
            cb(st, None)
            return
        bs = self.bdev.block_size
        src = memoryview(self.mem)[off * bs : (off + n) * bs]
        if self.copies and into is not None:
            self.reads_into += 1
            into[: len(src)] = src
            self._complete(cb, IoStatus.SUCCESS, into[: len(src)])
            return
        self._complete(cb, IoStatus.SUCCESS, src)

    def _do_read(self, off, n, cb, into=None):
        bs = self.bdev.block_size
        self._complete(cb, IoStatus.SUCCESS, memoryview(self.mem)[off * bs : (off + n) * bs])

    def write(self, off, data, cb, fua=False):  # type: ignore[override]
        bs = self.bdev.block_size
        st = self._check(off, len(data) // bs)
        if st or len(data) % bs:
            cb(st or IoStatus.FAILED)
            return
        self.writes.append((off, len(data) // bs, fua))
        self.mem[off * bs : off * bs + len(data)] = data
        self._complete(cb, IoStatus.SUCCESS)

    def _do_write(self, off, data, cb, fua=False):
        self.write(off, data, cb, fua)

    def flush(self, cb):  # type: ignore[override]
        self.flushes += 1
        self._complete(cb, self.flush_status)

    def compare_and_write(self, off, cmp, wr, cb, fua=False):  # type: ignore[override]
        bs = self.bdev.block_size
        cur = bytes(self.mem[off * bs : off * bs + len(cmp)])
        self.caw.append((off, fua))
        if cur != bytes(cmp):
            diff = next(i for i in range(len(cmp)) if cur[i] != cmp[i])
            self._complete(cb, IoStatus.MISCOMPARE, diff)
            return
        self.mem[off * bs : off * bs + len(wr)] = wr
        self.writes.append((off, len(wr) // bs, fua))
        self._complete(cb, IoStatus.SUCCESS, -1)

    def _do_write_zeroes(self, off, n, cb):
        bs = self.bdev.block_size
        self.mem[off * bs : (off + n) * bs] = bytes(n * bs)
        self._complete(cb, IoStatus.SUCCESS)


class Env:
    def __init__(self, tmp_path, deferred: bool = False) -> None:
        self.bdev = Bdev(
            name="Malloc0",
            block_size=BS,
            num_blocks=NB,
            uuid="12345678-1234-5678-9abc-def012345678",
            product_name="Malloc disk",
        )
        self.ch = MemChannel(self.bdev, deferred)
        self.pr = PrStore(str(tmp_path / "pr.json"))
        self.dev = ScsiDevice("iqn.2024-01.test:tgt", self.pr, power_on_ua=False)
        self.lun = ScsiLun(0, self.bdev, lambda: self.ch, self.dev)
        self.dev.add_lun(self.lun)

    def run(
        self,
        cdb: bytes | list[int],
        data: bytes | None = None,
        nexus=I1,
        lun: int = 0,
        tag: int = 1,
    ) -> ScsiTask:
        cdb = bytes(cdb)
        t = ScsiTask(
            lun=lun,
            cdb=cdb.ljust(16, b"\0") if len(cdb) < 6 else cdb,
            initiator_port=nexus[0],
            target_port=nexus[1],
            tag=tag,
            data_out=memoryview(data) if data is not None else None,
            expected_transfer_length=len(data) if data else 4096,
            direction="write" if data is not None else "read",
        )
        out: list[ScsiTask] = []
        self.dev.execute(t, out.append)
        if not out:
            self.ch.run()
        assert out == [t]
        return t

    @staticmethod
    def data(t: ScsiTask) -> bytes:
        return b"".join(bytes(m) for m in t.data_in)


def key(t: ScsiTask) -> tuple[int, int, int]:
    assert t.status == 2, t
    return (t.sense[2] & 0xF, t.sense[12], t.sense[13])
