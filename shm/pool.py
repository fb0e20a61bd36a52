"""Shared-memory I/O buffer pool with per-reactor shares (like SPDK's iobuf).

One segment holds two classes of fixed-size buffers, small and large, each
4 KiB aligned. The buffers of a class are split statically:

* reactor ``r`` owns a contiguous share ``[lo_r, hi_r)``; its free list is a
  plain Python list in that reactor's process, so ``get``/``put`` of an owned
  buffer take no lock and make no system call (the fast path);
* the rest is the *reserve*: a free stack in the segment header guarded by a
  POSIX named semaphore (the slow path), used when a reactor's own share is
  empty and by processes that are no reactor (``reactor_id=None``).

``put`` of a buffer outside the caller's own share (a buffer another reactor
handed over by reference, or one that came from the reserve) pushes it onto
the reserve stack: it never travels back to its owner's private list, so a
reactor that keeps giving buffers away drains into the reserve and then
allocates from it. ``get`` never falls back from small to large buffers.

A state byte per buffer in the header (0 in use, 1 in the reserve, 2 on its
owner's free list) catches double puts and lets a restarted reactor rebuild
its free list without reissuing buffers that are still in flight.

Per-owner accounting: a u16 per buffer records which reactor holds an in-use
buffer (reactor id + 1; 0 for a buffer held by a process that is no reactor,
or free). When a reactor process dies, the supervisor calls
`BufferPool.reclaim` with its id: every buffer that reactor held goes back
(those of its share onto its free list, which its next incarnation rebuilds
from the state bytes; others onto the reserve). A buffer handed to another
process by reference stays recorded under the reactor that took it: whoever
passes a BufRef on must not let the giver die before the receiver puts it
(no data path does this today: transfer buffers stay on their reactor).

The reserve lock records its holder's pid in the header, so a process killed
inside the (microseconds long) critical section does not wedge the pool: the
next taker that finds the lock busy past a short timeout with a dead holder
takes it over.

``mem_mb`` sizing: the pool takes ``mem_mb`` MiB of buffer space, 1/4 for
small buffers and 3/4 for large ones; each class keeps ``reserve_fraction``
(default 1/4) of its buffers in the reserve and divides the rest evenly among
the reactors.
"""

from __future__ import annotations

import contextlib
import os
import struct
from typing import Any

import posix_ipc

from . import names
from .bufref import BufRef
from .manifest import Manifest
from .procs import pid_alive
from .segment import HugePages, SharedSegment

SMALL_SIZE = 8 * 1024
LARGE_SIZE = 128 * 1024 + 4 * 1024
ALIGN = 4096
DEFAULT_TAG = "bufpool"
MAGIC = struct.unpack("<Q", b"BFPOOL01")[0]
VERSION = 2
LOCK_TIMEOUT_S = 5.0

IN_USE, IN_RESERVE, ON_OWNER_LIST = 0, 1, 2

# Header: 32 little u64 slots, then one u64 pid per reactor, then the two
# reserve stacks (u32 indexes), then the state bytes, then one u16 owner per
# buffer (reactor id + 1, 0 = none), padded to ALIGN.
(
    H_MAGIC,
    H_VERSION,
    H_NREACTORS,
    H_ALIGN,
    H_SMALL_SIZE,
    H_SMALL_COUNT,
    H_SMALL_PER,
    H_SMALL_AREA,
    H_LARGE_SIZE,
    H_LARGE_COUNT,
    H_LARGE_PER,
    H_LARGE_AREA,
    H_STACK_SMALL,
    H_STACK_LARGE,
    H_STATE,
    H_TOP_SMALL,
    H_TOP_LARGE,
    H_HEADER_SIZE,
    H_CREATOR_PID,
    H_OWNERS,
    H_LOCK_PID,
) = range(21)
NO_OWNER = 0
FIXED_HEADER = 32 * 8


class PoolError(RuntimeError):
    pass


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


class Buffer:
    """A buffer handed out by `BufferPool.get`; give it back with `put`.

    ``view`` is exactly the requested length; ``ref`` names it for messages.
    Buffer objects are reused by the pool: do not touch one after ``put``.
    """

    __slots__ = ("pool", "cls", "index", "offset", "capacity", "view", "_full")

    def __init__(self, pool: BufferPool, cls: _Class, index: int) -> None:
        self.pool = pool
        self.cls = cls
        self.index = index
        self.offset = cls.area + index * cls.stride
        self.capacity = cls.size
        self._full = pool.segment.buf[self.offset : self.offset + cls.size]
        self.view: memoryview = self._full

    @property
    def length(self) -> int:
        return len(self.view)

    @property
    def ref(self) -> BufRef:
        return BufRef(self.pool.name, self.offset, len(self.view))

    def __repr__(self) -> str:
        return f"<Buffer {self.cls.label}#{self.index} off={self.offset} len={len(self.view)}>"


class _Class:
    """Per-process bookkeeping of one buffer class (small or large)."""

    def __init__(
        self, label: str, size: int, count: int, per: int, area: int, stack: memoryview,
        top_slot: int, state: memoryview, state_base: int, reactor_id: int | None,
        owner: memoryview,
    ) -> None:  # fmt: skip
        self.label = label
        self.size = size
        self.stride = _round_up(size, ALIGN)
        self.count = count
        self.per = per
        self.area = area
        self.stack = stack  # u32 reserve stack (shared)
        self.top_slot = top_slot
        self.state = state  # state bytes of this class (shared)
        self.state_base = state_base
        self.owner = owner  # u16 holder per buffer (shared)
        if reactor_id is None:
            self.lo = self.hi = 0
        else:
            self.lo, self.hi = reactor_id * per, (reactor_id + 1) * per
        self.free: list[int] = []
        self.bufs: list[Buffer | None] = [None] * count
        self.gets = self.puts = self.nomem = self.reserve_gets = self.reserve_puts = 0


_claimed: set[tuple[str, int]] = set()  # (pool name, reactor) taken in this process


class BufferPool:
    def __init__(
        self, segment: SharedSegment, sem: posix_ipc.Semaphore, reactor_id: int | None,
        owner: bool,
    ) -> None:  # fmt: skip
        self.segment = segment
        self.name = segment.name
        self.reactor_id = reactor_id
        self._sem = sem
        self._owner = owner
        buf = segment.buf
        if len(buf) < FIXED_HEADER:
            raise PoolError(f"{self.name}: segment too small to be a buffer pool")
        self._hdr = buf[:FIXED_HEADER].cast("Q")
        h = self._hdr
        if h[H_MAGIC] != MAGIC or h[H_VERSION] != VERSION:
            raise PoolError(f"{self.name}: not a blockfabric buffer pool (bad magic/version)")
        self.nreactors = int(h[H_NREACTORS])
        if reactor_id is not None and not 0 <= reactor_id < self.nreactors:
            raise ValueError(f"reactor_id must be in 0..{self.nreactors - 1}, not {reactor_id}")
        self._pids = buf[FIXED_HEADER : FIXED_HEADER + 8 * self.nreactors].cast("Q")
        ns, nl = int(h[H_SMALL_COUNT]), int(h[H_LARGE_COUNT])
        st = int(h[H_STATE])
        state = buf[st : st + ns + nl]
        ow = int(h[H_OWNERS])
        owners = buf[ow : ow + 2 * (ns + nl)].cast("H")
        ss, sl = int(h[H_STACK_SMALL]), int(h[H_STACK_LARGE])
        self._small = _Class(
            "small", int(h[H_SMALL_SIZE]), ns, int(h[H_SMALL_PER]), int(h[H_SMALL_AREA]),
            buf[ss : ss + 4 * ns].cast("I"), H_TOP_SMALL, state[:ns], 0, reactor_id,
            owners[:ns],
        )  # fmt: skip
        self._large = _Class(
            "large", int(h[H_LARGE_SIZE]), nl, int(h[H_LARGE_PER]), int(h[H_LARGE_AREA]),
            buf[sl : sl + 4 * nl].cast("I"), H_TOP_LARGE, state[ns:], ns, reactor_id,
            owners[ns:],
        )  # fmt: skip
        owners.release()
        self._tag = NO_OWNER if reactor_id is None else reactor_id + 1
        self.small_size = self._small.size
        self.large_size = self._large.size
        self._closed = False
        if reactor_id is not None:
            self._claim(reactor_id)

    # ------------------------------------------------------------ create --
    @classmethod
    def create(
        cls,
        instance: str,
        nreactors: int,
        mem_mb: int | None = None,
        *,
        small_count: int | None = None,
        large_count: int | None = None,
        small_size: int = SMALL_SIZE,
        large_size: int = LARGE_SIZE,
        reserve_fraction: float = 0.25,
        hugepages: HugePages = "auto",
        tag: str = DEFAULT_TAG,
        reactor_id: int | None = None,
    ) -> BufferPool:
        """Create the pool segment and its semaphore (the supervisor does this).

        Give either ``mem_mb`` (split 1/4 small, 3/4 large) or both counts;
        neither means 64 MiB.
        """
        if not isinstance(nreactors, int) or not 1 <= nreactors <= 1024:
            raise ValueError(f"nreactors must be 1..1024, not {nreactors!r}")
        if not 0.0 <= reserve_fraction <= 1.0:
            raise ValueError(f"reserve_fraction must be in [0, 1], not {reserve_fraction}")
        if not 0 < small_size <= large_size:
            raise ValueError("buffer sizes must satisfy 0 < small_size <= large_size")
        ss, ls = _round_up(small_size, ALIGN), _round_up(large_size, ALIGN)
        if small_count is None and large_count is None:
            mem_mb = 64 if mem_mb is None else mem_mb
            if not isinstance(mem_mb, int) or mem_mb <= 0:
                raise ValueError(f"mem_mb must be a positive integer, not {mem_mb!r}")
            total = mem_mb * 1024 * 1024
            small_count = total // 4 // ss
            large_count = (total - total // 4) // ls
        elif mem_mb is not None:
            raise ValueError("give mem_mb or small_count/large_count, not both")
        elif small_count is None or large_count is None:
            raise ValueError("give both small_count and large_count")
        if small_count < 0 or large_count < 0 or small_count + large_count == 0:
            raise ValueError("buffer counts must be >= 0 and not both 0")
        if max(small_count, large_count) >= 2**32:
            raise ValueError("at most 2**32-1 buffers per class")
        sper = int(small_count * (1 - reserve_fraction)) // nreactors
        lper = int(large_count * (1 - reserve_fraction)) // nreactors

        off = FIXED_HEADER + 8 * nreactors
        stack_s = off
        stack_l = stack_s + 4 * small_count
        state = stack_l + 4 * large_count
        owners = _round_up(state + small_count + large_count, 2)
        header = _round_up(owners + 2 * (small_count + large_count), ALIGN)
        small_area = header
        large_area = small_area + small_count * ss
        size = large_area + large_count * ls

        seg = SharedSegment.create(instance, tag, size, hugepages=hugepages)
        sem_name = "/" + seg.name
        try:
            buf = seg.buf
            h = buf[:FIXED_HEADER].cast("Q")
            h[H_VERSION] = VERSION
            h[H_NREACTORS] = nreactors
            h[H_ALIGN] = ALIGN
            h[H_SMALL_SIZE], h[H_SMALL_COUNT], h[H_SMALL_PER], h[H_SMALL_AREA] = (
                small_size, small_count, sper, small_area,
            )  # fmt: skip
            h[H_LARGE_SIZE], h[H_LARGE_COUNT], h[H_LARGE_PER], h[H_LARGE_AREA] = (
                large_size, large_count, lper, large_area,
            )  # fmt: skip
            h[H_STACK_SMALL], h[H_STACK_LARGE], h[H_STATE] = stack_s, stack_l, state
            h[H_OWNERS] = owners
            h[H_HEADER_SIZE] = header
            h[H_CREATOR_PID] = os.getpid()
            # Reserve stacks hold the tail of each class; state bytes say
            # where every buffer is (see the module docstring).
            for count, per, stack_off, top_slot, st in (
                (small_count, sper, stack_s, H_TOP_SMALL, state),
                (large_count, lper, stack_l, H_TOP_LARGE, state + small_count),
            ):
                owned = per * nreactors
                nres = count - owned
                stack = buf[stack_off : stack_off + 4 * count].cast("I")
                # Highest index at the bottom so pops hand out low indexes first.
                stack[:nres] = memoryview(
                    struct.pack(f"<{nres}I", *range(count - 1, owned - 1, -1))
                ).cast("I")
                h[top_slot] = nres
                buf[st : st + owned] = b"\x02" * owned
                buf[st + owned : st + count] = b"\x01" * nres
                stack.release()
            h[H_MAGIC] = MAGIC  # last: attachers check it
            h.release()
            sem = posix_ipc.Semaphore(sem_name, posix_ipc.O_CREX, mode=0o600, initial_value=1)
            Manifest(instance).add(
                seg.name, "sem", str(names.SHM_DIR / (names.SEM_PREFIX + seg.name)), 0
            )
        except BaseException:
            seg.close()
            seg.unlink()
            try:
                posix_ipc.unlink_semaphore(sem_name)
            except posix_ipc.ExistentialError:
                pass
            raise
        return cls(seg, sem, reactor_id, owner=True)

    # ------------------------------------------------------------ attach --
    @classmethod
    def attach(
        cls, instance_or_name: str, reactor_id: int | None, tag: str = DEFAULT_TAG
    ) -> BufferPool:
        """Map an existing pool as reactor ``reactor_id`` (None: reserve only)."""
        if names.parse_object_name(instance_or_name) is None and "/" not in instance_or_name:
            name = names.object_name(instance_or_name, tag)
        else:
            name = instance_or_name
        seg = SharedSegment.attach(name)
        try:
            sem = posix_ipc.Semaphore("/" + seg.name)
        except posix_ipc.ExistentialError:
            seg.close()
            raise FileNotFoundError(f"buffer pool semaphore for {seg.name} is missing") from None
        try:
            return cls(seg, sem, reactor_id, owner=False)
        except BaseException:
            sem.close()
            seg.close()
            raise

    # --------------------------------------------------------- reactor slot --
    def _locked(self, dead_pid: int = 0) -> _SemLock:
        return _SemLock(self, dead_pid)

    def _claim(self, r: int) -> None:
        key = (self.name, r)
        if key in _claimed:
            raise PoolError(f"reactor {r} of {self.name} is already attached in this process")
        me = os.getpid()
        with self._locked():
            pid = int(self._pids[r])
            if pid and pid != me and pid_alive(pid):
                raise PoolError(f"reactor {r} of {self.name} is attached by live pid {pid}")
            self._pids[r] = me
        _claimed.add(key)
        # Rebuild the private free list from the shared state bytes: a fresh
        # pool has the whole share there; after a reactor restart, buffers
        # the old incarnation had in flight stay out.
        for c in (self._small, self._large):
            st = bytes(c.state[c.lo : c.hi])
            c.free = [c.lo + j for j in range(len(st) - 1, -1, -1) if st[j] == ON_OWNER_LIST]

    # ------------------------------------------------------------ get/put --
    def get(self, nbytes: int) -> Buffer | None:
        """A buffer of at least ``nbytes``; None when none is free (retry later)."""
        if nbytes <= self.small_size:
            if nbytes < 0:
                raise ValueError(f"buffer length must be >= 0, not {nbytes}")
            c = self._small
        elif nbytes <= self.large_size:
            c = self._large
        else:
            raise ValueError(
                f"buffer length {nbytes} exceeds the large buffer size {self.large_size}"
            )
        if c.free:
            idx = c.free.pop()
            c.state[idx] = IN_USE
            c.owner[idx] = self._tag
        else:
            idx = self._reserve_pop(c)
            if idx < 0:
                c.nomem += 1
                return None
        c.gets += 1
        b = c.bufs[idx]
        if b is None:
            b = c.bufs[idx] = Buffer(self, c, idx)
        b.view = b._full[:nbytes]
        return b

    def put(self, buf: Buffer | BufRef) -> None:
        """Give a buffer back. Accepts a `Buffer` or a `BufRef` from any process."""
        if isinstance(buf, Buffer) and buf.pool is self:
            c, idx = buf.cls, buf.index
        else:
            c, idx = self._locate(
                buf.offset, buf.pool.name if isinstance(buf, Buffer) else buf.segment
            )
        if c.lo <= idx < c.hi:
            if c.state[idx] != IN_USE:
                raise ValueError(f"double put of {c.label} buffer {idx} in {self.name}")
            c.state[idx] = ON_OWNER_LIST
            c.owner[idx] = NO_OWNER
            c.free.append(idx)
        else:
            self._reserve_push(c, idx)
        c.puts += 1

    def _locate(self, offset: int, segment: str) -> tuple[_Class, int]:
        if segment != self.name:
            raise ValueError(f"buffer belongs to {segment}, not to pool {self.name}")
        for c in (self._small, self._large):
            rel = offset - c.area
            if 0 <= rel < c.count * c.stride:
                idx, mod = divmod(rel, c.stride)
                if mod:
                    break
                return c, idx
        raise ValueError(f"offset {offset} is not the start of a buffer in {self.name}")

    def _reserve_pop(self, c: _Class) -> int:
        h = self._hdr
        with self._locked():
            top = h[c.top_slot]
            if top == 0:
                return -1
            top -= 1
            idx = c.stack[top]
            h[c.top_slot] = top
            c.state[idx] = IN_USE
            c.owner[idx] = self._tag
        c.reserve_gets += 1
        return idx

    def _reserve_push(self, c: _Class, idx: int) -> None:
        h = self._hdr
        with self._locked():
            if c.state[idx] != IN_USE:
                raise ValueError(f"double put of {c.label} buffer {idx} in {self.name}")
            top = h[c.top_slot]
            c.stack[top] = idx
            h[c.top_slot] = top + 1
            c.state[idx] = IN_RESERVE
            c.owner[idx] = NO_OWNER
        c.reserve_puts += 1

    # -------------------------------------------------------------- views --
    def view_of(self, ref: BufRef) -> memoryview:
        """The bytes a `BufRef` names (from any process that attached the pool)."""
        if ref.segment != self.name:
            raise ValueError(f"BufRef names segment {ref.segment}, not {self.name}")
        if ref.offset < 0 or ref.length < 0 or ref.offset + ref.length > self.segment.size:
            raise ValueError(f"BufRef {ref.offset}+{ref.length} is outside {self.name}")
        return self.segment.buf[ref.offset : ref.offset + ref.length]

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "path": self.segment.path,
            "hugepage": self.segment.hugepage,
            "size": self.segment.size,
            "nreactors": self.nreactors,
            "reactor_id": self.reactor_id,
        }
        for c in (self._small, self._large):
            st = bytes(c.state)
            out[c.label] = {
                "buf_size": c.size,
                "count": c.count,
                "per_reactor": c.per,
                "reserve_count": c.count - c.per * self.nreactors,
                "reserve_free": int(self._hdr[c.top_slot]),
                "local_free": len(c.free),
                "in_use": st.count(IN_USE),
                "gets": c.gets,
                "puts": c.puts,
                "nomem": c.nomem,
                "reserve_gets": c.reserve_gets,
                "reserve_puts": c.reserve_puts,
            }
        return out

    def held_by(self) -> dict[int, int]:
        """In-use buffers per holder (reactor id; -1: a process that is no reactor)."""
        out: dict[int, int] = {}
        for c in (self._small, self._large):
            st = bytes(c.state)
            for idx, tag in enumerate(c.owner.tolist()):
                if st[idx] == IN_USE:
                    out[tag - 1] = out.get(tag - 1, 0) + 1
        return out

    # ------------------------------------------------------------ reclaim --
    def reclaim(self, reactor_id: int, dead_pid: int = 0) -> int:
        """Return every buffer reactor ``reactor_id`` held to the pool (its
        process died; the supervisor calls this before restarting it).

        Buffers of the reactor's own share go back onto its free list (state
        ON_OWNER_LIST: the next incarnation rebuilds its list from the state
        bytes), the others onto the reserve. Frees the reactor's slot and, if
        the dead process held the reserve lock, the lock. Returns how many
        buffers came back. Never call it for a reactor that is alive.
        """
        if not 0 <= reactor_id < self.nreactors:
            raise ValueError(f"reactor_id must be in 0..{self.nreactors - 1}, not {reactor_id}")
        if reactor_id == self.reactor_id:
            raise ValueError("a pool cannot reclaim its own reactor's buffers")
        tag = reactor_id + 1
        n = 0
        h = self._hdr
        with self._locked(dead_pid=dead_pid or int(self._pids[reactor_id])):
            for c in (self._small, self._large):
                lo, hi = reactor_id * c.per, (reactor_id + 1) * c.per
                st = c.state
                owners = c.owner.tolist()
                for idx, t in enumerate(owners):
                    if t != tag:
                        continue
                    c.owner[idx] = NO_OWNER
                    if st[idx] != IN_USE:
                        continue
                    n += 1
                    if lo <= idx < hi:
                        st[idx] = ON_OWNER_LIST
                    else:
                        top = h[c.top_slot]
                        c.stack[top] = idx
                        h[c.top_slot] = top + 1
                        st[idx] = IN_RESERVE
            pid = int(self._pids[reactor_id])
            if pid and (pid == dead_pid or not pid_alive(pid)):
                self._pids[reactor_id] = 0
        return n

    # -------------------------------------------------------------- close --
    def close(self) -> None:
        """Detach; buffers this process still holds stay out of circulation."""
        if self._closed:
            return
        self._closed = True
        r = self.reactor_id
        if r is not None:
            _claimed.discard((self.name, r))
            try:
                with self._locked():
                    if self._pids[r] == os.getpid():
                        self._pids[r] = 0
            except PoolError:
                pass
        for c in (self._small, self._large):
            for b in c.bufs:
                if b is not None:
                    # A caller may still export a view (BufferError): then
                    # the segment's unmap is deferred, see SharedSegment.close.
                    with contextlib.suppress(BufferError):
                        b.view.release()
                        b._full.release()
            c.bufs = []
            c.stack.release()
            c.state.release()
            c.owner.release()
        self._pids.release()
        self._hdr.release()
        self._sem.close()
        self.segment.close()

    def unlink(self) -> None:
        """Remove the segment, the semaphore and their manifest entries."""
        self.segment.unlink()
        try:
            posix_ipc.unlink_semaphore("/" + self.name)
        except posix_ipc.ExistentialError:
            pass
        if self.segment.instance:
            Manifest(self.segment.instance).remove(self.name, "sem")

    def destroy(self) -> None:
        self.close()
        self.unlink()

    def __enter__(self) -> BufferPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


STALE_CHECK_S = 0.2  # a busy reserve lock is checked for a dead holder after this
_pid_cache = [0]  # this process's pid, reset after fork


def _mypid() -> int:
    if not _pid_cache[0]:
        _pid_cache[0] = os.getpid()
    return _pid_cache[0]


os.register_at_fork(after_in_child=lambda: _pid_cache.__setitem__(0, 0))


class _SemLock:
    """The reserve lock; its holder's pid sits in the header (H_LOCK_PID) so a
    holder that died inside the critical section can be detected and the lock
    taken over instead of wedging every reactor."""

    __slots__ = ("sem", "name", "hdr", "dead_pid")

    def __init__(self, pool: BufferPool, dead_pid: int = 0) -> None:
        self.sem = pool._sem
        self.name = pool.name
        self.hdr = pool._hdr
        self.dead_pid = dead_pid

    def __enter__(self) -> None:
        try:
            self.sem.acquire(STALE_CHECK_S)
        except posix_ipc.BusyError:
            self._slow()
        self.hdr[H_LOCK_PID] = _mypid()

    def _slow(self) -> None:
        holder = int(self.hdr[H_LOCK_PID])
        if holder and (holder == self.dead_pid or not pid_alive(holder)):
            return  # taken over: the semaphore stays at 0, we release it
        try:
            self.sem.acquire(LOCK_TIMEOUT_S - STALE_CHECK_S)
            return
        except posix_ipc.BusyError:
            pass
        holder = int(self.hdr[H_LOCK_PID])
        # A process killed between acquiring and recording its pid leaves 0:
        # only the supervisor reclaiming a dead reactor may assume that.
        if self.dead_pid and (holder == 0 or not pid_alive(holder)):
            return
        raise PoolError(
            f"reserve lock of {self.name} not released for {LOCK_TIMEOUT_S}s "
            f"(held by pid {holder or 'unknown'})"
        )

    def __exit__(self, *exc: object) -> None:
        self.hdr[H_LOCK_PID] = 0
        self.sem.release()
