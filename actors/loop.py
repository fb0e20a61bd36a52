"""The reactor's event loop: epoll readiness, timers and pollers in one thread.

Why not asyncio: the data path wants direct control of when the loop blocks.
On these virtual machines a vCPU that goes idle and is woken loses most of the
wake-up to the hypervisor, so the loop spins on a zero-timeout epoll for a
while before blocking (adaptive polling). Three modes:

* ``adaptive`` (default): spin for ``spin_us`` after the last event, then block.
* ``busy``: never block (what SPDK's reactors do; for benchmarks).
* ``blocking``: always block in epoll_wait (idle systems, lowest CPU).

Callbacks run to completion; a slow callback delays the whole reactor, so I/O
that can block (files) goes to worker threads that report back via an eventfd.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP

POLL_MODES = ("adaptive", "busy", "blocking")


def _noop() -> None:
    pass


class TimerHandle:
    __slots__ = ("when", "seq", "cb", "cancelled")

    def __init__(self, when: float, seq: int, cb: Callable[[], Any]) -> None:
        self.when = when
        self.seq = seq
        self.cb = cb
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        # drop the callback now: it may hold a closed connection (and its
        # buffers) that would otherwise stay alive until the timer's time
        self.cb = _noop

    def __lt__(self, other: TimerHandle) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


class EventLoop:
    def __init__(self, poll_mode: str = "adaptive", spin_us: int = 200) -> None:
        if poll_mode not in POLL_MODES:
            raise ValueError(f"poll mode must be one of {POLL_MODES}")
        self.poll_mode = poll_mode
        self.spin_s = spin_us / 1e6
        self._ep = select.epoll()
        self._handlers: dict[int, Callable[[int], Any]] = {}
        self._masks: dict[int, int] = {}
        self._timers: list[TimerHandle] = []
        self._seq = itertools.count()
        self._pollers: list[Callable[[], int]] = []
        self._soon: list[Callable[[], Any]] = []
        self._stopping = False
        # statistics for framework_get_reactors / status
        self.busy_polls = 0
        self.idle_polls = 0
        self.blocks = 0

    # --- file descriptors ---------------------------------------------------
    def add_fd(self, fd: int, mask: int, handler: Callable[[int], Any]) -> None:
        """Call ``handler(events)`` whenever fd is ready for ``mask``."""
        self._handlers[fd] = handler
        self._masks[fd] = mask
        self._ep.register(fd, mask)

    def modify_fd(self, fd: int, mask: int) -> None:
        if self._masks.get(fd) != mask:
            self._masks[fd] = mask
            self._ep.modify(fd, mask)

    def remove_fd(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            self._masks.pop(fd, None)
            try:
                self._ep.unregister(fd)
            except (OSError, ValueError):
                pass

    # --- timers, pollers, deferred calls ------------------------------------
    def call_later(self, delay: float, cb: Callable[[], Any]) -> TimerHandle:
        h = TimerHandle(time.monotonic() + delay, next(self._seq), cb)
        heapq.heappush(self._timers, h)
        return h

    def call_soon(self, cb: Callable[[], Any]) -> None:
        """Run cb on the next loop iteration (after the current callback)."""
        self._soon.append(cb)

    def add_poller(self, fn: Callable[[], int]) -> None:
        """fn() runs on every iteration and returns the amount of work it did
        (0 = idle); pollers keep an adaptive loop spinning while they work."""
        self._pollers.append(fn)

    def remove_poller(self, fn: Callable[[], int]) -> None:
        if fn in self._pollers:
            self._pollers.remove(fn)

    def stop(self) -> None:
        self._stopping = True

    # --- the loop -----------------------------------------------------------
    def _run_timers(self, now: float) -> int:
        n = 0
        timers = self._timers
        while timers and timers[0].when <= now:
            h = heapq.heappop(timers)
            if not h.cancelled:
                n += 1
                self._safe(h.cb)
        return n

    def _safe(self, cb: Callable[..., Any], *args: Any) -> None:
        try:
            cb(*args)
        except Exception:  # one failing handler must not stop the reactor
            log.exception("reactor callback failed")

    def run_once(self, timeout: float) -> int:
        work = 0
        if self._soon:
            soon, self._soon = self._soon, []
            for cb in soon:
                self._safe(cb)
            work += len(soon)
            timeout = 0
        events = self._ep.poll(timeout)
        handlers = self._handlers
        for fd, ev in events:
            h = handlers.get(fd)
            if h is not None:
                try:
                    h(ev)
                except Exception:
                    log.exception("fd %d handler failed", fd)
        work += len(events)
        for p in self._pollers:
            try:
                work += p()
            except Exception:
                log.exception("poller failed")
        if self._timers:
            work += self._run_timers(time.monotonic())
        return work

    def _next_timeout(self, now: float, cap: float) -> float:
        if self._soon:
            return 0
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        if self._timers:
            return max(0.0, min(cap, self._timers[0].when - now))
        return cap

    def _run_busy(self) -> None:
        """run_once(0) in a tight loop (busy mode): the same steps with the
        lookups hoisted, because this loop's period adds to every I/O's
        latency. Returns when the mode changes or the loop stops."""
        poll = self._ep.poll
        handlers = self._handlers
        pollers = self._pollers
        timers = self._timers
        monotonic = time.monotonic
        sched_yield = os.sched_yield
        n = idle = 0
        while not self._stopping and self.poll_mode == "busy":
            if self._soon:
                soon, self._soon = self._soon, []
                for cb in soon:
                    self._safe(cb)
            events = poll(0)
            for fd, ev in events:
                h = handlers.get(fd)
                if h is not None:
                    try:
                        h(ev)
                    except Exception:
                        log.exception("fd %d handler failed", fd)
            work = len(events)
            for p in pollers:
                try:
                    work += p()
                except Exception:
                    log.exception("poller failed")
            if work:
                idle = 0
            else:
                # Threads pinned to this core (ZeroMQ's I/O thread, aio
                # workers) only run when the spinner steps aside. Yielding on
                # every idle turn costs ~20% of 4 KiB IOPS; every 64th turn
                # (~100 us) keeps their latency bounded at no measurable cost.
                idle += 1
                if not idle & 63:
                    sched_yield()
            if timers and timers[0].when <= monotonic():
                self._run_timers(monotonic())
            n += 1
            if n == 1024:
                self.busy_polls += n
                n = 0
        self.busy_polls += n

    def run(self) -> None:
        last_work = time.monotonic()
        self._stopping = False
        while not self._stopping:
            mode = self.poll_mode
            if mode == "busy":
                self._run_busy()
                continue
            now = time.monotonic()
            if mode == "adaptive" and now - last_work < self.spin_s:
                timeout = 0.0
            else:
                # pollers need a regular turn even when nothing is ready
                timeout = self._next_timeout(now, 0.05 if self._pollers else 1.0)
                self.blocks += 1
            if self.run_once(timeout):
                last_work = time.monotonic()
                self.busy_polls += 1
            else:
                self.idle_polls += 1

    def close(self) -> None:
        self._ep.close()


def make_eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
