"""aio bdev: a file or block device, served by worker threads.

Python has no io_uring or Linux AIO binding in the standard library, and the
design card allows no extra dependency for it, so file I/O runs on a small pool
of threads per reactor (os.preadv/os.pwritev release the GIL). Completions go
back to the reactor through a deque plus an eventfd the loop watches, so the
reactor never blocks on the disk. Without a loop (tests, the supervisor) I/O
completes synchronously.

Durability: a FUA write (or any write with ``write_through``) is one
``pwritev(..., RWF_DSYNC)``: measured on this VM's ext4, 4 KiB, 114-127 us per
write against 181-226 us for pwritev + fdatasync; flush is fdatasync.

``direct`` opens the file with O_DIRECT (no page cache: every completed write
has reached the device's cache, FUA/flush still needed for its durability).
Buffers must be aligned: pool buffers are (4 KiB), anything else goes through
a per-worker aligned bounce buffer.

Errors: anything a worker raises completes the I/O with FAILED; a short read
or write retries the remainder, and one that makes no progress (EOF, a file
truncated under us) fails; success is never reported for less than the whole
transfer.

Atomicity: writes and compare-and-write run under the instance's range
locks (bdevs/locks.py), taken in the worker thread. Buffered pwrite on Linux
is already atomic against other pwrites of the same file (the inode lock), but
O_DIRECT overwrites may run concurrently in the filesystem, and the compare
and the write of a compare-and-write are two syscalls: the locks make both
safe across reactors, and cost a userspace atomic when uncontended.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import mmap
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .base import (
    Bdev,
    Callback,
    CompareCallback,
    IoChannel,
    IoStatus,
    ReadCallback,
    first_difference,
)
from .locks import StripeLocks, bdev_key

log = logging.getLogger(__name__)

# written by write-zeroes, in pieces; allocated once per process
_ZEROS = memoryview(bytes(1 << 20))

AIO_THREADS = 4
DIRECT_ALIGN = 4096  # buffer address alignment used for O_DIRECT (pool buffers are 4 KiB aligned)
BOUNCE = 128 * 1024  # per-thread aligned bounce buffer for unaligned O_DIRECT buffers

_READ_FAIL: tuple[Any, ...] = (IoStatus.FAILED, None)
_FAIL: tuple[Any, ...] = (IoStatus.FAILED,)
_CMP_FAIL: tuple[Any, ...] = (IoStatus.FAILED, -1)


def _address(mv: memoryview) -> int | None:
    """Address of a writable buffer, None when it cannot be known (read-only)."""
    try:
        c = ctypes.c_char.from_buffer(mv)
    except (TypeError, ValueError):
        return None
    a = ctypes.addressof(c)
    del c
    return a


class AioChannel(IoChannel):
    def __init__(self, bdev: AioBdev, loop: Any) -> None:
        super().__init__(bdev)
        self.bs = bdev.block_size
        self.direct = bdev.direct
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_DIRECT if bdev.direct else 0)
        self.fd = os.open(bdev.filename, flags)
        self.loop = loop
        self.pool: ThreadPoolExecutor | None = None
        self.efd = -1
        self.done: collections.deque[tuple[Any, ...]] = collections.deque()
        self._closing = False
        self.locks = StripeLocks.get(bdev.instance or None)
        self.key = bdev_key(bdev.name)
        self._tls = threading.local()
        if loop is not None:
            from ..runtime.loop import EPOLLIN, make_eventfd

            self.pool = ThreadPoolExecutor(AIO_THREADS, thread_name_prefix=f"aio-{bdev.name}")
            self.efd = make_eventfd()
            loop.add_fd(self.efd, EPOLLIN, self._on_completions)

    # -- worker side ------------------------------------------------------
    def _submit(
        self, fn: Callable[..., tuple[Any, ...]], cb: Any, fail: tuple[Any, ...], *args: Any
    ) -> None:
        """Run ``fn(*args)`` on a worker; ``cb(*result)`` on the reactor. Any
        exception of the worker completes the I/O with ``fail``."""

        def run() -> tuple[Any, ...]:
            try:
                return fn(*args)
            except Exception:
                log.exception("aio bdev %s: worker error", self.bdev.name)
                return fail

        if self.pool is None:
            self._call(cb, run())
            return
        self.in_flight += 1

        def work() -> None:
            res = run()
            self.done.append((cb, res))
            try:
                os.eventfd_write(self.efd, 1)
            except OSError:  # channel closed under us: nothing to wake
                pass

        try:
            self.pool.submit(work)
        except RuntimeError:  # pool shut down (closing)
            self.in_flight -= 1
            self._call(cb, fail)

    def _call(self, cb: Any, res: tuple[Any, ...]) -> None:
        try:
            cb(*res)
        except Exception:
            log.exception("aio bdev %s: completion callback failed", self.bdev.name)

    def _on_completions(self, _ev: int) -> None:
        try:
            os.eventfd_read(self.efd)
        except (BlockingIOError, OSError):
            pass
        done = self.done
        while done:
            cb, res = done.popleft()
            self.in_flight -= 1
            self._call(cb, res)
        if self._closing and self.in_flight == 0:
            self._finish_close()

    def _bounce(self) -> memoryview:
        b: memoryview | None = getattr(self._tls, "bounce", None)
        if b is None:
            b = memoryview(mmap.mmap(-1, BOUNCE))  # page aligned
            self._tls.bounce = b
        return b

    def _scratch(self, n: int) -> memoryview:
        """A worker thread's own compare buffer (page aligned, reused): the
        compared data is at most one transfer, which the transports bound by
        MDTS / the CAW limit before they submit."""
        if n > BOUNCE:
            return memoryview(mmap.mmap(-1, n))  # only above the transfer limits
        b: memoryview | None = getattr(self._tls, "scratch", None)
        if b is None:
            b = memoryview(mmap.mmap(-1, BOUNCE))
            self._tls.scratch = b
        return b[:n]

    def _needs_bounce(self, mv: memoryview) -> bool:
        if not self.direct:
            return False
        a = _address(mv)
        return a is None or a % DIRECT_ALIGN != 0

    def _read_into(self, off: int, dest: memoryview) -> None:
        """Fill ``dest`` from ``off``; a short read retries, EOF raises."""
        if self._needs_bounce(dest):
            bounce = self._bounce()
            pos = 0
            while pos < len(dest):
                k = min(len(dest) - pos, len(bounce))
                self._read_into(off + pos, bounce[:k])
                dest[pos : pos + k] = bounce[:k]
                pos += k
            return
        pos = 0
        n = len(dest)
        while pos < n:
            got = os.preadv(self.fd, [dest[pos:]], off + pos)
            if got <= 0:
                raise OSError(f"short read: {pos} of {n} bytes at offset {off} (end of file)")
            pos += got

    def _write_from(self, off: int, data: memoryview, fua: bool) -> None:
        """Write all of ``data`` at ``off`` (durable with ``fua``); a short
        write retries the remainder, no progress raises."""
        if self._needs_bounce(data):
            bounce = self._bounce()
            pos = 0
            while pos < len(data):
                k = min(len(data) - pos, len(bounce))
                bounce[:k] = data[pos : pos + k]
                self._write_from(off + pos, bounce[:k], fua)
                pos += k
            return
        flags = os.RWF_DSYNC if fua else 0
        while len(data):
            n = os.pwritev(self.fd, [data], off, flags)
            if n <= 0:
                raise OSError(f"short write: no progress at offset {off}")
            data = data[n:]
            off += n

    def _pread(
        self, off: int, n: int, into: memoryview | None
    ) -> tuple[IoStatus, memoryview | None]:
        dest = into[:n] if into is not None else memoryview(bytearray(n))
        try:
            self._read_into(off, dest)
        except OSError as e:
            log.debug("aio bdev %s: read failed: %s", self.bdev.name, e)
            return IoStatus.FAILED, None
        return IoStatus.SUCCESS, dest

    def _pwrite(self, off: int, data: memoryview, fua: bool) -> tuple[IoStatus]:
        held = self.locks.lock(self.key, off, off + len(data))
        try:
            self._write_from(off, data, fua)
        except OSError as e:
            log.debug("aio bdev %s: write failed: %s", self.bdev.name, e)
            return (IoStatus.FAILED,)
        finally:
            self.locks.unlock(held)
        return (IoStatus.SUCCESS,)

    def _compare(self, off: int, data: memoryview) -> tuple[IoStatus, int]:
        cur = self._scratch(len(data))
        held = self.locks.lock(self.key, off, off + len(data))
        try:
            self._read_into(off, cur)
        except OSError:
            return (IoStatus.FAILED, -1)
        finally:
            self.locks.unlock(held)
        d = first_difference(cur, data)
        return (IoStatus.MISCOMPARE if d >= 0 else IoStatus.SUCCESS, d)

    def _caw(self, off: int, cmp: memoryview, write: memoryview, fua: bool) -> tuple[IoStatus, int]:
        """Compare and write under the range lock, in one worker: atomic
        against every write from every reactor to the range."""
        cur = self._scratch(len(cmp))
        held = self.locks.lock(self.key, off, off + len(write))
        try:
            self._read_into(off, cur)
            d = first_difference(cur, cmp)
            if d >= 0:
                return (IoStatus.MISCOMPARE, d)
            self._write_from(off, write, fua)
        except OSError as e:
            log.debug("aio bdev %s: compare-and-write failed: %s", self.bdev.name, e)
            return (IoStatus.FAILED, -1)
        finally:
            self.locks.unlock(held)
        return (IoStatus.SUCCESS, -1)

    def _fsync(self) -> tuple[IoStatus]:
        try:
            os.fdatasync(self.fd)
        except OSError:
            return (IoStatus.FAILED,)
        return (IoStatus.SUCCESS,)

    def _zero(self, off: int, n: int) -> tuple[IoStatus]:
        if self.direct:
            chunk = self._bounce()
            chunk[:] = _ZEROS[: len(chunk)]
        else:
            chunk = _ZEROS
        while n:
            k = min(n, len(chunk))
            (st,) = self._pwrite(off, chunk[:k], False)
            if st:
                return (st,)
            off += k
            n -= k
        return (IoStatus.SUCCESS,)

    # -- IoChannel hooks ----------------------------------------------------
    def _do_read(
        self, offset_blocks: int, num_blocks: int, cb: ReadCallback, into: memoryview | None = None
    ) -> None:
        bs = self.bs
        self._submit(self._pread, cb, _READ_FAIL, offset_blocks * bs, num_blocks * bs, into)

    def _do_write(
        self, offset_blocks: int, data: memoryview, cb: Callback, fua: bool = False
    ) -> None:
        self._submit(self._pwrite, cb, _FAIL, offset_blocks * self.bs, data, fua)

    def _do_compare(self, offset_blocks: int, data: memoryview, cb: CompareCallback) -> None:
        self._submit(self._compare, cb, _CMP_FAIL, offset_blocks * self.bs, data)

    def _do_compare_and_write(
        self,
        offset_blocks: int,
        compare: memoryview,
        write: memoryview,
        cb: CompareCallback,
        fua: bool,
    ) -> None:
        self._submit(self._caw, cb, _CMP_FAIL, offset_blocks * self.bs, compare, write, fua)

    def _do_flush(self, cb: Callback) -> None:
        self._submit(self._fsync, cb, _FAIL)

    def _do_write_zeroes(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        self._submit(self._zero, cb, _FAIL, offset_blocks * self.bs, num_blocks * self.bs)

    def close(self) -> None:
        self.removed = True
        self._closing = True
        if self.in_flight == 0:
            self._finish_close()

    def _finish_close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False)
            self.pool = None
        if self.efd >= 0 and self.loop is not None:
            self.loop.remove_fd(self.efd)
            os.close(self.efd)
            self.efd = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class AioBdev(Bdev):
    MODULE = "aio"
    PRODUCT = "AIO disk"

    def _description(self) -> dict[str, Any]:
        return {"filename": self.filename, "direct": self.direct, "instance": self.instance}

    def _restore(self, d: dict[str, Any]) -> None:
        self.filename = d["filename"]
        self.direct = bool(d.get("direct", False))
        self.instance = str(d.get("instance") or "")

    filename: str = ""
    direct: bool = False
    instance: str = ""  # whose range-lock stripes to use ("" = process-local)
    _retained: bool = False

    @classmethod
    def create(
        cls,
        name: str,
        filename: str,
        block_size: int | None = None,
        uuid: str | None = None,
        direct: bool = False,
        instance: str | None = None,
    ) -> AioBdev:
        try:
            st = os.stat(filename)
        except OSError as e:
            raise ValueError(f"cannot open {filename}: {e.strerror}") from None
        if stat.S_ISBLK(st.st_mode):
            fd = os.open(filename, os.O_RDONLY)
            try:
                size = os.lseek(fd, 0, os.SEEK_END)
            finally:
                os.close(fd)
        elif stat.S_ISREG(st.st_mode):
            size = st.st_size
        else:
            raise ValueError(f"{filename} is neither a regular file nor a block device")
        bs = block_size or 512
        if bs not in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536):
            raise ValueError(f"block_size {bs} is not a power of two between 512 and 65536")
        if size < bs:
            raise ValueError(f"{filename} is smaller than one block ({size} bytes)")
        if not os.access(filename, os.R_OK | os.W_OK):
            raise ValueError(f"{filename} is not readable and writable")
        if direct:
            try:
                os.close(os.open(filename, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC))
            except OSError as e:
                raise ValueError(f"cannot open {filename} with O_DIRECT: {e.strerror}") from None
        kw: dict[str, Any] = {"uuid": uuid} if uuid else {}
        b = cls(name=name, block_size=bs, num_blocks=size // bs, product_name=cls.PRODUCT, **kw)
        b.filename = filename
        b.direct = direct
        b.create_method = "bdev_aio_create"
        b.create_params = {"name": name, "filename": filename, "block_size": bs}
        if direct:
            b.create_params["direct"] = True
        if instance:
            StripeLocks.retain(instance)
            b.instance = instance
            b._retained = True
        return b

    def open_channel(self, loop: Any = None) -> IoChannel:
        return AioChannel(self, loop)

    def vanished(self) -> bool:
        """True once the backing file was deleted (hot-remove trigger)."""
        try:
            return os.stat(self.filename).st_nlink == 0
        except OSError:
            return True

    def destroy(self) -> None:
        if self._retained:
            self._retained = False
            StripeLocks.unretain(self.instance)

    def driver_specific(self) -> dict[str, Any]:
        return {
            "aio": {
                "filename": self.filename,
                "block_size_override": True,
                "readonly": False,
                "direct": self.direct,
            }
        }
