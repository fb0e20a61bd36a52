"""RAID bdevs (SPDK's ``bdev_raid``): raid0 (striping), concat, raid1 (mirror).

Geometry: ``strip_size_kb`` cuts the address space into strips; raid0 puts
strip ``s`` on member ``s % N`` at member strip ``s // N``; concat lays the
members end to end (each rounded down to whole strips); raid1 mirrors every
block on every member (no strip).

State shared by every reactor (`SharedState` words): the state of each member
slot (online, failed, rebuilding, empty), the rebuild cursor, and a table of
locked LBA ranges. A member that fails an I/O is marked failed at once for
every reactor; a raid1 then reads from the others and writes to the others
(degraded: ``bdev_raid_get_bdevs`` says so), a raid0/concat goes offline.
Every write-like operation (write, write zeroes, unmap, compare-and-write)
holds its range in the table while its member I/O runs (a lock is taken
without waiting; a busy range is retried from the reactor loop, never by
blocking the reactor), which makes compare-and-write atomic against every
reactor's writes across members, and lets the rebuild (the supervisor
copying a source member onto the new one chunk by chunk, each chunk under
its range lock) never race a host write: a write either completed on the
source before the chunk is copied, or went to the new member as well.
FUA goes to every member a write reaches, flush to every member.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .base import (
    Bdev,
    Callback,
    CompareCallback,
    IoChannel,
    IoStatus,
    ReadCallback,
)
from .stacked import SharedState, StackedBdev, pid_alive, safe_tag

log = logging.getLogger(__name__)

RAID0, RAID1, CONCAT = "raid0", "raid1", "concat"
LEVELS = {"0": RAID0, "raid0": RAID0, "1": RAID1, "raid1": RAID1, "concat": CONCAT}
MAX_MEMBERS = 32
EMPTY, ONLINE, FAILED, REBUILDING = 0, 1, 2, 3
STATE_NAMES = {EMPTY: "empty", ONLINE: "online", FAILED: "failed", REBUILDING: "rebuilding"}
MAGIC = 0x4272526169643031  # "BrRaid01"
# header words
# H_SGEN: bumped after every member state change (channels cache what they derive)
H_MAGIC, H_NSLOTS, H_RB_SLOT, H_RB_CUR, H_HW, H_SGEN = 0, 1, 2, 3, 4, 5
SLOT_STATE = 8
SLOT_ERRORS = SLOT_STATE + MAX_MEMBERS
NLOCKS = 512
LOCKS = SLOT_ERRORS + MAX_MEMBERS  # NLOCKS x (start, end, pid)
WORDS = LOCKS + 3 * NLOCKS
LOCK_RETRY_S = 0.0001
LOCK_GIVE_UP_S = 10.0
REBUILD_CHUNK = 1 << 20


class _RangeLocks:
    """The shared table of locked [start, end) block ranges."""

    def __init__(self, st: SharedState) -> None:
        self.st = st
        self.q = st.q
        self.pid = os.getpid()

    def try_lock(self, start: int, end: int) -> int:
        q = self.q
        with self.st:
            hw = q[H_HW]
            free = -1
            for i in range(hw):
                e = LOCKS + 3 * i
                e_end = q[e + 1]
                if not e_end:
                    if free < 0:
                        free = i
                    continue
                if q[e] < end and start < e_end:
                    pid = q[e + 2]
                    if pid != self.pid and not pid_alive(pid):
                        q[e + 1] = 0  # its holder died
                        if free < 0:
                            free = i
                        continue
                    return -1
            if free < 0:
                if hw >= NLOCKS:
                    return -1
                free = hw
                q[H_HW] = hw + 1
            e = LOCKS + 3 * free
            q[e] = start
            q[e + 1] = end
            q[e + 2] = self.pid
            return free

    def unlock(self, i: int) -> None:
        q = self.q
        with self.st:
            q[LOCKS + 3 * i + 1] = 0
            hw = q[H_HW]
            while hw and not q[LOCKS + 3 * (hw - 1) + 1]:
                hw -= 1
            q[H_HW] = hw

    def lock_blocking(self, start: int, end: int, timeout: float = LOCK_GIVE_UP_S) -> int:
        deadline = time.monotonic() + timeout
        while True:
            i = self.try_lock(start, end)
            if i >= 0:
                return i
            if time.monotonic() > deadline:
                raise TimeoutError(f"range [{start}, {end}) stayed locked for {timeout} s")
            time.sleep(LOCK_RETRY_S * 5)


class _Gather:
    """Counts member completions; ``done(results)`` once all arrived."""

    def __init__(self, n: int, done: Callable[[list[tuple[int, IoStatus, int]]], None]) -> None:
        self.left = n
        self.results: list[tuple[int, IoStatus, int]] = []
        self.done = done

    def one(self, key: int) -> Callable[..., None]:
        def cb(st: IoStatus, extra: Any = -1) -> None:
            self.results.append((key, st, extra if isinstance(extra, int) else -1))
            self.left -= 1
            if not self.left:
                self.done(self.results)

        return cb


class RaidChannel(IoChannel):
    bdev: RaidBdev

    def __init__(self, bdev: RaidBdev, loop: Any) -> None:
        super().__init__(bdev)
        self.loop = loop
        self.st = bdev.state()
        self.q = self.st.q
        self.locks = _RangeLocks(self.st)
        self.members: dict[int, IoChannel] = {}
        self.retired: list[IoChannel] = []
        self.gen = -1
        self.sgen = -1
        self.on: list[int] = []
        self.all_ok = False
        self.rr = 0
        self.waitq: deque[tuple[int, int, Callable[[Callable[[], None]], None], float]] = deque()
        self.retry_armed = False
        self.bs = bdev.block_size
        self._sync()
        self.zero_copy_reads = bool(self.members) and all(
            m.zero_copy_reads for m in self.members.values()
        )

    # ----------------------------------------------------------- members
    def _sync(self) -> None:
        b = self.bdev
        for i, d in enumerate(b.base_descs):
            cur = self.members.get(i)
            if d is None:
                if cur is not None:
                    self.retired.append(self.members.pop(i))
                continue
            if cur is not None and cur.bdev.name == d["name"]:
                continue
            if cur is not None:
                self.retired.append(self.members.pop(i))
            try:
                self.members[i] = b.base_bdev(i).open_channel(self.loop)
            except (OSError, ValueError) as e:
                # a member this reactor cannot reach must not be read elsewhere
                # while writes from here skip it: it is failed for everyone
                log.error("raid %s: cannot open member %s: %s", b.name, d["name"], e)
                b.fail_slot(i, keep_one=True)
        self.gen = b.gen

    def _state(self, i: int) -> int:
        return int(self.q[SLOT_STATE + i])

    def _refresh(self) -> None:
        if self.gen != self.bdev.gen:
            self._sync()
        q = self.q
        self.sgen = int(q[H_SGEN])
        self.on = [i for i in self.members if q[SLOT_STATE + i] == ONLINE]
        n = len(self.bdev.base_descs)
        self.all_ok = len(self.members) == n and all(q[SLOT_STATE + s] == ONLINE for s in range(n))

    def _online(self) -> list[int]:
        if self.gen != self.bdev.gen or self.sgen != self.q[H_SGEN]:
            self._refresh()
        return self.on

    def _ok(self) -> bool:
        """raid0/concat: every member online (a missing one takes it offline)."""
        if self.gen != self.bdev.gen or self.sgen != self.q[H_SGEN]:
            self._refresh()
        return self.all_ok

    def _pick(self) -> int:
        on = self._online()
        if not on:
            return -1
        self.rr += 1
        return on[self.rr % len(on)]

    def _fail(self, i: int, why: IoStatus) -> bool:
        """Mark member i failed for every reactor; raid1 only, and only while
        another member stays online (the last copy is never failed)."""
        if self.bdev.level != RAID1:
            return False
        ok = self.bdev.fail_slot(i, keep_one=True)
        if ok:
            log.warning(
                "raid %s: member %s failed (%s): array degraded",
                self.bdev.name,
                self.bdev.slot_name(i),
                why.name,
            )
        return ok

    def _gone(self, i: int, why: IoStatus) -> bool:
        """raid1, after member i failed an I/O: True when the I/O may go to
        another member, i.e. i is failed now, by this failure or by an earlier
        one (another I/O in flight to it, or another reactor, may have failed
        it first: `_fail` then returns False, but the copy on the others is
        good). False only while i is the last online copy."""
        return self._fail(i, why) or i not in self._online()

    # ----------------------------------------------------------- locking
    def _locked(self, start: int, n: int, go: Callable[[Callable[[], None]], None]) -> None:
        if n <= 0:
            go(lambda: None)
            return
        end = start + n
        if not self.waitq:
            i = self.locks.try_lock(start, end)
            if i >= 0:
                go(lambda: self.locks.unlock(i))
                return
        if self.loop is None:
            try:
                i = self.locks.lock_blocking(start, end)
            except TimeoutError:
                go(None)  # type: ignore[arg-type]
                return
            go(lambda: self.locks.unlock(i))
            return
        self.waitq.append((start, end, go, time.monotonic()))
        self._arm()

    def _arm(self) -> None:
        if not self.retry_armed and self.waitq:
            self.retry_armed = True
            self.loop.call_later(LOCK_RETRY_S, self._retry)

    def _retry(self) -> None:
        self.retry_armed = False
        n = len(self.waitq)
        now = time.monotonic()
        for _ in range(n):
            start, end, go, t0 = self.waitq.popleft()
            i = self.locks.try_lock(start, end)
            if i >= 0:
                go(lambda i=i: self.locks.unlock(i))  # type: ignore[misc]
            elif now - t0 > LOCK_GIVE_UP_S:
                log.error("raid %s: range [%d, %d) locked too long", self.bdev.name, start, end)
                go(None)  # type: ignore[arg-type]
            else:
                self.waitq.append((start, end, go, t0))
        self._arm()

    # ----------------------------------------------------------- geometry
    def _pieces(self, lba: int, n: int) -> list[tuple[int, int, int, int]]:
        """[(slot, member lba, blocks, offset in the I/O in blocks)]."""
        b = self.bdev
        out = []
        pos = 0
        if b.level == RAID0:
            sb, nm = b.strip_blocks, len(b.base_descs)
            while n:
                strip, within = divmod(lba, sb)
                take = min(n, sb - within)
                out.append((strip % nm, (strip // nm) * sb + within, take, pos))
                lba += take
                n -= take
                pos += take
        else:  # concat
            for i, (first, size) in enumerate(b.extents()):
                if n and first <= lba < first + size:
                    take = min(n, first + size - lba)
                    out.append((i, lba - first, take, pos))
                    lba += take
                    n -= take
                    pos += take
        return out

    def _ranges(self, lba: int, n: int) -> list[tuple[int, int, int]]:
        """[(slot, member lba, blocks)]: one contiguous member range per member."""
        b = self.bdev
        if b.level != RAID0:
            return [(s, m, k) for s, m, k, _ in self._pieces(lba, n)]
        sb, nm = b.strip_blocks, len(b.base_descs)
        sa, sz = lba // sb, (lba + n - 1) // sb
        out = []
        for m in range(nm):
            s = sa + ((m - sa) % nm)
            if s > sz:
                continue
            e = sz - ((sz - m) % nm)
            start = (s // nm) * sb + (lba % sb if s == sa else 0)
            end = (e // nm) * sb + ((lba + n - 1) % sb + 1 if e == sz else sb)
            out.append((m, start, end - start))
        return out

    def _striped_ok(self, slots: list[int]) -> bool:
        # a raid0/concat missing a member is offline as a whole (SPDK deconfigures it)
        del slots
        return self._ok()

    # ----------------------------------------------------------- reads
    def _do_read(
        self, offset_blocks: int, num_blocks: int, cb: ReadCallback, into: memoryview | None = None
    ) -> None:
        b = self.bdev
        if b.level == RAID1:
            self._read1(offset_blocks, num_blocks, cb, into)
            return
        if b.level == RAID0:  # the common case first: inside one strip
            sb = b.strip_blocks
            within = offset_blocks % sb
            if within + num_blocks <= sb:
                if not self._ok():
                    cb(IoStatus.FAILED, None)
                    return
                strip = offset_blocks // sb
                nm = len(b.base_descs)
                self.members[strip % nm].read((strip // nm) * sb + within, num_blocks, cb, into)
                return
        pieces = self._pieces(offset_blocks, num_blocks)
        if not self._striped_ok([p[0] for p in pieces]):
            cb(IoStatus.FAILED, None)
            return
        if len(pieces) == 1:
            s, mlba, k, _ = pieces[0]
            self.members[s].read(mlba, k, cb, into)
            return
        bs = self.bs
        buf = into if into is not None else memoryview(bytearray(num_blocks * bs))
        out = buf[: num_blocks * bs]

        def done(results: list[tuple[int, IoStatus, int]]) -> None:
            bad = next((st for _, st, _ in results if st), None)
            cb(bad, None) if bad else cb(IoStatus.SUCCESS, out)

        g = _Gather(len(pieces), done)
        for s, mlba, k, pos in pieces:
            piece = out[pos * bs : (pos + k) * bs]
            one = g.one(s)

            def got(
                st: IoStatus, data: memoryview | None, piece: memoryview = piece, one: Any = one
            ) -> None:
                if not st and data is not None and data is not piece:
                    piece[:] = data[: len(piece)]
                one(st if data is not None or st else IoStatus.FAILED)

            self.members[s].read(mlba, k, got, piece)

    def _read1(self, lba: int, n: int, cb: ReadCallback, into: memoryview | None) -> None:
        s = self._pick()
        if s < 0:
            cb(IoStatus.FAILED, None)
            return

        def done(st: IoStatus, data: memoryview | None) -> None:
            if st in (IoStatus.FAILED, IoStatus.REMOVED) and self._gone(s, st):
                self._read1(lba, n, cb, into)  # another member (bounded: one fewer online)
                return
            cb(st, data)

        self.members[s].read(lba, n, done, into)

    def _do_compare(self, offset_blocks: int, data: memoryview, cb: CompareCallback) -> None:
        bs = self.bs
        n = len(data) // bs
        if self.bdev.level == RAID1:
            s = self._pick()
            if s < 0:
                cb(IoStatus.FAILED, -1)
                return

            def done1(st: IoStatus, diff: int) -> None:
                if st in (IoStatus.FAILED, IoStatus.REMOVED) and self._gone(s, st):
                    self._do_compare(offset_blocks, data, cb)
                    return
                cb(st, diff)

            self.members[s].compare(offset_blocks, data, done1)
            return
        pieces = self._pieces(offset_blocks, n)
        if not self._striped_ok([p[0] for p in pieces]):
            cb(IoStatus.FAILED, -1)
            return

        def done_split(results: list[tuple[int, IoStatus, int]]) -> None:
            bad = next((st for _, st, _ in results if st and st != IoStatus.MISCOMPARE), None)
            if bad:
                cb(bad, -1)
                return
            diffs = [pos * bs + d for pos, st, d in results if st == IoStatus.MISCOMPARE]
            if diffs:
                cb(IoStatus.MISCOMPARE, min(diffs))
            else:
                cb(IoStatus.SUCCESS, -1)

        g = _Gather(len(pieces), done_split)
        for s, mlba, k, pos in pieces:
            self.members[s].compare(mlba, data[pos * bs : (pos + k) * bs], g.one(pos))

    # ----------------------------------------------------------- writes
    def _mirror(
        self,
        submit: Callable[[IoChannel, Callback], None],
        cb: Callback,
        release: Callable[[], None] | None,
    ) -> None:
        """raid1: submit to every online or rebuilding member; success when an
        online member succeeded (the members that failed are then failed)."""
        if self.gen != self.bdev.gen:
            self._sync()
        q = self.q
        targets = [
            (i, int(q[SLOT_STATE + i]))
            for i in self.members
            if q[SLOT_STATE + i] in (ONLINE, REBUILDING)
        ]
        if not any(state == ONLINE for _, state in targets):
            if release:
                release()
            cb(IoStatus.FAILED)
            return
        online = {i for i, state in targets if state == ONLINE}

        def done(results: list[tuple[int, IoStatus, int]]) -> None:
            if release:
                release()
            good = [i for i, st, _ in results if not st and i in online]
            if not good:
                cb(next(st for _, st, _ in results if st))
                return
            for i, st, _ in results:
                if st:
                    self._fail(i, st)
            cb(IoStatus.SUCCESS)

        g = _Gather(len(targets), done)
        for i, _ in targets:
            submit(self.members[i], g.one(i))

    def _striped(
        self,
        parts: list[tuple[int, Callable[[IoChannel, Callback], None]]],
        cb: Callback,
        release: Callable[[], None] | None,
    ) -> None:
        if not self._striped_ok([s for s, _ in parts]):
            if release:
                release()
            cb(IoStatus.FAILED)
            return

        def done(results: list[tuple[int, IoStatus, int]]) -> None:
            if release:
                release()
            cb(next((st for _, st, _ in results if st), IoStatus.SUCCESS))

        g = _Gather(len(parts), done)
        for k, (s, submit) in enumerate(parts):
            submit(self.members[s], g.one(k))

    def _write_locked(
        self,
        lba: int,
        data: memoryview,
        cb: Callback,
        fua: bool,
        release: Callable[[], None] | None,
    ) -> None:
        if self.bdev.level == RAID1:
            self._mirror(lambda ch, c: ch.write(lba, data, c, fua), cb, release)
            return
        bs = self.bs
        parts = [
            (s, lambda ch, c, m=mlba, p=pos, k=k: ch.write(m, data[p * bs : (p + k) * bs], c, fua))
            for s, mlba, k, pos in self._pieces(lba, len(data) // bs)
        ]
        self._striped(parts, cb, release)  # type: ignore[arg-type]

    def _guard(self, cb: Callback) -> Callable[[Callable[[], None] | None], bool]:
        def ok(release: Callable[[], None] | None) -> bool:
            if release is None:  # the lock never came
                cb(IoStatus.FAILED)
                return False
            return True

        return ok

    def _do_write(
        self, offset_blocks: int, data: memoryview, cb: Callback, fua: bool = False
    ) -> None:
        n = len(data) // self.bs
        if n and not self.waitq:  # the fast path: the range is free now
            i = self.locks.try_lock(offset_blocks, offset_blocks + n)
            if i >= 0:
                self._write_now(offset_blocks, n, data, cb, fua, i)
                return
        ok = self._guard(cb)

        def go(release: Callable[[], None]) -> None:
            if ok(release):
                self._write_locked(offset_blocks, data, cb, fua, release)

        self._locked(offset_blocks, n, go)

    def _write_now(
        self, lba: int, n: int, data: memoryview, cb: Callback, fua: bool, lock: int
    ) -> None:
        """Range lock ``lock`` held: one member write for a raid0 write inside
        one strip (the common case), else the general path."""
        b = self.bdev
        locks = self.locks
        if b.level == RAID0:
            sb = b.strip_blocks
            within = lba % sb
            if within + n <= sb:
                if not self._ok():
                    locks.unlock(lock)
                    cb(IoStatus.FAILED)
                    return

                def done(st: IoStatus) -> None:
                    locks.unlock(lock)
                    cb(st)

                strip = lba // sb
                nm = len(b.base_descs)
                self.members[strip % nm].write((strip // nm) * sb + within, data, done, fua)
                return
        self._write_locked(lba, data, cb, fua, lambda: locks.unlock(lock))

    def _ranged_op(self, lba: int, n: int, cb: Callback, op: str) -> None:
        ok = self._guard(cb)

        def go(release: Callable[[], None]) -> None:
            if not ok(release):
                return
            if self.bdev.level == RAID1:
                self._mirror(lambda ch, c: getattr(ch, op)(lba, n, c), cb, release)
                return
            parts = [
                (s, lambda ch, c, m=m, k=k: getattr(ch, op)(m, k, c))
                for s, m, k in self._ranges(lba, n)
            ]
            self._striped(parts, cb, release)  # type: ignore[arg-type]

        self._locked(lba, n, go)

    def _do_write_zeroes(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        self._ranged_op(offset_blocks, num_blocks, cb, "write_zeroes")

    def _do_unmap(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        self._ranged_op(offset_blocks, num_blocks, cb, "unmap")

    def _do_flush(self, cb: Callback) -> None:
        if self.bdev.level == RAID1:
            self._mirror(lambda ch, c: ch.flush(c), cb, None)
            return
        self._striped(
            [(s, lambda ch, c: ch.flush(c)) for s in range(len(self.bdev.base_descs))], cb, None
        )

    def _do_compare_and_write(
        self,
        offset_blocks: int,
        compare: memoryview,
        write: memoryview,
        cb: CompareCallback,
        fua: bool,
    ) -> None:
        n = len(write) // self.bs

        def go(release: Callable[[], None] | None) -> None:
            if release is None:
                cb(IoStatus.FAILED, -1)
                return

            def compared(st: IoStatus, diff: int) -> None:
                if st:
                    release()
                    cb(st, diff)
                    return
                self._write_locked(offset_blocks, write, lambda s: cb(s, -1), fua, release)

            self._do_compare(offset_blocks, compare, compared)

        self._locked(offset_blocks, n, go)  # type: ignore[arg-type]

    def close(self) -> None:
        for ch in list(self.members.values()) + self.retired:
            ch.close()
        self.members.clear()
        self.retired.clear()


class RaidBdev(StackedBdev):
    MODULE = "raid"
    PRODUCT = "Raid Volume"
    level: str = RAID0
    strip_size_kb: int = 0
    strip_blocks: int = 0
    segment_name: str = ""
    member_blocks: list[int] = []  # noqa: RUF012 - replaced per instance
    gen: int = 0
    _state: SharedState | None = None

    def _description(self) -> dict[str, Any]:
        return {
            **super()._description(),
            "level": self.level,
            "strip_size_kb": self.strip_size_kb,
            "strip_blocks": self.strip_blocks,
            "member_blocks": list(self.member_blocks),
            "segment": self.segment_name,
        }

    def _restore(self, d: dict[str, Any]) -> None:
        super()._restore(d)
        self.level = d["level"]
        self.strip_size_kb = int(d["strip_size_kb"])
        self.strip_blocks = int(d["strip_blocks"])
        self.member_blocks = [int(x) for x in d["member_blocks"]]
        self.segment_name = d["segment"]

    def update_description(self, d: dict[str, Any]) -> None:
        """Reactor: membership changed (a member removed or added)."""
        new = [None if x is None else dict(x) for x in d["bases"]]
        for i in list(self._bases):
            if i >= len(new) or new[i] is None or new[i]["name"] != self._bases[i].name:  # type: ignore[index]
                del self._bases[i]
        self.base_descs = new
        self.member_blocks = [int(x) for x in d["member_blocks"]]
        self.gen += 1

    @staticmethod
    def geometry(level: str, bases: list[Bdev], strip_size_kb: int) -> tuple[int, int, list[int]]:
        """(num_blocks, strip_blocks, blocks used per member); ValueError when impossible."""
        bs = bases[0].block_size
        if any(b.block_size != bs for b in bases):
            raise ValueError("all base bdevs must have the same block size")
        if level == RAID1:
            n = min(b.num_blocks for b in bases)
            return n, 0, [n] * len(bases)
        if strip_size_kb <= 0 or strip_size_kb & (strip_size_kb - 1):
            raise ValueError(f"strip_size_kb must be a power of two, got {strip_size_kb}")
        if (strip_size_kb << 10) < bs:
            raise ValueError(f"strip_size_kb {strip_size_kb} is smaller than the block size {bs}")
        sb = (strip_size_kb << 10) // bs
        if level == RAID0:
            per = min(b.num_blocks for b in bases) // sb * sb
            if per == 0:
                raise ValueError("a base bdev is smaller than one strip")
            return per * len(bases), sb, [per] * len(bases)
        sizes = [b.num_blocks // sb * sb for b in bases]
        if not all(sizes):
            raise ValueError("a base bdev is smaller than one strip")
        return sum(sizes), sb, sizes

    @classmethod
    def create(
        cls,
        instance: str,
        name: str,
        level: str,
        bases: list[Bdev],
        strip_size_kb: int = 0,
        uuid: str | None = None,
    ) -> RaidBdev:
        num_blocks, sb, per = cls.geometry(level, bases, strip_size_kb)
        kw: dict[str, Any] = {"uuid": uuid} if uuid else {}
        b = cls(
            name=name,
            block_size=bases[0].block_size,
            num_blocks=num_blocks,
            product_name=cls.PRODUCT,
            **kw,
        )
        b.level = level
        b.strip_size_kb = strip_size_kb if level != RAID1 else 0
        b.strip_blocks = sb
        b.member_blocks = per
        b.base_descs = [x.describe() for x in bases]
        b.supports_unmap = all(x.supports_unmap for x in bases)
        b.supports_write_zeroes = all(x.supports_write_zeroes for x in bases)
        st = SharedState.create(instance, safe_tag("raid", name), WORDS)
        q = st.q
        q[H_MAGIC] = MAGIC
        q[H_NSLOTS] = len(bases)
        for i in range(len(bases)):
            q[SLOT_STATE + i] = ONLINE
        b._state = st
        b.segment_name = st.seg.name
        b.create_method = "bdev_raid_create"
        return b

    # save_config: the members that hold the data now (a rebuilding or failed
    # member is left out: a restart comes up degraded, not with a stale copy)
    @property  # type: ignore[override]
    def create_params(self) -> dict[str, Any]:
        if self.level == RAID1:
            names = [
                self.slot_name(i)
                for i in range(len(self.base_descs))
                if self.slot_state(i) == ONLINE
            ]
        else:
            names = [self.slot_name(i) for i in range(len(self.base_descs))]
        p: dict[str, Any] = {
            "name": self.name,
            "raid_level": self.level,
            "base_bdevs": names,
            "uuid": self.uuid,
        }
        if self.level != RAID1:
            p["strip_size_kb"] = self.strip_size_kb
        return p

    @create_params.setter
    def create_params(self, _v: dict[str, Any]) -> None:
        pass

    def state(self) -> SharedState:
        if self._state is None:
            self._state = SharedState.attach(self.segment_name)
        return self._state

    def slot_state(self, i: int) -> int:
        return int(self.state().q[SLOT_STATE + i])

    def slot_name(self, i: int) -> str | None:
        d = self.base_descs[i]
        return None if d is None else str(d["name"])

    def extents(self) -> list[tuple[int, int]]:
        out, first = [], 0
        for n in self.member_blocks:
            out.append((first, n))
            first += n
        return out

    def fail_slot(self, i: int, keep_one: bool) -> bool:
        st = self.state()
        q = st.q
        with st:
            cur = q[SLOT_STATE + i]
            if cur not in (ONLINE, REBUILDING):
                return False
            others = sum(1 for j in range(q[H_NSLOTS]) if j != i and q[SLOT_STATE + j] == ONLINE)
            if keep_one and cur == ONLINE and not others:
                return False
            q[SLOT_STATE + i] = FAILED
            q[SLOT_ERRORS + i] += 1
            q[H_SGEN] += 1
            if q[H_RB_SLOT] == i + 1:
                q[H_RB_SLOT] = 0  # the rebuild target failed: the rebuild stops
        return True

    def array_state(self) -> str:
        states = [self.slot_state(i) for i in range(len(self.base_descs))]
        if self.level == RAID1:
            return "online" if ONLINE in states else "offline"
        return "online" if all(s == ONLINE for s in states) else "offline"

    def open_channel(self, loop: Any = None) -> IoChannel:
        return RaidChannel(self, loop)

    # ------------------------------------------------- supervisor: membership
    def remove_slot(self, i: int) -> None:
        st = self.state()
        with st:
            st.q[SLOT_STATE + i] = EMPTY
            st.q[H_SGEN] += 1
            if st.q[H_RB_SLOT] == i + 1:
                st.q[H_RB_SLOT] = 0
        self.base_descs[i] = None
        self._bases.pop(i, None)

    def add_member(self, base: Bdev) -> int:
        """raid1: put ``base`` in the first empty or failed slot (or a new
        one) as the rebuild target. Returns the slot."""
        if self.level != RAID1:
            raise ValueError(f"{self.name} is {self.level}: no redundancy to rebuild from")
        if base.block_size != self.block_size or base.num_blocks < self.num_blocks:
            raise ValueError(
                f"{base.name} ({base.num_blocks} x {base.block_size}) cannot hold "
                f"{self.name} ({self.num_blocks} x {self.block_size})"
            )
        st = self.state()
        q = st.q
        if not any(self.slot_state(i) == ONLINE for i in range(len(self.base_descs))):
            raise ValueError(f"{self.name} has no online member to rebuild from")
        if q[H_RB_SLOT]:
            raise ValueError(f"{self.name} is already rebuilding")
        slot = next(
            (i for i in range(len(self.base_descs)) if self.slot_state(i) in (EMPTY, FAILED)), -1
        )
        if slot < 0:
            if len(self.base_descs) >= MAX_MEMBERS:
                raise ValueError(f"{self.name} has {MAX_MEMBERS} members already")
            slot = len(self.base_descs)
            self.base_descs.append(None)
            self.member_blocks.append(self.num_blocks)
        with st:
            # not yet REBUILDING: until every reactor has the new description
            # its channel for this slot is still the old (failed) member
            q[SLOT_STATE + slot] = EMPTY
            q[H_SGEN] += 1
            q[H_NSLOTS] = len(self.base_descs)
        self.base_descs[slot] = base.describe()
        self._bases.pop(slot, None)
        return slot

    def start_rebuild(self, slot: int) -> None:
        """Once every reactor opened the new member (after the ConfigUpdate):
        writes go to it from now on, and the copy may start."""
        st = self.state()
        q = st.q
        with st:
            q[SLOT_STATE + slot] = REBUILDING
            q[H_SGEN] += 1
            q[H_RB_CUR] = 0
            q[H_RB_SLOT] = slot + 1

    def rebuild_step(self, chunk_bytes: int = REBUILD_CHUNK) -> bool:
        """Copy one chunk onto the rebuild target (supervisor, loop-less
        channels on private copies of the members). True once finished or
        stopped."""
        from .registry import bdev_from_description

        st = self.state()
        q = st.q
        slot = int(q[H_RB_SLOT]) - 1
        if slot < 0:
            self._rb_close()
            return True
        chans: dict[int, IoChannel] = getattr(self, "_rb_chans", {})
        self._rb_chans = chans
        src = next((i for i in range(len(self.base_descs)) if self.slot_state(i) == ONLINE), -1)
        if src < 0:
            log.error("raid %s: rebuild stopped: no online member", self.name)
            q[H_RB_SLOT] = 0
            self._rb_close()
            return True
        for i in (src, slot):
            if i not in chans:
                chans[i] = bdev_from_description(self.base_descs[i]).open_channel(None)  # type: ignore[arg-type]
        cur = int(q[H_RB_CUR])
        n = min(max(1, chunk_bytes // self.block_size), self.num_blocks - cur)
        locks = _RangeLocks(st)
        li = locks.lock_blocking(cur, cur + n)
        res: list[IoStatus] = []
        try:
            data: list[memoryview | None] = []

            def got(s: IoStatus, v: memoryview | None) -> None:
                res.append(s)
                data.append(v)

            chans[src].read(cur, n, got)
            if len(res) == 1 and not res[0] and data[0] is not None:
                chans[slot].write(cur, data[0][: n * self.block_size], res.append)
        finally:
            locks.unlock(li)
        if len(res) != 2 or any(res):
            why = "did not complete synchronously" if len(res) < 2 else str(res)
            if res and res[0]:
                self.fail_slot(src, keep_one=True)
                return False  # try another source next step
            log.error("raid %s: rebuild onto %s failed: %s", self.name, self.slot_name(slot), why)
            self.fail_slot(slot, keep_one=False)
            self._rb_close()
            return True
        cur += n
        if cur < self.num_blocks:
            q[H_RB_CUR] = cur
            return False
        fl: list[IoStatus] = []
        chans[slot].flush(fl.append)
        with st:
            if q[H_RB_SLOT] == slot + 1:
                q[H_RB_SLOT] = 0
                q[H_RB_CUR] = 0
                if fl and not fl[0]:
                    q[SLOT_STATE + slot] = ONLINE
                    log.info("raid %s: rebuild onto %s complete", self.name, self.slot_name(slot))
                else:
                    q[SLOT_STATE + slot] = FAILED
                q[H_SGEN] += 1
        self._rb_close()
        return True

    def _rb_close(self) -> None:
        for ch in getattr(self, "_rb_chans", {}).values():
            ch.close()
        self._rb_chans = {}

    def destroy(self) -> None:
        self._rb_close()
        st = self.state()
        self._state = None
        st.destroy()

    # ------------------------------------------------- reporting
    def raid_info(self) -> dict[str, Any]:
        q = self.state().q
        states = [self.slot_state(i) for i in range(len(self.base_descs))]
        members = []
        for i, d in enumerate(self.base_descs):
            s = states[i]
            members.append(
                {
                    "name": None if d is None else d["name"],
                    "uuid": "00000000-0000-0000-0000-000000000000" if d is None else d["uuid"],
                    "is_configured": s in (ONLINE, REBUILDING),
                    "data_offset": 0,
                    "data_size": self.member_blocks[i] if i < len(self.member_blocks) else 0,
                    "state": STATE_NAMES[s],
                    "io_errors": int(q[SLOT_ERRORS + i]),
                }
            )
        info: dict[str, Any] = {
            "name": self.name,
            "uuid": self.uuid,
            "strip_size_kb": self.strip_size_kb,
            "state": self.array_state(),
            "raid_level": self.level,
            "superblock": False,
            "num_base_bdevs": len(self.base_descs),
            "num_base_bdevs_discovered": sum(1 for s in states if s in (ONLINE, REBUILDING)),
            "num_base_bdevs_operational": sum(1 for s in states if s == ONLINE),
            "degraded": any(s != ONLINE for s in states) and self.array_state() == "online",
            "base_bdevs_list": members,
        }
        rb = int(q[H_RB_SLOT]) - 1
        if rb >= 0:
            cur = int(q[H_RB_CUR])
            info["process"] = {
                "type": "rebuild",
                "target": self.slot_name(rb),
                "progress": {
                    "blocks": cur,
                    "percent": round(100 * cur / max(1, self.num_blocks), 1),
                },
            }
        return info

    def driver_specific(self) -> dict[str, Any]:
        try:
            return {"raid": self.raid_info()}
        except (OSError, ValueError):
            return {"raid": {"name": self.name}}
