"""What the stackable bdevs (raid, split, passthru, delay, error) share.

A stacked bdev is described by its own fields plus the descriptions of its
base bdevs (as the write-cache bdev does), so every reactor rebuilds the
whole stack by itself from the supervisor's ConfigUpdate and opens its own
channels on the bases: no message on the data path.

State that must be the same in every reactor at the same instant (the raid
member states and its range locks, the error bdev's armed injections) lives
in a small shared segment guarded by one named semaphore (`SharedState`),
created by the supervisor with the bdev and unlinked with it.
"""

from __future__ import annotations

import contextlib
import os
import re
import zlib
from typing import Any

import posix_ipc

from ..shm import names
from ..shm.manifest import Manifest
from ..shm.segment import SharedSegment
from .base import Bdev, Callback, CompareCallback, IoChannel, ReadCallback

MUTEX_STEAL_S = 2.0


def safe_tag(prefix: str, name: str) -> str:
    """``prefix.NAME`` as an object tag (the tag grammar is narrower than bdev names)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40]
    if safe != name or not safe:
        safe = f"{safe}-{zlib.crc32(name.encode()):08x}"
    return f"{prefix}.{safe}"


class SharedState:
    """A shared segment of 64-bit words plus one named semaphore as its mutex.

    The mutex is held for microseconds (a few word updates, never across I/O);
    a holder that died inside it is taken over after `MUTEX_STEAL_S`."""

    def __init__(self, seg: SharedSegment, sem: Any) -> None:
        self.seg = seg
        self.sem = sem
        self.q = seg.buf.cast("Q")

    @classmethod
    def create(cls, instance: str, tag: str, words: int) -> SharedState:
        seg = SharedSegment.create(instance, tag, max(4096, words * 8), hugepages="never")
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
        return cls(seg, sem)

    @classmethod
    def attach(cls, name: str) -> SharedState:
        seg = SharedSegment.attach(name)
        try:
            sem = posix_ipc.Semaphore("/" + name)
        except BaseException:
            seg.close()
            raise
        return cls(seg, sem)

    def __enter__(self) -> None:
        try:
            self.sem.acquire(MUTEX_STEAL_S)
        except posix_ipc.BusyError:
            pass  # its holder died inside: take it over (the token stays ours)

    def __exit__(self, *exc: object) -> None:
        self.sem.release()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.q.release()
        self.seg.close()
        with contextlib.suppress(Exception):
            self.sem.close()

    def destroy(self) -> None:
        """Supervisor: unmap, unlink the segment and the semaphore."""
        name, inst = self.seg.name, self.seg.instance
        self.close()
        self.seg.unlink()
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore("/" + name)
        if inst:
            Manifest(inst).remove(name, "sem")


class StackedBdev(Bdev):
    """A bdev built on other bdevs. ``base_descs[i]`` is the description of
    base i (None for an empty raid slot); each process builds its own copy."""

    # replaced per instance by create() / _restore(), never mutated here
    base_descs: list[dict[str, Any] | None] = []  # noqa: RUF012

    @property
    def _bases(self) -> dict[int, Bdev]:
        d: dict[int, Bdev] | None = self.__dict__.get("_bases_d")
        if d is None:
            d = self.__dict__["_bases_d"] = {}
        return d

    def base_names(self) -> list[str]:
        """The bdevs this one claims."""
        return [d["name"] for d in self.base_descs if d is not None]

    def base_bdev(self, i: int) -> Bdev:
        """This process's own copy of base i (never the supervisor's object)."""
        b = self._bases.get(i)
        if b is None:
            from .registry import bdev_from_description

            d = self.base_descs[i]
            if d is None:
                raise ValueError(f"{self.name}: slot {i} is empty")
            b = bdev_from_description(d)
            self._bases[i] = b
        return b

    def _description(self) -> dict[str, Any]:
        return {"bases": [None if d is None else dict(d) for d in self.base_descs]}

    def _restore(self, d: dict[str, Any]) -> None:
        self.base_descs = [None if x is None else dict(x) for x in d["bases"]]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ForwardChannel(IoChannel):
    """Every operation passed to one base channel, ``shift`` blocks further
    (split). FUA (and write-through, which IoChannel.write turns into FUA),
    flush, unmap, write zeroes, compare and compare-and-write go down as they
    are, so the base's durability and atomicity (its range locks) hold."""

    def __init__(self, bdev: Bdev, base: IoChannel, shift: int = 0) -> None:
        super().__init__(bdev)
        self.base = base
        self.shift = shift
        self.zero_copy_reads = base.zero_copy_reads

    def _do_read(
        self, offset_blocks: int, num_blocks: int, cb: ReadCallback, into: memoryview | None = None
    ) -> None:
        self.base.read(offset_blocks + self.shift, num_blocks, cb, into)

    def _do_write(
        self, offset_blocks: int, data: memoryview, cb: Callback, fua: bool = False
    ) -> None:
        self.base.write(offset_blocks + self.shift, data, cb, fua)

    def _do_compare(self, offset_blocks: int, data: memoryview, cb: CompareCallback) -> None:
        self.base.compare(offset_blocks + self.shift, data, cb)

    def _do_compare_and_write(
        self,
        offset_blocks: int,
        compare: memoryview,
        write: memoryview,
        cb: CompareCallback,
        fua: bool,
    ) -> None:
        self.base.compare_and_write(offset_blocks + self.shift, compare, write, cb, fua)

    def _do_flush(self, cb: Callback) -> None:
        self.base.flush(cb)

    def _do_unmap(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        self.base.unmap(offset_blocks + self.shift, num_blocks, cb)

    def _do_write_zeroes(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        self.base.write_zeroes(offset_blocks + self.shift, num_blocks, cb)

    def close(self) -> None:
        self.base.close()
