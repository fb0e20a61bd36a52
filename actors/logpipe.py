"""Log output of every process of an instance through one capped, rotated file.

Only the supervisor writes the log file (a `logging.handlers.RotatingFileHandler`
when ``--log-file`` is given, stderr otherwise), so rotation is never raced.
Each reactor writes its formatted records to a pipe (its fd 2, non-blocking);
the supervisor reads every reactor's pipe from its event loop and passes each
line, unchanged, to its own handlers.

A reactor never blocks on logging: when its pipe is full (the supervisor is
busy) the record is dropped and counted, and the next record that fits is
preceded by a line saying how many were dropped. A line longer than
`MAX_LINE` is cut, so the supervisor's buffer per reactor is bounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import logging.handlers
import os
import sys

MAX_LINE = 16 * 1024
PIPE_SIZE = 1 << 20  # asked for; the kernel may give less (pipe-max-size)
F_SETPIPE_SZ = 1031
DEFAULT_LOG_MAX_MB = 64.0
DEFAULT_LOG_COUNT = 4


class RawFormatter(logging.Formatter):
    """Formats records as usual, except lines forwarded from a reactor, which
    are already formatted."""

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "bf_raw", False):
            return record.getMessage()
        return super().format(record)


def make_handler(
    log_file: str | None,
    max_mb: float = DEFAULT_LOG_MAX_MB,
    count: int = DEFAULT_LOG_COUNT,
) -> logging.Handler:
    """The supervisor's handler: a size-capped rotating file, or stderr."""
    h: logging.Handler
    if log_file:
        h = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max(4096, int(max_mb * 1024 * 1024)), backupCount=max(0, count)
        )
    else:
        h = logging.StreamHandler(sys.stderr)
    h.setFormatter(RawFormatter("%(asctime)s supervisor %(levelname)s %(name)s: %(message)s"))
    return h


def make_pipe() -> tuple[int, int]:
    """(read end for the supervisor, write end for the reactor)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
    os.set_blocking(r, False)
    return r, w


class PipeHandler(logging.Handler):
    """A reactor's handler: one ``write`` per record to a non-blocking fd;
    drops (and counts) records when the pipe is full."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record)[:MAX_LINE] + "\n").encode("utf-8", "replace")
        except Exception:
            return
        if self.dropped:
            note = f"(reactor log: {self.dropped} record(s) dropped, log pipe full)\n".encode()
            try:
                os.write(self.fd, note)
                self.dropped = 0
            except OSError:
                self.dropped += 1
                return
        try:
            os.write(self.fd, data)
        except BlockingIOError:
            self.dropped += 1
        except OSError:
            pass


def reactor_logging(log_fd: int, level: str, fmt: str) -> PipeHandler | None:
    """In a reactor: make ``log_fd`` its stderr (fatal tracebacks go the same
    way) and log through a `PipeHandler` on it. -1: plain stderr."""
    if log_fd < 0:
        logging.basicConfig(level=level, stream=sys.stderr, format=fmt)
        return None
    os.dup2(log_fd, 2)
    if log_fd != 2:
        os.close(log_fd)
    os.set_blocking(2, False)
    h = PipeHandler(2)
    h.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [h]
    root.setLevel(level)
    return h


class PipeReader:
    """Supervisor side of one reactor's log pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._partial = b""
        self.lines = 0

    def read(self) -> bool:
        """Read what is there and forward complete lines; False at EOF."""
        for _ in range(16):  # bounded work per wake-up
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                if self._partial:
                    self._emit(self._partial)
                    self._partial = b""
                return False
            buf = self._partial + data
            *lines, rest = buf.split(b"\n")
            for ln in lines:
                self._emit(ln)
            if len(rest) > MAX_LINE:
                self._emit(rest[:MAX_LINE] + b" [cut]")
                rest = b""
            self._partial = rest
        return True

    def _emit(self, line: bytes) -> None:
        self.lines += 1
        forward_line(line.decode("utf-8", "replace")[:MAX_LINE])


def forward_line(text: str) -> None:
    rec = logging.LogRecord("blockfabric.reactorlog", logging.INFO, "", 0, text, None, None)
    rec.bf_raw = True
    handlers = logging.getLogger().handlers
    if not handlers:
        sys.stderr.write(text + "\n")
        return
    for h in handlers:
        h.handle(rec)
