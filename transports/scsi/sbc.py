"""Block commands (SBC-3): read/write/verify, unmap, write same, compare and
write, synchronize cache, pre-fetch, read capacity, get LBA status.

Every handler takes (lun, task, fin); it either raises SenseError before any
I/O is issued or arranges for `fin(task)` to be called exactly once.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from blockfabric.bdevs.base import IoStatus

from . import cdb as C
from .sense import (
    ASC_MISCOMPARE_VERIFY,
    ASC_WRITE_PROTECTED,
    DATA_PROTECT,
    MISCOMPARE,
    SenseError,
    build_sense,
    invalid_cdb,
    invalid_opcode,
    invalid_param,
    lba_out_of_range,
    param_list_length,
)

if TYPE_CHECKING:
    from .lun import ScsiLun
    from .task import ScsiTask

Fin = Callable[["ScsiTask"], None]
WRITE_SAME_CHUNK = 1 << 20  # bytes per write when emulating WRITE SAME with data


def check_range(lun: ScsiLun, lba: int, n: int) -> None:
    nb = lun.bdev.num_blocks
    if lba > nb or lba + n > nb:
        raise lba_out_of_range()


def _protect_field(cdb: bytes) -> None:
    # RDPROTECT/WRPROTECT/VRPROTECT need protection information we do not format
    if cdb[0] >> 5 and cdb[1] & 0xE0:
        raise invalid_cdb(1, 7)


def _check_writable(lun: ScsiLun) -> None:
    if lun.mode.swp or lun.read_only:
        raise SenseError(DATA_PROTECT, ASC_WRITE_PROTECTED)


def first_diff(a: memoryview, b: memoryview) -> int:
    """Offset of the first differing byte (a != b known or suspected)."""
    step = 4096
    for i in range(0, min(len(a), len(b)), step):
        if a[i : i + step] != b[i : i + step]:
            x, y = bytes(a[i : i + step]), bytes(b[i : i + step])
            for j in range(len(x)):
                if x[j] != y[j]:
                    return i + j
    return min(len(a), len(b))


def miscompare(offset: int) -> bytes:
    return build_sense(MISCOMPARE, *ASC_MISCOMPARE_VERIFY, info=offset)


# byte of the TRANSFER LENGTH field per CDB group (6, 10, 12 and 16 bytes)
_TL_BYTE = {0: 4, 1: 7, 2: 7, 4: 10, 5: 6}


def _check_transfer(lun: ScsiLun, cdb: bytes, n: int) -> None:
    """READ/WRITE above the Block Limits MAXIMUM TRANSFER LENGTH (SBC-3 6.5.3)."""
    mx = lun.max_transfer_blocks
    if mx and n > mx:
        raise invalid_cdb(_TL_BYTE.get(cdb[0] >> 5, 0))


def wants_fua(lun: ScsiLun, cdb: bytes) -> bool:
    """Must this write be durable before GOOD? Always with the write cache
    disabled (WCE = 0: write-through); else when the CDB sets FUA or FUA_NV
    (treated as FUA). WRITE(6) has neither bit."""
    if not lun.mode.wce:
        return True
    return cdb[0] >> 5 != 0 and bool(cdb[1] & 0x0A)


_KW_CACHE: dict[tuple[type, str, str], bool] = {}


def takes(ch: Any, method: str, kw: str) -> bool:
    """Does this channel's ``method`` take keyword ``kw``? (bdev modules move
    to the FUA / read-into interface one by one; cached per class)."""
    key = (type(ch), method, kw)
    got = _KW_CACHE.get(key)
    if got is None:
        try:
            got = kw in inspect.signature(getattr(ch, method)).parameters
        except (TypeError, ValueError):
            got = False
        _KW_CACHE[key] = got
    return got


def bdev_write(
    ch: Any, lba: int, data: memoryview, cb: Callable[[IoStatus], None], fua: bool
) -> None:
    if not fua:
        ch.write(lba, data, cb)
    elif takes(ch, "write", "fua"):
        ch.write(lba, data, cb, fua=True)
    else:
        # a module without FUA: a flush after the write gives the same promise
        def _written(st: IoStatus) -> None:
            if st:
                cb(st)
            else:
                ch.flush(cb)

        ch.write(lba, data, _written)


class _Steps:
    """Run asynchronous steps one after another without recursing when the
    channel completes synchronously (malloc, null): a loop of any length
    uses constant stack. ``step(cb)`` issues one I/O and returns False when
    there is nothing left; ``end(status)`` runs once."""

    def __init__(
        self, step: Callable[[Callable[[IoStatus], None]], bool], end: Callable[[IoStatus], None]
    ) -> None:
        self.step = step
        self.end = end
        self._sync = False
        self._box: list[IoStatus] = []

    def start(self) -> None:
        self._run(IoStatus.SUCCESS)

    def _cb(self, st: IoStatus, *_: Any) -> None:
        if self._sync:
            self._box.append(st)
        else:
            self._run(st)

    def _run(self, st: IoStatus) -> None:
        while True:
            if st:
                self.end(st)
                return
            self._box.clear()
            self._sync = True
            try:
                more = self.step(self._cb)
            finally:
                self._sync = False
            if not more:
                self.end(IoStatus.SUCCESS)
                return
            if not self._box:
                return  # completes later through _cb
            st = self._box[0]


# ------------------------------------------------------------------ read
def read(lun: ScsiLun, task: ScsiTask, fin: Fin) -> None:
    cdb = task.cdb
    lba, n, _ = C.parse_rw(cdb)
    _protect_field(cdb)
    check_range(lun, lba, n)
    _check_transfer(lun, cdb, n)
    if n == 0:
        fin(task)
        return
    ch = lun.channel()
    if lun.stage_reads and lun.iobufs is not None:
        _staged_read(lun, task, fin, ch, lba, n)
        return

    def _done(st: IoStatus, data: memoryview | None) -> None:
        if st:
            lun.io_error(task, st, read=True)
        elif data is not None:
            task.data_in = [data]
        fin(task)

    ch.read(lba, n, _done)


def _staged_read(lun: ScsiLun, task: ScsiTask, fin: Fin, ch: Any, lba: int, n: int) -> None:
    """A bdev that copies (aio, nvme) reads into pool buffers, one chunk per
    bdev call; the transport releases them (task.iovs) once the data is sent."""
    assert lun.iobufs is not None
    bs = lun.bdev.block_size
    iobufs = lun.iobufs

    def _granted(iov: Any) -> None:
        task.iovs.append(iov)
        views = iov.views
        pos = [0, lba]  # chunk index, next LBA
        got: list[memoryview] = []

        def step(cb: Callable[[IoStatus], None]) -> bool:
            i = pos[0]
            if i >= len(views):
                return False
            into = views[i]
            k = len(into) // bs
            start = pos[1]
            pos[0] += 1
            pos[1] += k

            def _chunk(st: IoStatus, data: memoryview | None) -> None:
                if not st:
                    got.append(data if data is not None else into)
                cb(st if st or data is not None else IoStatus.FAILED)

            if takes(ch, "read", "into"):
                ch.read(start, k, _chunk, into=into)
            else:
                ch.read(start, k, _chunk)
            return True

        def end(st: IoStatus) -> None:
            if st:
                for v in task.iovs:
                    iobufs.release(v)
                task.iovs.clear()
                lun.io_error(task, st, read=True)
            else:
                task.data_in = got
            fin(task)

        _Steps(step, end).start()

    iobufs.acquire(n * bs, _granted)


# ------------------------------------------------------------------ write
def write(lun: ScsiLun, task: ScsiTask, fin: Fin, fua: bool = False) -> None:
    """WRITE(6/10/12/16), or one piece of it: a transport that receives the
    data burst by burst runs one task per piece, ``task.offset`` bytes into
    the transfer (block aligned); every piece checks the CDB again."""
    cdb = task.cdb
    lba, n, _ = C.parse_rw(cdb)
    _protect_field(cdb)
    check_range(lun, lba, n)
    _check_transfer(lun, cdb, n)
    _check_writable(lun)
    bs = lun.bdev.block_size
    task.transfer_length = n * bs
    skip = task.offset // bs
    # iSCSI EDTL smaller than the CDB's length: write only the whole blocks sent
    k = min(n - skip, task.data_out_length() // bs)
    if k <= 0:
        fin(task)
        return
    assert task.data_out is not None
    data = task.data_out[: k * bs]
    ch = lun.channel()
    bdev_write(ch, lba + skip, data, _write_done(lun, task, fin), fua or wants_fua(lun, cdb))


def _write_done(lun: ScsiLun, task: ScsiTask, fin: Fin) -> Callable[[IoStatus], None]:
    """Completion of a write: sense on error. Durability (FUA, WCE = 0) is
    the bdev's job: the write was issued with fua=True when it must be."""

    def done(st: IoStatus) -> None:
        if st:
            lun.io_error(task, st, read=False)
        fin(task)

    return done


# ------------------------------------------------------------------ orwrite
def orwrite(lun: ScsiLun, task: ScsiTask, fin: Fin) -> None:
    """ORWRITE(16) (SBC-3 5.8): medium := medium OR data-out, as one read and
    one write with no yield in between (the reactor runs nothing else)."""
    cdb = task.cdb
    lba, n, _ = C.parse_rw(cdb)
    _protect_field(cdb)
    check_range(lun, lba, n)
    _check_transfer(lun, cdb, n)
    _check_writable(lun)
    bs = lun.bdev.block_size
    task.transfer_length = n * bs
    n = min(n, task.data_out_length() // bs)
    if n == 0:
        fin(task)
        return
    assert task.data_out is not None
    data = task.data_out[: n * bs]
    fua = wants_fua(lun, cdb)
    ch = lun.channel()

    _written = _write_done(lun, task, fin)

    def _read(st: IoStatus, cur: memoryview | None) -> None:
        if st or cur is None:
            lun.io_error(task, st or IoStatus.FAILED, read=True)
            fin(task)
            return
        size = n * bs
        merged = int.from_bytes(cur, "little") | int.from_bytes(data, "little")
        bdev_write(ch, lba, memoryview(merged.to_bytes(size, "little")), _written, fua)

    ch.read(lba, n, _read)


# ------------------------------------------------------------------ verify
def verify(lun: ScsiLun, task: ScsiTask, fin: Fin) -> None:
    cdb = task.cdb
    lba, n, flags = C.parse_rw(cdb)
    _protect_field(cdb)
    bytchk = (flags >> 1) & 0x3
    if bytchk == 2:
        raise invalid_cdb(1, 2)
    check_range(lun, lba, n)
    if n == 0:
        fin(task)
        return
    bs = lun.bdev.block_size
    if bytchk:
        need = bs if bytchk == 3 else n * bs
        if task.data_out_length() < need:
            raise param_list_length()
        assert task.data_out is not None
        expect = task.data_out[:need]
    ch = lun.channel()

    def _done(st: IoStatus, data: memoryview | None) -> None:
        if st:
            lun.io_error(task, st, read=True)
        elif bytchk and data is not None:
            if bytchk == 1:
                if data != expect:
                    task.check_condition(miscompare(first_diff(expect, data)))
            else:
                for i in range(n):
                    blk = data[i * bs : (i + 1) * bs]
                    if blk != expect:
                        task.check_condition(miscompare(i * bs + first_diff(expect, blk)))
                        break
        fin(task)

    ch.read(lba, n, _done)


def write_verify(lun: ScsiLun, task: ScsiTask, fin: Fin) -> None:
    if task.cdb[1] & 0x04 and task.cdb[1] & 0x02:
        raise invalid_cdb(1, 2)
    # the data is verified on the medium: it must be there, not in a cache
    write(lun, task, fin, fua=True)


# ------------------------------------------------------- compare and write
def compare_and_write(lun: ScsiLun, task: ScsiTask, fin: Fin) -> None:
    cdb = task.cdb
    _protect_field(cdb)
    lba = C.be(cdb, 2, 8)
    n = cdb[13]
    if n > lun.max_caw_blocks:
        raise invalid_cdb(13)
    check_range(lun, lba, n)
    _check_writable(lun)
    if n == 0:
        if task.data_out_length():
            # data for a zero-length compare: the CDB's count does not match
            # the transfer (e.g. 256 wrapped to 0), not a no-op
            raise invalid_cdb(13)
        fin(task)
        return
    bs = lun.bdev.block_size
    task.transfer_length = 2 * n * bs
    if task.data_out_length() != 2 * n * bs:
        raise invalid_cdb(13)
    assert task.data_out is not None
    expect = task.data_out[: n * bs]
    new = task.data_out[n * bs : 2 * n * bs]
    ch = lun.channel()
    fua = wants_fua(lun, cdb)

    def _located(st: IoStatus, cur: memoryview | None) -> None:
        # a channel that did not say where: find the first differing byte
        off = first_diff(expect, cur) if not st and cur is not None else 0
        task.check_condition(miscompare(off))
        fin(task)

    def _done(st: IoStatus, diff: int = -1) -> None:
        if st == IoStatus.MISCOMPARE:
            # nothing was written; INFORMATION: offset of the first differing byte
            if diff < 0:
                ch.read(lba, n, _located)
                return
            task.check_condition(miscompare(diff))
        elif st:
            lun.io_error(task, st, read=False)
        fin(task)

    # atomic against every write to the range from every reactor (range lock)
    caw: Any = ch.compare_and_write
    if not fua:
        caw(lba, expect, new, _done)
    elif takes(ch, "compare_and_write", "fua"):
        caw(lba, expect, new, _done, fua=True)
    else:

        def _then_flush(st: IoStatus, diff: int = -1) -> None:
            if st:
                _done(st, diff)
            else:
                ch.flush(lambda fst: _done(fst, -1))

        caw(lba, expect, new, _then_flush)


# ------------------------------------------------------------------ unmap
def unmap(lun: ScsiLun, task: ScsiTask, fin: Fin) -> None:
    cdb = task.cdb
    if not lun.bdev.supports_unmap:
        raise invalid_opcode()
    if cdb[1] & 0x01:
        raise invalid_cdb(1, 0)  # ANCHOR: anchored state not supported
    _check_writable(lun)
    plen = C.be(cdb, 7, 2)
    if plen == 0:
        fin(task)
        return
    if plen < 8:
        raise param_list_length()
    if task.data_out_length() < plen:
        raise param_list_length()
    assert task.data_out is not None
    p = task.data_out[:plen]
    data_len = C.be(p, 0, 2)
    bd_len = C.be(p, 2, 2)
    if data_len + 2 > plen or data_len < 6:
        raise invalid_param(0)
    if bd_len + 8 > plen:
        raise invalid_param(2)
    count = bd_len // 16
    if count > lun.max_unmap_descriptors:
        raise invalid_param(2)
    ranges: list[tuple[int, int]] = []
    total = 0
    for i in range(count):
        off = 8 + 16 * i
        lba = C.be(p, off, 8)
        n = C.be(p, off + 8, 4)
        check_range(lun, lba, n)
        if n > lun.max_unmap_lba_count:
            raise invalid_param(off + 8)
        total += n
        if n:
            ranges.append((lba, n))
    if total > lun.max_unmap_lba_count:
        raise invalid_param(8)
    _run_ranges(lun, task, fin, ranges, unmap=True)


def _run_ranges(
    lun: ScsiLun,
    task: ScsiTask,
    fin: Fin,
    ranges: list[tuple[int, int]],
    unmap: bool,
    durable: bool = False,
) -> None:
    if not ranges:
        fin(task)
        return
    ch = lun.channel()
    it = iter(ranges)

    # one range at a time: bounded work per callback, first error stops the rest
    def step(cb: Callable[[IoStatus], None]) -> bool:
        nxt = next(it, None)
        if nxt is None:
            return False
        if unmap:
            ch.unmap(nxt[0], nxt[1], cb)
        else:
            ch.write_zeroes(nxt[0], nxt[1], cb)
        return True

    def end(st: IoStatus) -> None:
        if st:
            lun.io_error(task, st, read=False)
        elif durable:
            # no FUA on unmap / write zeroes: a flush makes them durable
            ch.flush(flushed)
            return
        fin(task)

    def flushed(st: IoStatus) -> None:
        if st:
            lun.io_error(task, st, read=False)
        fin(task)

    _Steps(step, end).start()


# ------------------------------------------------------------- write same
def write_same(lun: ScsiLun, task: ScsiTask, fin: Fin) -> None:
    cdb = task.cdb
    sixteen = cdb[0] == C.WRITE_SAME_16
    if cdb[1] & 0xE0:
        raise invalid_cdb(1, 7)
    if cdb[1] & 0x10:
        raise invalid_cdb(1, 4)  # ANCHOR
    if cdb[1] & 0x06:
        raise invalid_cdb(1, 2)  # PBDATA/LBDATA (obsolete)
    unmap_bit = bool(cdb[1] & 0x08)
    ndob = sixteen and bool(cdb[1] & 0x01)
    if sixteen:
        lba, n = C.be(cdb, 2, 8), C.be(cdb, 10, 4)
    else:
        lba, n = C.be(cdb, 2, 4), C.be(cdb, 7, 2)
    nb = lun.bdev.num_blocks
    if lba > nb:
        raise lba_out_of_range()
    if n == 0:
        n = nb - lba  # WSNZ=0: to the last LBA
    check_range(lun, lba, n)
    if lun.max_write_same_blocks and n > lun.max_write_same_blocks:
        raise invalid_cdb(10 if sixteen else 7)
    if unmap_bit and not lun.bdev.supports_unmap:
        raise invalid_cdb(1, 3)
    _check_writable(lun)
    bs = lun.bdev.block_size
    if ndob:
        block: memoryview | None = None
    else:
        task.transfer_length = bs
        if task.data_out_length() < bs:
            raise param_list_length()
        assert task.data_out is not None
        block = task.data_out[:bs]
    if n == 0:
        fin(task)
        return
    # UNMAP=1 deallocates whatever the data block holds (as LIO and tgt do):
    # with LBPRZ=1 the blocks then read back as zeros
    if unmap_bit or block is None or not any(block):
        _run_ranges(lun, task, fin, [(lba, n)], unmap=unmap_bit, durable=wants_fua(lun, cdb))
        return
    assert block is not None
    per = max(1, WRITE_SAME_CHUNK // bs)
    chunk = memoryview(bytes(block) * min(per, n))
    ch = lun.channel()
    state = [lba, n]
    fua = wants_fua(lun, cdb)

    # iterate, never recurse: a LUN of any size is one loop
    def step(cb: Callable[[IoStatus], None]) -> bool:
        if state[1] == 0:
            return False
        k = min(per, state[1])
        start = state[0]
        state[0] += k
        state[1] -= k
        bdev_write(ch, start, chunk[: k * bs], cb, fua)
        return True

    def end(st: IoStatus) -> None:
        if st:
            lun.io_error(task, st, read=False)
        fin(task)

    _Steps(step, end).start()


# ------------------------------------------------------- cache & capacity
def sync_cache(lun: ScsiLun, task: ScsiTask, fin: Fin) -> None:
    cdb = task.cdb
    if cdb[0] == C.SYNCHRONIZE_CACHE_10:
        lba, n = C.be(cdb, 2, 4), C.be(cdb, 7, 2)
    else:
        lba, n = C.be(cdb, 2, 8), C.be(cdb, 10, 4)
    check_range(lun, lba, n)

    def _done(st: IoStatus) -> None:
        if st:
            lun.io_error(task, st, read=False)
        fin(task)

    lun.channel().flush(_done)


def pre_fetch(lun: ScsiLun, task: ScsiTask, fin: Fin) -> None:
    cdb = task.cdb
    if cdb[0] == C.PRE_FETCH_10:
        lba, n = C.be(cdb, 2, 4), C.be(cdb, 7, 2)
    else:
        lba, n = C.be(cdb, 2, 8), C.be(cdb, 10, 4)
    check_range(lun, lba, n)
    fin(task)  # GOOD: nothing is cached ahead of time


def read_capacity_10(lun: ScsiLun, task: ScsiTask, fin: Fin) -> None:
    cdb = task.cdb
    if not cdb[8] & 0x01 and C.be(cdb, 2, 4):
        raise invalid_cdb(2)
    last = lun.bdev.num_blocks - 1
    data = min(last, 0xFFFFFFFF).to_bytes(4, "big") + lun.bdev.block_size.to_bytes(4, "big")
    task.set_data(data)
    fin(task)


def read_capacity_16(lun: ScsiLun, task: ScsiTask, fin: Fin) -> None:
    b = bytearray(32)
    b[0:8] = (lun.bdev.num_blocks - 1).to_bytes(8, "big")
    b[8:12] = lun.bdev.block_size.to_bytes(4, "big")
    if lun.bdev.supports_unmap:
        b[14] = 0x80 | 0x40  # LBPME, LBPRZ
    task.set_data(b, C.be(task.cdb, 10, 4))
    fin(task)


def get_lba_status(lun: ScsiLun, task: ScsiTask, fin: Fin) -> None:
    cdb = task.cdb
    lba = C.be(cdb, 2, 8)
    alloc = C.be(cdb, 10, 4)
    nb = lun.bdev.num_blocks
    if lba >= nb:
        raise lba_out_of_range()
    b = bytearray(24)
    b[0:4] = (20).to_bytes(4, "big")
    b[8:16] = lba.to_bytes(8, "big")
    b[16:20] = min(nb - lba, 0xFFFFFFFF).to_bytes(4, "big")
    b[20] = 0  # mapped (the bdev interface cannot report holes)
    task.set_data(b, alloc)
    fin(task)


def service_action_in(lun: ScsiLun, task: ScsiTask, fin: Fin) -> None:
    sa = task.cdb[1] & 0x1F
    if sa == C.SAI_READ_CAPACITY_16:
        read_capacity_16(lun, task, fin)
    elif sa == C.SAI_GET_LBA_STATUS:
        get_lba_status(lun, task, fin)
    else:
        raise invalid_cdb(1, 4)
