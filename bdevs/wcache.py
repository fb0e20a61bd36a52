"""wcache bdev: a volatile write cache in front of another bdev (power-loss testing).

``bdev_wcache_create -b BASE -p NAME`` puts a model of a disk's volatile
write cache in front of BASE: an acknowledged write sits in the cache (reads
see it) until a flush or a FUA write makes it durable on the base;
``bdev_wcache_power_fail NAME`` drops everything not yet durable (with
``--reorder``, an arbitrary subset of the dirty writes reaches the base first,
in any order, as a real cache may have destaged them) and the device then
behaves as freshly powered up. With it a test shows that every write
acknowledged with FUA, or followed by an acknowledged flush, or written in
write-through mode, survives a power failure, and ``ignore_fua`` (a test-only
knob that treats FUA writes and flushes as ordinary cached writes) shows the
same test does lose data then.

Shared state. Every reactor opens its own channel, so the cache lives in one
shared-memory segment (``blockfabric.I.wcache.NAME``, created by the
supervisor, in the manifest) guarded by one POSIX semaphore of the same name:

* a log of dirty writes in arrival order: an index ring of entries
  ``(lba, nblocks, data_pos)`` and a data ring holding each entry's bytes
  contiguously; ``head``/``tail`` are monotonic entry numbers, ``data_pos``
  monotonic byte positions. Entries in ``[head, tail)`` are not yet known
  durable; their bytes are immutable until ``head`` passes them.
* a write appends one entry under the semaphore (so writes from different
  reactors are ordered and never tear); when the rings are full it waits for
  a destage.
* a destage (flush, FUA, or room needed) is run by one owner at a time (owner
  pid + token in the header, taken over if the owner died): it writes the
  entries ``[head, T)`` to the base in log order, flushes the base, then sets
  ``head = T``. Base I/O happens outside the semaphore.
* a read reads the base, then, under the semaphore, lays every entry from the
  ``head`` it saw at submission onwards over the result, in log order. That
  gives the current content whatever part of those entries a concurrent
  destage already wrote to the base, provided their bytes are still in the
  ring (checked) and no power failure happened meanwhile (a generation
  counter); otherwise the read is retried.
* compare-and-write does the read's overlay, the compare and, when equal,
  the append in one hold of the semaphore: atomic against every write of
  every reactor.
* write-zeroes and unmap destage first and then go to the base directly.

A flush, FUA or write-through write completes SUCCESS only once its data is
on the base and the base was flushed, and only if no power failure happened
while it waited (then it completes FAILED, as a host would never have seen
the acknowledgement). The base should not be written behind the cache's back
(its delete is refused while the cache exists). The base must complete I/O in
the supervisor without a loop (malloc, aio, null): power_fail runs there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from typing import Any

import posix_ipc

from ..shm import names
from ..shm.manifest import Manifest
from ..shm.procs import pid_alive
from ..shm.segment import SharedSegment
from .base import (
    Bdev,
    Callback,
    CompareCallback,
    IoChannel,
    IoStatus,
    ReadCallback,
    first_difference,
)
from .locks import STEAL_AFTER_S

log = logging.getLogger(__name__)

MAGIC = 0x57434143484530  # "WCACHE0"
HDR_BYTES = 4096
ENTRY_WORDS = 4  # lba, nblocks, data_pos, spare
PIECE = 128 * 1024  # largest single cache entry
READ_RETRIES = 32
OWNER_POLL_S = 0.001
DEFAULT_MAX_DIRTY_MB = 16

# header words (u64)
H_MAGIC, H_GEN, H_HEAD, H_TAIL, H_DTAIL, H_OWNER_PID, H_OWNER_TOK = range(7)
H_MAX_ENTRIES, H_CAP, H_BS, H_IGNORE_FUA = 7, 8, 9, 10
H_DESTAGED, H_POWER_FAILS, H_LAST_DROPPED, H_LAST_APPLIED = 11, 12, 13, 14


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


class _Mutex:
    """The cache's semaphore as a context manager (taken over after a dead holder)."""

    __slots__ = ("sem", "name")

    def __init__(self, sem: Any, name: str) -> None:
        self.sem = sem
        self.name = name

    def __enter__(self) -> None:
        try:
            self.sem.acquire(STEAL_AFTER_S)
        except posix_ipc.BusyError:
            log.error(
                "wcache %s: lock held for %.0f s (dead holder?): taking it over",
                self.name,
                STEAL_AFTER_S,
            )

    def __exit__(self, *exc: object) -> None:
        self.sem.release()


class _Cache:
    """This process's mapping of the shared cache state."""

    def __init__(self, seg: SharedSegment, sem: Any) -> None:
        self.seg = seg
        self.sem = sem
        self.mutex = _Mutex(sem, seg.name)
        self.h = seg.buf[:HDR_BYTES].cast("Q")
        self.max_entries = self.h[H_MAX_ENTRIES]
        self.cap = self.h[H_CAP]
        ibytes = _round_up(self.max_entries * ENTRY_WORDS * 8, 4096)
        self.idx = seg.buf[HDR_BYTES : HDR_BYTES + ibytes].cast("Q")
        self.data = seg.buf[HDR_BYTES + ibytes : HDR_BYTES + ibytes + self.cap]

    @staticmethod
    def size(max_entries: int, cap: int) -> int:
        return HDR_BYTES + _round_up(max_entries * ENTRY_WORDS * 8, 4096) + cap

    def close(self) -> None:
        for v in (self.h, self.idx, self.data):
            v.release()
        self.seg.close()
        with contextlib.suppress(Exception):
            self.sem.close()

    # -- under the mutex --------------------------------------------------
    def entry(self, e: int) -> tuple[int, int, int]:
        j = (e % self.max_entries) * ENTRY_WORDS
        idx = self.idx
        return idx[j], idx[j + 1], idx[j + 2]

    def data_head(self) -> int:
        h = self.h
        return self.entry(h[H_HEAD])[2] if h[H_HEAD] < h[H_TAIL] else h[H_DTAIL]

    def append(self, lba: int, data: memoryview, nblocks: int) -> int:
        """Append one entry; its number, or -1 when the rings are full."""
        h = self.h
        n = len(data)
        tail = h[H_TAIL]
        if tail - h[H_HEAD] >= self.max_entries:
            return -1
        pos = h[H_DTAIL]
        if pos % self.cap + n > self.cap:
            pos = _round_up(pos, self.cap)  # never wrap an entry's bytes
        if pos + n - self.data_head() > self.cap:
            return -1
        p = pos % self.cap
        self.data[p : p + n] = data
        j = (tail % self.max_entries) * ENTRY_WORDS
        self.idx[j] = lba
        self.idx[j + 1] = nblocks
        self.idx[j + 2] = pos
        h[H_DTAIL] = pos + n
        h[H_TAIL] = tail + 1
        return tail

    def intact_from(self, e: int) -> bool:
        """Are entries ``e..tail`` still in the rings (not overwritten)?"""
        h = self.h
        tail = h[H_TAIL]
        if e >= tail:
            return True
        if tail - e > self.max_entries:
            return False
        return bool(h[H_DTAIL] <= self.entry(e)[2] + self.cap)

    def overlay(self, first: int, lba: int, nblocks: int, bs: int) -> list[tuple[int, int, int]]:
        """(dest byte offset, ring byte offset, length) of every piece of the
        entries ``first..tail`` that falls in [lba, lba+nblocks), in log order."""
        out = []
        end = lba + nblocks
        for e in range(first, self.h[H_TAIL]):
            elba, en, pos = self.entry(e)
            lo, hi = max(lba, elba), min(end, elba + en)
            if lo < hi:
                out.append(((lo - lba) * bs, pos % self.cap + (lo - elba) * bs, (hi - lo) * bs))
        return out

    def try_own(self, token: int) -> bool:
        h = self.h
        with self.mutex:
            pid = h[H_OWNER_PID]
            if pid and not (pid == os.getpid() and h[H_OWNER_TOK] == token) and pid_alive(pid):
                return False
            h[H_OWNER_PID] = os.getpid()
            h[H_OWNER_TOK] = token
            return True

    def disown(self, token: int) -> None:
        h = self.h
        with self.mutex:
            if h[H_OWNER_PID] == os.getpid() and h[H_OWNER_TOK] == token:
                h[H_OWNER_PID] = 0
                h[H_OWNER_TOK] = 0


class WcacheChannel(IoChannel):
    def __init__(self, bdev: WcacheBdev, loop: Any) -> None:
        super().__init__(bdev)
        self.wb = bdev
        self.loop = loop
        self.bs = bdev.block_size
        self.cache = bdev.cache()
        self.base = bdev.base_bdev().open_channel(loop)
        self.token = random.getrandbits(63) | 1
        self.ignore_fua = bool(self.cache.h[H_IGNORE_FUA])
        # writes waiting for room, in order: (lba, data, fua, cb)
        self.waitq: list[tuple[int, memoryview, bool, Callback]] = []
        # destage waiters: (target entry, generation, cb)
        self.waiters: list[tuple[int, int, Callback]] = []
        self.destaging = False
        self._timer: Any = None
        self.closed = False
        # destage job
        self._job_i = self._job_end = self._job_gen = 0
        self._job_err = IoStatus.SUCCESS
        self._in_call = False
        self._sync_done = False

    # -------------------------------------------------------------- reads
    def _do_read(
        self, offset_blocks: int, num_blocks: int, cb: ReadCallback, into: memoryview | None = None
    ) -> None:
        self._read(offset_blocks, num_blocks, into, lambda st, v, _c: cb(st, v), 0)

    def _read(
        self,
        lba: int,
        nblocks: int,
        into: memoryview | None,
        then: Any,
        attempt: int,
        under_lock: Any = None,
    ) -> None:
        """Read with the cache laid over the base; ``then(status, view, cache)``
        runs (and ``under_lock(view)``, if given, inside the same hold of the
        semaphore, its result passed as the third argument)."""
        c = self.cache
        with c.mutex:
            gen, first = c.h[H_GEN], c.h[H_HEAD]
        n = nblocks * self.bs
        buf = into[:n] if into is not None else None

        def based(st: IoStatus, view: memoryview | None) -> None:
            if st or view is None or self.closed:
                then(st or IoStatus.FAILED, None, None)
                return
            view = view[:n]
            nonlocal buf
            extra: Any = None
            with c.mutex:
                ok = c.h[H_GEN] == gen and c.intact_from(first)
                if ok:
                    pieces = c.overlay(first, lba, nblocks, self.bs)
                    if pieces:
                        if buf is None:
                            buf = memoryview(bytearray(n))
                        if view.obj is not buf.obj:
                            buf[:] = view
                        view = buf
                        data = c.data
                        for d, r, k in pieces:
                            view[d : d + k] = data[r : r + k]
                    if under_lock is not None:
                        extra = under_lock(view)
            if not ok:
                if attempt >= READ_RETRIES:
                    log.error("wcache %s: read retried %d times, failing", self.bdev.name, attempt)
                    then(IoStatus.FAILED, None, None)
                else:
                    self._read(lba, nblocks, into, then, attempt + 1, under_lock)
                return
            then(IoStatus.SUCCESS, view, extra)

        self.base.read(lba, nblocks, based, buf)

    def _do_compare(self, offset_blocks: int, data: memoryview, cb: CompareCallback) -> None:
        def done(st: IoStatus, view: memoryview | None, _x: Any) -> None:
            if st or view is None:
                cb(st or IoStatus.FAILED, -1)
                return
            d = first_difference(view, data)
            cb(IoStatus.MISCOMPARE if d >= 0 else IoStatus.SUCCESS, d)

        self._read(offset_blocks, len(data) // self.bs, None, done, 0)

    def _do_compare_and_write(
        self,
        offset_blocks: int,
        compare: memoryview,
        write: memoryview,
        cb: CompareCallback,
        fua: bool,
    ) -> None:
        nblocks = len(write) // self.bs
        if len(write) > PIECE or len(write) > self.cache.cap:
            cb(IoStatus.FAILED, -1)
            return

        def under_lock(view: memoryview) -> tuple[int, int]:
            d = first_difference(view, compare)
            if d >= 0:
                return d, -1
            return -1, self.cache.append(offset_blocks, write, nblocks)

        def done(st: IoStatus, view: memoryview | None, res: Any) -> None:
            if st:
                cb(st, -1)
                return
            diff, e = res
            if diff >= 0:
                cb(IoStatus.MISCOMPARE, diff)
            elif e < 0:  # no room: make some, then try the whole thing again
                self._destage_all(
                    lambda s: (
                        cb(s, -1)
                        if s
                        else self._do_compare_and_write(offset_blocks, compare, write, cb, fua)
                    )
                )
            elif fua and not self.ignore_fua:
                self._destage(e + 1, lambda s: cb(s, -1))
            else:
                cb(IoStatus.SUCCESS, -1)

        self._read(offset_blocks, nblocks, None, done, 0, under_lock)

    # ------------------------------------------------------------- writes
    def _do_write(
        self, offset_blocks: int, data: memoryview, cb: Callback, fua: bool = False
    ) -> None:
        if len(data) > PIECE:
            # one entry per piece; done when all are
            pieces = [(off, data[off : off + PIECE]) for off in range(0, len(data), PIECE)]
            left = [len(pieces), IoStatus.SUCCESS]

            def one(st: IoStatus) -> None:
                if st and not left[1]:
                    left[1] = st
                left[0] -= 1
                if left[0] == 0:
                    cb(IoStatus(left[1]))

            for off, p in pieces:
                self._write_piece(offset_blocks + off // self.bs, p, fua, one)
            return
        self._write_piece(offset_blocks, data, fua, cb)

    def _write_piece(self, lba: int, data: memoryview, fua: bool, cb: Callback) -> None:
        if self.waitq:
            self.waitq.append((lba, data, fua, cb))
            return
        if not self._append(lba, data, fua, cb):
            self.waitq.append((lba, data, fua, cb))
            self._destage_all(self._room)

    def _append(self, lba: int, data: memoryview, fua: bool, cb: Callback) -> bool:
        c = self.cache
        with c.mutex:
            e = c.append(lba, data, len(data) // self.bs)
        if e < 0:
            return False
        if fua and not self.ignore_fua:
            self._destage(e + 1, cb)
        else:
            cb(IoStatus.SUCCESS)
        return True

    def _room(self, st: IoStatus) -> None:
        """A destage finished: append the waiting writes that now fit."""
        while self.waitq:
            lba, data, fua, cb = self.waitq[0]
            if st:
                self.waitq.pop(0)
                cb(st)
                continue
            if not self._append(lba, data, fua, cb):
                self._destage_all(self._room)
                return
            self.waitq.pop(0)

    def _do_flush(self, cb: Callback) -> None:
        if self.ignore_fua:
            cb(IoStatus.SUCCESS)  # the deliberately broken test double
            return
        self._destage_all(cb)

    def _do_write_zeroes(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        def go(st: IoStatus) -> None:
            if st:
                cb(st)
            else:
                self.base.write_zeroes(offset_blocks, num_blocks, cb)

        self._destage_all(go)

    def _do_unmap(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        def go(st: IoStatus) -> None:
            if st:
                cb(st)
            else:
                self.base.unmap(offset_blocks, num_blocks, cb)

        self._destage_all(go)

    # ------------------------------------------------------------ destage
    def _destage_all(self, cb: Callback) -> None:
        with self.cache.mutex:
            target = self.cache.h[H_TAIL]
        self._destage(target, cb)

    def _destage(self, target: int, cb: Callback) -> None:
        """cb(SUCCESS) once entries < target are durable on the base."""
        with self.cache.mutex:
            gen = self.cache.h[H_GEN]
        self.waiters.append((target, gen, cb))
        self._kick()

    def _settle(self) -> None:
        """Complete the waiters whose target is durable (or lost to a power failure)."""
        h = self.cache.h
        with self.cache.mutex:
            head, gen = h[H_HEAD], h[H_GEN]
        keep = []
        done = []
        for t, g, cb in self.waiters:
            if g != gen:
                done.append((cb, IoStatus.FAILED))
            elif t <= head:
                done.append((cb, IoStatus.SUCCESS))
            else:
                keep.append((t, g, cb))
        self.waiters = keep
        for cb, st in done:
            cb(st)

    def _kick(self) -> None:
        if self.destaging or self.closed:
            return
        self._settle()
        if not self.waiters:
            return
        while not self.cache.try_own(self.token):
            # another reactor (or the supervisor's power_fail) destages
            if self.loop is not None:
                if self._timer is None:
                    self._timer = self.loop.call_later(OWNER_POLL_S, self._retry_kick)
                return
            time.sleep(OWNER_POLL_S)  # no loop: a synchronous caller waits
            self._settle()
            if not self.waiters:
                return
        c = self.cache
        with c.mutex:
            self._job_i, self._job_end, self._job_gen = c.h[H_HEAD], c.h[H_TAIL], c.h[H_GEN]
        self._job_err = IoStatus.SUCCESS
        self.destaging = True
        self._pump()

    def _retry_kick(self) -> None:
        self._timer = None
        self._kick()

    def _pump(self) -> None:
        c = self.cache
        bs = self.bs
        while self._job_i < self._job_end and not self._job_err and not self.closed:
            lba, nb, pos = c.entry(self._job_i)
            p = pos % c.cap
            self._job_i += 1
            self._in_call, self._sync_done = True, False
            self.base.write(lba, c.data[p : p + nb * bs], self._wrote)
            self._in_call = False
            if not self._sync_done:
                return  # completes later: _wrote continues
        if self._job_err or self.closed:
            self._finish(self._job_err or IoStatus.FAILED)
            return
        self.base.flush(self._flushed)

    def _wrote(self, st: IoStatus) -> None:
        if st and not self._job_err:
            self._job_err = st
        if self._in_call:
            self._sync_done = True
        else:
            self._pump()

    def _flushed(self, st: IoStatus) -> None:
        if not st:
            c = self.cache
            with c.mutex:
                if c.h[H_GEN] == self._job_gen and c.h[H_HEAD] < self._job_end:
                    c.h[H_DESTAGED] += self._job_end - c.h[H_HEAD]
                    c.h[H_HEAD] = self._job_end
        self._finish(st)

    def _finish(self, st: IoStatus) -> None:
        self.cache.disown(self.token)
        self.destaging = False
        if self.closed:
            self.wb.detach()
            return
        if st:
            log.error(
                "wcache %s: destage to %s failed: %s", self.bdev.name, self.wb.base_name, st.name
            )
            waiters, self.waiters = self.waiters, []
            for _t, _g, cb in waiters:
                cb(st)
        if not self.closed:
            self._kick()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.removed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.destaging:
            # (a destage in flight keeps the ownership until its base I/O is
            # back, so no second destager can overtake its last writes)
            with contextlib.suppress(Exception):
                self.cache.disown(self.token)
        waiters, self.waiters = self.waiters, []
        for _t, _g, cb in waiters:
            cb(IoStatus.FAILED)
        waitq, self.waitq = self.waitq, []
        for *_x, cb in waitq:
            cb(IoStatus.FAILED)
        self.base.close()
        if not self.destaging:
            self.wb.detach()


class WcacheBdev(Bdev):
    MODULE = "wcache"
    PRODUCT = "Write cache disk"
    segment_name: str = ""
    base_name: str = ""
    base_desc: dict[str, Any] = {}  # noqa: RUF012 - replaced per instance
    max_dirty_mb: int = DEFAULT_MAX_DIRTY_MB
    ignore_fua: bool = False
    _base: Bdev | None = None
    _cache: _Cache | None = None
    _destroyed: bool = False

    def _description(self) -> dict[str, Any]:
        return {
            "segment": self.segment_name,
            "base_name": self.base_name,
            "base": self.base_desc,
            "max_dirty_mb": self.max_dirty_mb,
            "ignore_fua": self.ignore_fua,
        }

    def _restore(self, d: dict[str, Any]) -> None:
        self.segment_name = d["segment"]
        self.base_name = d["base_name"]
        self.base_desc = dict(d["base"])
        self.max_dirty_mb = int(d["max_dirty_mb"])
        self.ignore_fua = bool(d["ignore_fua"])

    @classmethod
    def create(
        cls,
        instance: str,
        name: str,
        base: Bdev,
        max_dirty_mb: int = DEFAULT_MAX_DIRTY_MB,
        ignore_fua: bool = False,
        uuid: str | None = None,
    ) -> WcacheBdev:
        cap = max_dirty_mb << 20
        if cap < max(PIECE, base.block_size):
            raise ValueError("max_dirty_mb must be at least 1")
        max_entries = max(1024, min(1 << 18, cap // 512))
        tag = "wcache." + _safe_tag(name)
        seg = SharedSegment.create(instance, tag, _Cache.size(max_entries, cap), hugepages="never")
        try:
            sem = posix_ipc.Semaphore("/" + seg.name, posix_ipc.O_CREX, mode=0o600, initial_value=1)
        except BaseException:
            seg.close()
            seg.unlink()
            raise
        try:
            Manifest(instance).add(
                seg.name, "sem", str(names.SHM_DIR / (names.SEM_PREFIX + seg.name)), 0
            )
        except BaseException:
            sem.close()
            sem.unlink()
            seg.close()
            seg.unlink()
            raise
        h = seg.buf[:HDR_BYTES].cast("Q")
        h[H_MAGIC] = MAGIC
        h[H_MAX_ENTRIES] = max_entries
        h[H_CAP] = cap
        h[H_BS] = base.block_size
        h[H_IGNORE_FUA] = int(ignore_fua)
        h.release()
        kw: dict[str, Any] = {"uuid": uuid} if uuid else {}
        b = cls(
            name=name,
            block_size=base.block_size,
            num_blocks=base.num_blocks,
            product_name=cls.PRODUCT,
            **kw,
        )
        b.supports_unmap = base.supports_unmap
        b.segment_name = seg.name
        b.base_name = base.name
        b.base_desc = base.describe()
        b.max_dirty_mb = max_dirty_mb
        b.ignore_fua = ignore_fua
        b._cache = _Cache(seg, sem)
        b.create_method = "bdev_wcache_create"
        b.create_params = {
            "base_bdev_name": base.name,
            "name": name,
            "max_dirty_mb": max_dirty_mb,
            "uuid": b.uuid,
        }
        if ignore_fua:
            b.create_params["ignore_fua"] = True
        return b

    def cache(self) -> _Cache:
        if self._cache is None:
            seg = SharedSegment.attach(self.segment_name)
            try:
                sem = posix_ipc.Semaphore("/" + self.segment_name)
            except BaseException:
                seg.close()
                raise
            self._cache = _Cache(seg, sem)
        return self._cache

    def base_bdev(self) -> Bdev:
        """This process's own copy of the base (never the supervisor's object)."""
        if self._base is None:
            from .registry import bdev_from_description

            self._base = bdev_from_description(self.base_desc)
        return self._base

    def open_channel(self, loop: Any = None) -> IoChannel:
        return WcacheChannel(self, loop)

    def stats(self) -> dict[str, Any]:
        c = self.cache()
        h = c.h
        with c.mutex:
            dirty = h[H_TAIL] - h[H_HEAD]
            dbytes = h[H_DTAIL] - c.data_head()
            return {
                "dirty_writes": dirty,
                "dirty_bytes": dbytes if dirty else 0,
                "destaged_writes": h[H_DESTAGED],
                "power_fails": h[H_POWER_FAILS],
                "last_power_fail_dropped": h[H_LAST_DROPPED],
                "last_power_fail_persisted": h[H_LAST_APPLIED],
            }

    def power_fail(
        self, reorder: bool = False, seed: int | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Drop what is not durable (``reorder``: a random subset of the
        dirty writes reaches the base first, in random order). Runs in the
        process that calls it (the supervisor) with a loop-less base channel."""
        c = self.cache()
        token = random.getrandbits(63) | 1
        deadline = time.monotonic() + timeout
        while not c.try_own(token):
            if time.monotonic() > deadline:
                raise TimeoutError("a destage on a reactor did not finish")
            time.sleep(OWNER_POLL_S)
        try:
            with c.mutex:
                head, tail = c.h[H_HEAD], c.h[H_TAIL]
                entries = [c.entry(e) for e in range(head, tail)]
            applied = 0
            if reorder and entries:
                rng = random.Random(seed)
                chosen = [e for e in entries if rng.random() < 0.5]
                rng.shuffle(chosen)
                from .registry import bdev_from_description

                # a private copy: closing its channel must not unmap another's
                ch = bdev_from_description(self.base_desc).open_channel(None)
                try:
                    out: list[IoStatus] = []
                    for lba, nb, pos in chosen:
                        p = pos % c.cap
                        ch.write(lba, c.data[p : p + nb * self.block_size], out.append)
                    ch.flush(out.append)
                    if len(out) != len(chosen) + 1 or any(out):
                        raise OSError(f"power_fail: base I/O failed: {out}")
                finally:
                    ch.close()
                applied = len(chosen)
            with c.mutex:
                h = c.h
                h[H_HEAD] = h[H_TAIL]
                h[H_GEN] += 1
                h[H_POWER_FAILS] += 1
                h[H_LAST_DROPPED] = len(entries) - applied
                h[H_LAST_APPLIED] = applied
        finally:
            c.disown(token)
        return {"dropped": len(entries) - applied, "persisted": applied}

    def detach(self) -> None:
        """Unmap in this process (a later channel maps it again)."""
        c, self._cache = self._cache, None
        if c is not None:
            c.close()

    def destroy(self) -> None:
        """Supervisor: unmap, unlink the segment and the semaphore."""
        if self._destroyed:
            return
        self._destroyed = True
        c = self.cache()
        self._cache = None
        seg = c.seg
        c.close()
        seg.unlink()
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore("/" + self.segment_name)
        if seg.instance:
            Manifest(seg.instance).remove(self.segment_name, "sem")

    def driver_specific(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "base_bdev_name": self.base_name,
            "max_dirty_mb": self.max_dirty_mb,
            "ignore_fua": self.ignore_fua,
        }
        with contextlib.suppress(Exception):
            d.update(self.stats())
        return {"wcache": d}


def _safe_tag(name: str) -> str:
    """A bdev name as an object-tag part (the tag grammar is narrower)."""
    import re
    import zlib

    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40]
    if safe != name or not safe:
        safe = f"{safe}-{zlib.crc32(name.encode()):08x}"
    return safe
