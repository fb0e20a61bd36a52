"""Cross-process LBA range locks: a striped set of POSIX semaphores per instance.

Every reactor is a process, and a malloc bdev is memory they all map; aio
bdevs are files they all open. Two things need mutual exclusion across them:

* **untearable writes**: two overlapping writes from two reactors must leave
  each block all-old or all-new. A malloc write is a memcpy into shared
  memory, an O_DIRECT aio write may run concurrently with another one in the
  filesystem, so the copy runs under the locks covering its byte range;
* **compare-and-write**: the compare and the write run under the locks of
  their range, so no write from any reactor lands in between (SPDK's bdev
  range lock: a locked range quiesces overlapping writes on every channel,
  writes to other ranges proceed).

Design: the instance has `NSTRIPES` named semaphores (``blockfabric.I.stripe.N``,
created by the supervisor with the first bdev that needs them, recorded in
the manifest, unlinked with the last one, and by ``shm cleanup`` after a crash).
A range of a bdev maps to the stripes of its `REGION`-sized regions, hashed
with the bdev's key, so different bdevs and different regions spread over
the stripes. An operation takes all its stripes in ascending order and
releases them together, and never takes another lock while holding them, so
there is no deadlock. An uncontended semaphore is a userspace atomic (about
0.1 us from Python, measured), so writes lock always: there is no "locks
active" counter to race with.

A holder that dies (SIGKILL) while holding a stripe would block it forever;
holders keep stripes for microseconds (a memcpy) up to one disk I/O, so an
acquire that waits `STEAL_AFTER_S` takes the stripe over (the token the dead
process held) and logs it.

Without an instance (unit tests that build a bdev by hand) the stripes are
process-local thread locks: correct within one process only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import zlib
from typing import Any

import posix_ipc

from ..shm import names
from ..shm.manifest import Manifest

log = logging.getLogger(__name__)

NSTRIPES = 32
REGION = 64 * 1024  # bytes of a bdev covered by one stripe
STEAL_AFTER_S = 2.0


def bdev_key(name: str) -> int:
    return zlib.crc32(name.encode())


class _PosixSem:
    """posix_ipc.Semaphore with SemLock's acquire(block, timeout) -> bool."""

    def __init__(self, sem: Any) -> None:
        self.sem = sem

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        try:
            self.sem.acquire(timeout if block else 0)
        except posix_ipc.BusyError:
            return False
        return True

    def release(self) -> None:
        self.sem.release()


def _open_sem(name: str) -> Any:
    """An existing named semaphore, as the fastest object we can get.

    multiprocessing's SemLock tries sem_trywait before releasing the GIL:
    0.29 us per uncontended acquire+release here, against 0.65 us for
    posix_ipc's timed acquire (measured). Fall back to posix_ipc."""
    try:
        import _multiprocessing

        return _multiprocessing.SemLock._rebuild(0, 1, 1, "/" + name)  # type: ignore[attr-defined]
    except Exception:
        return _PosixSem(posix_ipc.Semaphore("/" + name))


class StripeLocks:
    """The stripe semaphores of one instance, as mapped in this process."""

    _attached: dict[str, StripeLocks] = {}
    _refs: dict[str, int] = {}  # supervisor side: bdevs using the set
    _guard = threading.Lock()

    def __init__(self, instance: str, sems: list[Any], owned: list[Any] | None = None) -> None:
        self.instance = instance
        self.sems = sems  # acquire(block, timeout) -> bool, release()
        self.owned = owned or []  # the posix_ipc objects the creator holds
        self.steals = 0

    # ---------------------------------------------------------- life cycle
    @staticmethod
    def sem_name(instance: str, i: int) -> str:
        return names.object_name(instance, f"stripe.{i}")

    @classmethod
    def retain(cls, instance: str) -> None:
        """Supervisor: a bdev needing the stripes was created (create on first)."""
        with cls._guard:
            n = cls._refs.get(instance, 0)
            if n == 0 and instance not in cls._attached:
                sems = []
                try:
                    for i in range(NSTRIPES):
                        name = cls.sem_name(instance, i)
                        try:
                            s = posix_ipc.Semaphore(
                                "/" + name, posix_ipc.O_CREX, mode=0o600, initial_value=1
                            )
                        except posix_ipc.ExistentialError:
                            # left by a dead process of this instance (we hold
                            # the instance lock): replace it
                            with contextlib.suppress(posix_ipc.ExistentialError):
                                posix_ipc.unlink_semaphore("/" + name)
                            s = posix_ipc.Semaphore(
                                "/" + name, posix_ipc.O_CREX, mode=0o600, initial_value=1
                            )
                        sems.append(s)
                        Manifest(instance).add(
                            name, "sem", str(names.SHM_DIR / (names.SEM_PREFIX + name)), 0
                        )
                except BaseException:
                    for i, s in enumerate(sems):
                        s.close()
                        cls._unlink(instance, i)
                    raise
                cls._attached[instance] = cls(
                    instance, [_open_sem(cls.sem_name(instance, i)) for i in range(NSTRIPES)], sems
                )
            cls._refs[instance] = n + 1

    @classmethod
    def unretain(cls, instance: str) -> None:
        """Supervisor: a bdev using the stripes was destroyed (unlink on last)."""
        with cls._guard:
            n = cls._refs.get(instance, 0) - 1
            if n > 0:
                cls._refs[instance] = n
                return
            cls._refs.pop(instance, None)
            sl = cls._attached.pop(instance, None)
            if sl is not None:
                for s in sl.owned:
                    with contextlib.suppress(Exception):
                        s.close()
            for i in range(NSTRIPES):
                cls._unlink(instance, i)

    @classmethod
    def _unlink(cls, instance: str, i: int) -> None:
        name = cls.sem_name(instance, i)
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore("/" + name)
        with contextlib.suppress(Exception):
            Manifest(instance).remove(name, "sem")

    @classmethod
    def get(cls, instance: str | None) -> StripeLocks:
        """This process's handle (attached on first use; process-local without instance)."""
        key = instance or ""
        sl = cls._attached.get(key)
        if sl is not None:
            return sl
        with cls._guard:
            sl = cls._attached.get(key)
            if sl is None:
                if instance:
                    sems: list[Any] = [
                        _open_sem(cls.sem_name(instance, i)) for i in range(NSTRIPES)
                    ]
                else:
                    sems = [threading.Lock() for _ in range(NSTRIPES)]
                sl = cls(key, sems)
                cls._attached[key] = sl
        return sl

    # ------------------------------------------------------------- locking
    @staticmethod
    def stripes(key: int, start: int, end: int) -> tuple[int, ...]:
        """The stripe indexes covering bytes [start, end) of bdev ``key``, ascending."""
        r0, r1 = start // REGION, (max(end, start + 1) - 1) // REGION
        if r1 - r0 + 1 >= NSTRIPES:
            return tuple(range(NSTRIPES))
        if r0 == r1:
            return ((key + r0) % NSTRIPES,)
        return tuple(sorted({(key + r) % NSTRIPES for r in range(r0, r1 + 1)}))

    def lock(self, key: int, start: int, end: int) -> tuple[int, ...]:
        """Take the stripes of bytes [start, end) of bdev ``key``; returns
        what `unlock` needs."""
        r0 = start // REGION
        if (end - 1) // REGION == r0:  # the common case: one region
            i = (key + r0) % NSTRIPES
            if not self.sems[i].acquire(True, STEAL_AFTER_S):
                self._stolen(i)
            return (i,)
        held = self.stripes(key, start, end)
        sems = self.sems
        for i in held:
            if not sems[i].acquire(True, STEAL_AFTER_S):
                self._stolen(i)
        return held

    def _stolen(self, i: int) -> None:
        # the holder died with it (see module docstring): take it over
        self.steals += 1
        log.error(
            "range-lock stripe %d of instance %s held for %.0f s (dead holder?): taking it over",
            i,
            self.instance,
            STEAL_AFTER_S,
        )

    def unlock(self, held: tuple[int, ...]) -> None:
        sems = self.sems
        for i in reversed(held):
            sems[i].release()


def instance_of_segment(segment_name: str) -> str | None:
    parsed = names.parse_object_name(segment_name)
    return parsed[0] if parsed else None
