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

Failure containment: an exception in one timer, poller, deferred call or fd
handler never stops the others. The loop counts it (``callback_errors``) and
logs its traceback rate-limited per callback (the first `ERR_BURST` in full,
then one line with a count every `ERR_PERIOD_S`), so a callback that fails on
every turn cannot flood the log. For an fd handler the loop then calls the
owner's error hook, so the owner closes only the connection concerned:

* ``add_fd(fd, mask, handler, on_error=hook)``: ``hook(exc)``, or
* a handler that is a bound method of an object with ``on_loop_error(exc)``.

A periodic job should use ``call_every``: it is re-armed even when the
callback raises (a self re-arming ``call_later`` chain ends at its first
exception).
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

# the interface lower layers use lives in runtime/loop.py (EventLoop implements
# its `Loop` Protocol); the names are re-exported here for the actors
from ..runtime.loop import EPOLLERR as EPOLLERR
from ..runtime.loop import EPOLLHUP as EPOLLHUP
from ..runtime.loop import EPOLLIN as EPOLLIN
from ..runtime.loop import EPOLLOUT as EPOLLOUT
from ..runtime.loop import make_eventfd as make_eventfd

log = logging.getLogger(__name__)

POLL_MODES = ("adaptive", "busy", "blocking")
ERR_BURST = 3  # tracebacks logged in full per callback ...
ERR_PERIOD_S = 10.0  # ... then one summary line per period


def _cb_name(cb: Any) -> str:
    name = getattr(cb, "__qualname__", None) or type(cb).__qualname__
    mod = getattr(cb, "__module__", "") or ""
    return f"{mod}.{name}" if mod else str(name)


class _ErrLog:
    """Rate limit for callback tracebacks, per callback name (bounded)."""

    MAX_KEYS = 1024

    def __init__(self) -> None:
        self._seen: dict[str, list[float]] = {}  # name -> [count, suppressed, last_summary]

    def report(self, what: str, cb: Any) -> None:
        name = _cb_name(cb)
        st = self._seen.get(name)
        if st is None:
            if len(self._seen) >= self.MAX_KEYS:
                self._seen.clear()
            st = self._seen[name] = [0, 0, 0.0]
        st[0] += 1
        if st[0] <= ERR_BURST:
            log.exception("%s %s failed", what, name)
            return
        st[1] += 1
        now = time.monotonic()
        if now - st[2] >= ERR_PERIOD_S:
            log.error(
                "%s %s failed again (%d more failure(s) not logged in full, %d in all)",
                what, name, int(st[1]), int(st[0]),
            )  # fmt: skip
            st[1] = 0
            st[2] = now


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
        self._on_error: dict[int, Callable[[BaseException], Any]] = {}
        self._masks: dict[int, int] = {}
        self._errlog = _ErrLog()
        self.callback_errors = 0
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
    def add_fd(
        self,
        fd: int,
        mask: int,
        handler: Callable[[int], Any],
        on_error: Callable[[BaseException], Any] | None = None,
    ) -> None:
        """Call ``handler(events)`` whenever fd is ready for ``mask``. If the
        handler raises, ``on_error(exc)`` runs (default: the handler's owner's
        ``on_loop_error`` when it has one); it should close the connection."""
        self._handlers[fd] = handler
        if on_error is None:
            on_error = getattr(getattr(handler, "__self__", None), "on_loop_error", None)
        if on_error is not None:
            self._on_error[fd] = on_error
        else:
            self._on_error.pop(fd, None)
        self._masks[fd] = mask
        self._ep.register(fd, mask)

    def modify_fd(self, fd: int, mask: int) -> None:
        if self._masks.get(fd) != mask:
            self._masks[fd] = mask
            self._ep.modify(fd, mask)

    def remove_fd(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            self._masks.pop(fd, None)
            self._on_error.pop(fd, None)
            try:
                self._ep.unregister(fd)
            except (OSError, ValueError):
                pass

    # --- timers, pollers, deferred calls ------------------------------------
    def call_later(self, delay: float, cb: Callable[[], Any]) -> TimerHandle:
        h = TimerHandle(time.monotonic() + delay, next(self._seq), cb)
        heapq.heappush(self._timers, h)
        return h

    def call_every(self, interval: float, cb: Callable[[], Any]) -> TimerHandle:
        """Run ``cb`` every ``interval`` seconds until the returned handle is
        cancelled; an exception in ``cb`` is logged and does not end it."""
        if interval <= 0:
            raise ValueError("interval must be > 0")
        first = TimerHandle(0.0, 0, cb)  # the handle the caller cancels

        def tick() -> None:
            if first.cancelled:
                return
            try:
                cb()
            finally:
                if not first.cancelled:
                    h = self.call_later(interval, tick)
                    first.when, first.seq = h.when, h.seq

        h = self.call_later(interval, tick)
        first.when, first.seq = h.when, h.seq
        return first

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
            self._callback_failed(cb)

    def _callback_failed(self, cb: Callable[..., Any]) -> None:
        self.callback_errors += 1
        self._errlog.report("callback", cb)

    def _run_soon(self) -> None:
        """The deferred calls queued so far (not those they queue). The try
        is inline, not a `_safe` call per callback: every flush of every
        connection comes through here."""
        soon, self._soon = self._soon, []
        for cb in soon:
            try:
                cb()
            except Exception:  # one failing callback must not stop the others
                self._callback_failed(cb)

    def _fd_failed(self, fd: int, h: Callable[[int], Any], exc: BaseException) -> None:
        self.callback_errors += 1
        self._errlog.report(f"fd {fd} handler", h)
        hook = self._on_error.get(fd)
        if hook is not None:
            try:
                hook(exc)
            except Exception:
                self._errlog.report(f"fd {fd} error hook", hook)

    def _poller_failed(self, p: Callable[[], int]) -> None:
        self.callback_errors += 1
        self._errlog.report("poller", p)

    def run_once(self, timeout: float) -> int:
        work = 0
        if self._soon:
            work += len(self._soon)
            self._run_soon()
            timeout = 0
        events = self._ep.poll(timeout)
        handlers = self._handlers
        for fd, ev in events:
            h = handlers.get(fd)
            if h is not None:
                try:
                    h(ev)
                except Exception as e:
                    self._fd_failed(fd, h, e)
        work += len(events)
        for p in self._pollers:
            try:
                work += p()
            except Exception:
                self._poller_failed(p)
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
                self._run_soon()
            events = poll(0)
            for fd, ev in events:
                h = handlers.get(fd)
                if h is not None:
                    try:
                        h(ev)
                    except Exception as e:
                        self._fd_failed(fd, h, e)
            work = len(events)
            for p in pollers:
                try:
                    work += p()
                except Exception:
                    self._poller_failed(p)
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
