"""Rate-limited logging of errors a host causes (malformed PDUs, refusals).

A hostile or buggy host must not be able to fill the disk through our log:
each connection (or any other key) logs its first `burst` events in full,
then one summary line per `interval` seconds with the number suppressed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class HostLog:
    """Per-connection rate limiter in front of a `logging.Logger`."""

    __slots__ = ("log", "burst", "interval", "_count", "_suppressed", "_last", "_clock", "what")

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        burst: int = 5,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.what = what  # e.g. "nvmf/tcp 127.0.0.1:51234"
        self.burst = burst
        self.interval = interval
        self._count = 0
        self._suppressed = 0
        self._last = 0.0
        self._clock = clock

    def event(self, level: int, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log ``msg`` unless this key is over its budget; True if it was logged."""
        self._count += 1
        if self._count <= self.burst:
            self.log.log(level, "%s: " + msg, self.what, *args, exc_info=exc_info)
            if self._count == self.burst:
                self._last = self._clock()
            return True
        now = self._clock()
        self._suppressed += 1
        if now - self._last >= self.interval:
            self.log.log(
                level,
                "%s: %d more host errors in the last %.0f s (latest: " + msg + ")",
                self.what,
                self._suppressed,
                now - self._last,
                *args,
            )
            self._suppressed = 0
            self._last = now
            return True
        return False

    def close(self) -> None:
        """Flush the suppressed count (call when the connection goes)."""
        if self._suppressed:
            self.log.log(logging.INFO, "%s: %d host errors not logged", self.what, self._suppressed)
            self._suppressed = 0
