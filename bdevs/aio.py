"""aio bdev: a file or block device, served by worker threads.

Python has no io_uring or Linux AIO binding in the standard library, and the
design card allows no extra dependency for it, so file I/O runs on a small pool
of threads per reactor (os.preadv/os.pwritev release the GIL). Completions go
back to the reactor through a deque plus an eventfd the loop watches, so the
reactor never blocks on the disk. Without a loop (tests, the supervisor) I/O
completes synchronously.
"""

from __future__ import annotations

import collections
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .base import Bdev, Callback, IoChannel, IoStatus, ReadCallback

AIO_THREADS = 4


class AioChannel(IoChannel):
    def __init__(self, bdev: AioBdev, loop: Any) -> None:
        super().__init__(bdev)
        self.bs = bdev.block_size
        self.fd = os.open(bdev.filename, os.O_RDWR | os.O_CLOEXEC)
        self.loop = loop
        self.pool: ThreadPoolExecutor | None = None
        self.efd = -1
        self.done: collections.deque[tuple[Any, ...]] = collections.deque()
        self._closing = False
        if loop is not None:
            from ..actors.loop import EPOLLIN, make_eventfd

            self.pool = ThreadPoolExecutor(AIO_THREADS, thread_name_prefix=f"aio-{bdev.name}")
            self.efd = make_eventfd()
            loop.add_fd(self.efd, EPOLLIN, self._on_completions)

    # -- worker side ------------------------------------------------------
    def _submit(self, fn: Any, cb: Any, *args: Any) -> None:
        if self.pool is None:
            cb(*fn(*args))
            return
        self.in_flight += 1

        def work() -> None:
            res = fn(*args)
            self.done.append((cb, res))
            os.eventfd_write(self.efd, 1)

        self.pool.submit(work)

    def _on_completions(self, _ev: int) -> None:
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            pass
        done = self.done
        while done:
            cb, res = done.popleft()
            self.in_flight -= 1
            cb(*res)
        if self._closing and self.in_flight == 0:
            self._finish_close()

    def _pread(self, off: int, n: int) -> tuple[IoStatus, memoryview | None]:
        buf = bytearray(n)
        try:
            got = os.preadv(self.fd, [buf], off)
        except OSError:
            return IoStatus.FAILED, None
        if got < n:  # file shorter than the bdev: the rest reads as zeroes
            pass
        return IoStatus.SUCCESS, memoryview(buf)

    def _pwrite(self, off: int, data: memoryview) -> tuple[IoStatus]:
        try:
            while len(data):
                n = os.pwritev(self.fd, [data], off)
                data = data[n:]
                off += n
        except OSError:
            return (IoStatus.FAILED,)
        return (IoStatus.SUCCESS,)

    def _fsync(self) -> tuple[IoStatus]:
        try:
            os.fdatasync(self.fd)
        except OSError:
            return (IoStatus.FAILED,)
        return (IoStatus.SUCCESS,)

    def _zero(self, off: int, n: int) -> tuple[IoStatus]:
        chunk = memoryview(bytes(min(n, 1 << 20)))
        while n:
            k = min(n, len(chunk))
            (st,) = self._pwrite(off, chunk[:k])
            if st:
                return (st,)
            off += k
            n -= k
        return (IoStatus.SUCCESS,)

    # -- IoChannel hooks ----------------------------------------------------
    def _do_read(self, offset_blocks: int, num_blocks: int, cb: ReadCallback) -> None:
        self._submit(self._pread, cb, offset_blocks * self.bs, num_blocks * self.bs)

    def _do_write(self, offset_blocks: int, data: memoryview, cb: Callback) -> None:
        self._submit(self._pwrite, cb, offset_blocks * self.bs, data)

    def _do_flush(self, cb: Callback) -> None:
        self._submit(self._fsync, cb)

    def _do_write_zeroes(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        self._submit(self._zero, cb, offset_blocks * self.bs, num_blocks * self.bs)

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
        return {"filename": self.filename}

    def _restore(self, d: dict[str, Any]) -> None:
        self.filename = d["filename"]

    filename: str = ""

    @classmethod
    def create(
        cls, name: str, filename: str, block_size: int | None = None, uuid: str | None = None
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
        kw: dict[str, Any] = {"uuid": uuid} if uuid else {}
        b = cls(name=name, block_size=bs, num_blocks=size // bs, product_name=cls.PRODUCT, **kw)
        b.filename = filename
        b.create_method = "bdev_aio_create"
        b.create_params = {"name": name, "filename": filename, "block_size": bs}
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
        pass

    def driver_specific(self) -> dict[str, Any]:
        return {"aio": {"filename": self.filename, "block_size_override": True, "readonly": False}}
