"""One running process tree per instance name: an flock on RUN_DIR/<instance>.lock.

flock locks belong to the open file description, so the kernel drops the lock
when the last holder dies, even on SIGKILL: a stale lock file never blocks a
restart. Children created with fork() share the description and keep the
instance "held" while they live, which is what cleanup should see.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from . import names


class InstanceRunningError(RuntimeError):
    def __init__(self, instance: str, pid: int | None) -> None:
        self.instance = instance
        self.pid = pid
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"instance {instance!r} is already running ({who})")


def lock_path(instance: str) -> Path:
    return names.run_dir() / f"{names.validate_instance(instance)}.lock"


def _read_pid(fd: int) -> int | None:
    try:
        data = os.pread(fd, 32, 0)
        return int(data.decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


class InstanceLock:
    def __init__(self, instance: str) -> None:
        self.instance = names.validate_instance(instance)
        self.path = lock_path(instance)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> InstanceLock:
        if self._fd is not None:
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise InstanceRunningError(self.instance, pid) from None
            # A releaser (or cleanup) may have unlinked the file between our
            # open() and flock(): then we locked an orphan inode; start over.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # Unlink while still holding the lock so nobody can lock this inode
        # after us and believe it owns the instance (see acquire()).
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(fd)

    def __enter__(self) -> InstanceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    @staticmethod
    def is_held(instance: str) -> bool:
        """True if some process holds the instance lock (this one included)."""
        try:
            fd = os.open(lock_path(instance), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError as e:  # pragma: no cover - e.g. ENOLCK on odd filesystems
            if e.errno == errno.ENOLCK:
                return False
            raise
        finally:
            os.close(fd)  # closing also drops our shared lock
        return False

    @staticmethod
    def holder_pid(instance: str) -> int | None:
        """The pid written by the holder, or None (no file, or not held)."""
        try:
            fd = os.open(lock_path(instance), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            return _read_pid(fd)
        finally:
            os.close(fd)
