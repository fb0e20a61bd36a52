"""A named shared-memory segment, hugetlbfs-backed when huge pages are free.

Huge pages matter for buffer pools: fewer TLB misses and memory that is never
swapped. They are used only when a hugetlbfs mount has enough free pages;
otherwise the segment is an ordinary POSIX shm object in /dev/shm. Either way
the kernel hands out zeroed pages, so we never memset in Python.
"""

from __future__ import annotations

import contextlib
import gc
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import posix_ipc

from . import names
from .manifest import Manifest

HugePages = Literal["auto", "never", "require"]
HUGE_2M = 2 * 1024 * 1024


class HugePagesUnavailable(RuntimeError):
    pass


# ------------------------------------------------------------- hugetlbfs ---
@dataclass
class HugeMount:
    path: str
    page_size: int
    free_pages: int


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            with contextlib.suppress(ValueError, IndexError):
                out[key] = int(rest.split()[0])
    return out


def _pool_free_pages(page_size: int) -> int:
    """Free, unreserved pages of one huge page size in the kernel pool."""
    d = Path(f"/sys/kernel/mm/hugepages/hugepages-{page_size // 1024}kB")
    try:
        free = int((d / "free_hugepages").read_text())
        resv = int((d / "resv_hugepages").read_text())
        return max(0, free - resv)
    except (OSError, ValueError):
        mi = _meminfo()
        if mi.get("Hugepagesize", 0) * 1024 != page_size:
            return 0
        return max(0, mi.get("HugePages_Free", 0) - mi.get("HugePages_Rsvd", 0))


def hugetlbfs_mounts() -> list[HugeMount]:
    """hugetlbfs mounts from /proc/mounts with the pages they can still give."""
    out: list[HugeMount] = []
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        f = line.split()
        if len(f) < 3 or f[2] != "hugetlbfs":
            continue
        path = f[1].replace("\\040", " ")
        try:
            st = os.statvfs(path)
        except OSError:
            continue
        if not os.access(path, os.W_OK):
            continue
        page = st.f_bsize or HUGE_2M
        free = _pool_free_pages(page)
        if st.f_blocks:  # mount has a size= limit: it caps what we may use
            free = min(free, st.f_bavail)
        out.append(HugeMount(path, page, free))
    return out


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _pick_mount(size: int) -> HugeMount | None:
    best = None
    for m in hugetlbfs_mounts():
        if m.free_pages * m.page_size >= _round_up(size, m.page_size):
            # Prefer 2 MiB pages: 1 GiB pages waste too much for small pools.
            if best is None or (m.page_size == HUGE_2M and best.page_size != HUGE_2M):
                best = m
    return best


# ------------------------------------------------ unmaps that must wait ---
# An mmap cannot be closed while memoryviews of it exist (BufferError). Such
# maps are parked here and retried on later close() calls and after each gc.
_pending: list[mmap.mmap] = []


def _retry_pending() -> int:
    still = []
    for mm in _pending:
        try:
            mm.close()
        except BufferError:
            still.append(mm)
    _pending[:] = still
    return len(still)


def _gc_callback(phase: str, info: dict[str, int]) -> None:
    if phase == "stop" and _pending:
        _retry_pending()


gc.callbacks.append(_gc_callback)


def pending_unmaps() -> int:
    """How many closed segments still wait for their views to go away."""
    return _retry_pending() if _pending else 0


# --------------------------------------------------------------- segment ---
class SharedSegment:
    """A mapped segment. ``buf`` is a writable memoryview over the whole map."""

    def __init__(
        self, name: str, path: str, size: int, hugepage: bool, mm: mmap.mmap, created: bool
    ) -> None:
        self.name = name
        self.path = path
        self.size = size
        self.hugepage = hugepage
        self.created = created
        self._mm: mmap.mmap | None = mm
        self.buf = memoryview(mm)
        parsed = names.parse_object_name(name)
        self.instance, self.tag = parsed if parsed else ("", "")

    def __repr__(self) -> str:
        kind = "hugetlbfs" if self.hugepage else "shm"
        return f"<SharedSegment {self.name} {kind} {self.size} bytes at {self.path}>"

    # ------------------------------------------------------------ create --
    @classmethod
    def create(
        cls, instance: str, tag: str, size: int, hugepages: HugePages = "auto"
    ) -> SharedSegment:
        """Create ``blockfabric.<instance>.<tag>``; it must not exist yet."""
        name = names.object_name(instance, tag)
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"segment size must be a positive integer, not {size!r}")
        if hugepages not in ("auto", "never", "require"):
            raise ValueError(f"hugepages must be 'auto', 'never' or 'require', not {hugepages!r}")
        if names.SHM_DIR.joinpath(name).exists() or any(
            os.path.exists(os.path.join(m.path, name)) for m in hugetlbfs_mounts()
        ):
            raise FileExistsError(f"shared memory segment {name} already exists")
        seg = None
        if hugepages != "never":
            mount = _pick_mount(size)
            if mount is not None:
                seg = cls._create_huge(name, mount, size)
            if seg is None and hugepages == "require":
                raise HugePagesUnavailable(cls._why_no_hugepages(size))
        if seg is None:
            seg = cls._create_shm(name, size)
        try:
            Manifest(instance).add(name, "hugetlbfs" if seg.hugepage else "shm", seg.path, seg.size)
        except BaseException:
            seg.close()
            seg.unlink(manifest=False)
            raise
        return seg

    @staticmethod
    def _why_no_hugepages(size: int) -> str:
        mounts = hugetlbfs_mounts()
        if not mounts:
            return "no writable hugetlbfs mount in /proc/mounts"
        have = ", ".join(f"{m.path}: {m.free_pages} free x {m.page_size}" for m in mounts)
        return f"not enough free huge pages for {size} bytes ({have})"

    @classmethod
    def _create_huge(cls, name: str, mount: HugeMount, size: int) -> SharedSegment | None:
        path = os.path.join(mount.path, name)
        rsize = _round_up(size, mount.page_size)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise FileExistsError(f"shared memory segment {path} already exists") from None
        try:
            os.ftruncate(fd, rsize)
            # Pages are reserved at mmap time: ENOMEM here means another
            # process took them since we looked; fall back to /dev/shm.
            mm = mmap.mmap(fd, rsize)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        os.close(fd)
        return cls(name, path, rsize, True, mm, True)

    @classmethod
    def _create_shm(cls, name: str, size: int) -> SharedSegment:
        try:
            shm = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=0o600, size=size)
        except posix_ipc.ExistentialError:
            raise FileExistsError(f"shared memory segment {name} already exists") from None
        try:
            mm = mmap.mmap(shm.fd, size)
        except BaseException:
            shm.close_fd()
            shm.unlink()
            raise
        shm.close_fd()
        return cls(name, str(names.SHM_DIR / name), size, False, mm, True)

    # ------------------------------------------------------------ attach --
    @classmethod
    def attach(cls, name_or_path: str) -> SharedSegment:
        """Map an existing segment by object name (with or without '/') or path."""
        path = cls._resolve(name_or_path)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise ValueError(f"segment {path} has size 0 (being created?)")
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        hugepage = not path.startswith(str(names.SHM_DIR) + "/")
        name = os.path.basename(path)
        return cls(name, path, size, hugepage, mm, False)

    @staticmethod
    def _resolve(name_or_path: str) -> str:
        base = name_or_path.rsplit("/", 1)[-1]
        if name_or_path.count("/") > 1 or (
            name_or_path.startswith("/") and not name_or_path[1:].startswith(names.PREFIX + ".")
        ):
            if os.path.exists(name_or_path):
                return name_or_path
            raise FileNotFoundError(f"no shared segment at {name_or_path}")
        parsed = names.parse_object_name(base)
        if parsed is None:
            raise ValueError(f"{name_or_path!r} is not a blockfabric segment name")
        shm = names.SHM_DIR / base
        if shm.exists():
            return str(shm)
        entry = Manifest.load(parsed[0]).entry(base, "hugetlbfs")
        if entry is not None and os.path.exists(entry.path):
            return entry.path
        for m in hugetlbfs_mounts():
            p = os.path.join(m.path, base)
            if os.path.exists(p):
                return p
        raise FileNotFoundError(f"no shared segment named {base}")

    # ------------------------------------------------------------- close --
    @property
    def closed(self) -> bool:
        return self._mm is None

    def close(self) -> bool:
        """Unmap. Returns False if views are still exported: the unmap then
        happens on a later close() of any segment or after a gc run."""
        mm, self._mm = self._mm, None
        if _pending:
            _retry_pending()
        if mm is None:
            return True
        try:
            self.buf.release()
            mm.close()
        except BufferError:
            _pending.append(mm)
            return False
        return True

    def unlink(self, manifest: bool = True) -> None:
        """Remove the name (mappings stay valid until closed) and its manifest entry."""
        with contextlib.suppress(FileNotFoundError):
            if self.hugepage:
                os.unlink(self.path)
            else:
                with contextlib.suppress(posix_ipc.ExistentialError):
                    posix_ipc.unlink_shared_memory("/" + self.name)
        if manifest and self.instance:
            Manifest(self.instance).remove(self.name, "hugetlbfs" if self.hugepage else "shm")

    def __enter__(self) -> SharedSegment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
