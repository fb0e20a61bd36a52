"""The event-loop interface that code above the reactor is written against.

bdevs (aio completions, NVMe-oF host queues), transports (NVMe/TCP, iSCSI
drivers) and the control server register fds, timers and deferred calls on a
loop they are given; they never import the reactor that owns it. The one
implementation is `blockfabric.actors.loop.EventLoop`; these are the parts of
it the lower layers may rely on.

The epoll masks are the kernel's values (``select.EPOLL*``), re-exported by
actors/loop.py so both names stay valid.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable
from typing import Any, Protocol

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP

FdHandler = Callable[[int], Any]  # handler(events); the return value is ignored
ErrorHook = Callable[[BaseException], Any]


def make_eventfd() -> int:
    """A non-blocking, close-on-exec eventfd (worker threads wake the loop with it)."""
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


class Timer(Protocol):
    """What ``call_later``/``call_every`` return: cancel() stops it (idempotent)."""

    def cancel(self) -> None: ...


class Loop(Protocol):
    """Readiness, timers and deferred calls on one thread (actors/loop.py)."""

    def add_fd(
        self, fd: int, mask: int, handler: FdHandler, on_error: ErrorHook | None = None
    ) -> None:
        """Call ``handler(events)`` whenever fd is ready for ``mask``; if it
        raises, ``on_error(exc)`` (default: the handler's owner's
        ``on_loop_error``) should close the connection concerned."""
        ...

    def modify_fd(self, fd: int, mask: int) -> None: ...

    def remove_fd(self, fd: int) -> None:
        """Forget fd (no error if it is not registered)."""
        ...

    def call_later(self, delay: float, cb: Callable[[], Any]) -> Timer: ...

    def call_every(self, interval: float, cb: Callable[[], Any]) -> Timer:
        """Run ``cb`` every ``interval`` seconds until cancelled, even when it raises."""
        ...

    def call_soon(self, cb: Callable[[], Any]) -> None:
        """Run ``cb`` on the next loop iteration, after the current callback."""
        ...

    def add_poller(self, fn: Callable[[], int]) -> None:
        """``fn()`` runs on every iteration and returns the work it did (0 = idle)."""
        ...

    def remove_poller(self, fn: Callable[[], int]) -> None: ...
