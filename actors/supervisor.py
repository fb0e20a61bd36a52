"""The supervisor process: starts, watches and stops the reactors; owns the
configuration, the listening sockets, the RPC server and every shared-memory
object of the instance.

It is itself an actor with an event loop (blocking mode: it is not on the data
path). Reactors reach it with typed messages on a ZeroMQ ROUTER socket; it
answers RPCs; it accepts TCP connections and hands each to a reactor over a
Unix socketpair (SCM_RIGHTS), round-robin per protocol.

Supervision: a reactor that dies (or stops answering the heartbeat for
``heartbeat_timeout_s`` and is SIGKILLed) is reaped, its state is dropped
(NVMe-oF controllers it hosted, its pool buffers) and it is restarted on its
core, at most ``max_restarts`` times in ``restart_window_s`` per reactor;
beyond that the target stops (exit 1). Connections on other reactors are
untouched.

Shutdown (SIGTERM/SIGINT, or restart policy exhausted): stop accepting, tell
reactors to close their connections and exit (SIGKILL after a grace period),
destroy bdev segments and the buffer pool, remove the manifest, release the
instance lock. Nothing of the instance stays in /dev/shm.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from ..bdevs.base import Bdev
from ..control.context import SUPERVISOR_OPS
from ..control.errors import INTERNAL_ERROR, RpcError
from ..control.registry import OUT_DICT, REGISTRY, Param, rpc_method
from ..shm import names
from ..shm import trace as tr
from ..shm.lock import InstanceLock
from ..shm.manifest import Manifest
from ..shm.pool import LARGE_SIZE, SMALL_SIZE, BufferPool
from ..shm.segment import SharedSegment
from . import messages as m
from .fdpass import Handoff, recv_fd, send_fd
from .logpipe import DEFAULT_LOG_COUNT, DEFAULT_LOG_MAX_MB, PipeReader, make_handler, make_pipe
from .loop import EPOLLIN, EventLoop

log = logging.getLogger("blockfabric.supervisor")

# BLOCKFABRIC_REACTOR_START_TIMEOUT: slow emulated machines (QEMU TCG guests)
REACTOR_START_TIMEOUT = float(os.environ.get("BLOCKFABRIC_REACTOR_START_TIMEOUT", "20"))
REACTOR_STOP_GRACE = 5.0
REQUEST_TIMEOUT = 10.0
DEFAULT_MAX_RESTARTS = 3
DEFAULT_RESTART_WINDOW_S = 60.0
DEFAULT_HEARTBEAT_S = 1.0
DEFAULT_HEARTBEAT_TIMEOUT_S = 10.0


def default_pool_mb(nreactors: int) -> int:
    """Pool size without -s: 64 MiB, or 16 MiB per reactor beyond 4."""
    return max(64, 16 * nreactors)


class StartupError(RuntimeError):
    pass


def _new_state(module: str, cls: str) -> Any:
    import importlib

    return getattr(importlib.import_module(module), cls)()


def parse_core_mask(mask: str) -> list[int]:
    """SPDK accepts 0x3, 3, or a list [0,1,4-5]."""
    mask = mask.strip()
    cores: list[int] = []
    try:
        if mask.startswith("["):
            for part in mask.strip("[]").split(","):
                part = part.strip()
                if "-" in part:
                    a, b = part.split("-", 1)
                    cores.extend(range(int(a), int(b) + 1))
                elif part:
                    cores.append(int(part))
        else:
            v = int(mask, 16)
            cores = [i for i in range(v.bit_length()) if v >> i & 1]
    except ValueError:
        raise StartupError(f"invalid core mask {mask!r}: use hex (0x3) or a list ([0,1])") from None
    if not cores:
        raise StartupError(f"core mask {mask!r} selects no CPU")
    allowed = os.sched_getaffinity(0)
    bad = sorted(set(cores) - allowed)
    if bad:
        raise StartupError(
            f"core mask {mask!r} names CPU {', '.join(map(str, bad))}, which this process may not use "
            f"(allowed: {', '.join(map(str, sorted(allowed)))})"
        )
    return sorted(set(cores))


@dataclass
class ReactorProc:
    rid: int
    core: int
    proc: subprocess.Popen[bytes]
    chan: socket.socket  # supervisor end of the fd socketpair
    pidfd: int = -1
    ready: bool = False  # said hello and has the configuration
    started: float = field(default_factory=time.time)
    log: PipeReader | None = None
    # supervision
    restarting: bool = False
    spawned_at: float = field(default_factory=time.monotonic)
    hb_sent: float = 0.0  # monotonic time of the oldest unanswered heartbeat, 0: none
    hb_pinged: float = 0.0  # monotonic time of the last heartbeat sent
    kill_reason: str = ""  # why the supervisor killed it (heartbeat), for the log
    restarts: int = 0
    restart_times: list[float] = field(default_factory=list)
    last_cause: str = ""
    last_restart: float = 0.0

    def info(self) -> dict[str, Any]:
        return {
            "restarts": self.restarts,
            "last_cause": self.last_cause or None,
            "last_restart": self.last_restart or None,
            "state": "running" if self.ready else "starting",
        }


@dataclass
class Listener:
    proto: str
    addr: str
    port: int
    sock: socket.socket
    users: int = 1


@dataclass
class Options:
    name: str = "default"
    core_mask: str = "0x1"
    mem_mb: int = 0
    rpc_addr: str | None = None
    spdk_rpc: str | None = None
    json_config: str | None = None
    ini_config: str | None = None
    default_config: bool = True
    poll_mode: str = "adaptive"
    spin_us: int = 200
    hugepages: str = "auto"
    log_level: str = "INFO"
    max_restarts: int = DEFAULT_MAX_RESTARTS
    restart_window_s: float = DEFAULT_RESTART_WINDOW_S
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S
    log_file: str | None = None
    log_max_mb: float = DEFAULT_LOG_MAX_MB
    log_count: int = DEFAULT_LOG_COUNT
    tpoint_group: str = ""  # -e/--tpoint-group: groups traced from the start
    num_trace_entries: int = tr.DEFAULT_ENTRIES  # per ring (power of 2)
    metrics_addr: str | None = None  # --metrics HOST:PORT: Prometheus /metrics
    http_addr: str | None = None  # --http HOST:PORT: the read-only dashboard


class Supervisor:
    """Also the RpcContext every RPC handler receives (control/context.py)."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.instance = names.validate_instance(opts.name)
        for what, v, lo in (
            ("--max-restarts", opts.max_restarts, 0),
            ("--restart-window", opts.restart_window_s, 0),
            ("--heartbeat-interval", opts.heartbeat_s, 0.01),
            ("--heartbeat-timeout", opts.heartbeat_timeout_s, 0.1),
            ("--log-max-mb", opts.log_max_mb, 0.004),
            ("--log-count", opts.log_count, 0),
        ):
            if not v >= lo:
                raise StartupError(f"{what} must be >= {lo}, not {v}")
        if opts.heartbeat_timeout_s <= opts.heartbeat_s:
            raise StartupError("--heartbeat-timeout must be longer than --heartbeat-interval")
        self.hugepages = opts.hugepages
        self.cores = parse_core_mask(opts.core_mask)
        self.num_reactors = len(self.cores)
        self.loop = EventLoop("blocking")
        self.bdevs: dict[str, Bdev] = {}
        self.nvmf: Any = None
        self.iscsi: Any = None
        self.reactors: list[ReactorProc] = []
        self.listeners: dict[tuple[str, str, int], Listener] = {}
        self._rr = itertools.count()
        self._corr = itertools.count(1)
        self._generation = 0
        self._deferred: list[tuple[bytes, bytes]] = []
        self.exit_code = 0
        self.started = time.time()
        self.lock = InstanceLock(self.instance)
        self.pool: BufferPool | None = None
        self.trace_seg: SharedSegment | None = None
        try:
            self.trace_mask0 = tr.parse_groups(opts.tpoint_group)
            tr.check_entries(opts.num_trace_entries)
        except ValueError as e:
            raise StartupError(str(e)) from None
        self._rpc_calls = itertools.count(1)
        self.rpc: Any = None
        self.http: Any = None  # control.http.HttpServers (--metrics / --http)
        self.zctx = zmq.Context()
        self.router: zmq.Socket[bytes] | None = None
        # persistent state (PR APTPL files) survives restarts and cleanup
        self.state_dir = str(names.run_dir() / "state" / self.instance)
        self._stopping = False
        self._aio_timer: Any = None
        self._hb_timer: Any = None
        self._hb_corrs: dict[int, int] = {}  # heartbeat corr -> reactor id
        self._hb_checked = time.monotonic()
        self.pool_options: dict[str, Any] = {}
        self._up = False  # start-up done: from now on a dead reactor is restarted

    # ------------------------------------------------------------ start-up
    def prepare_config(self) -> list[tuple[str, str, Any]]:
        """Read and validate every config source before anything is created."""
        from ..control import methods  # noqa: F401  (registers every RPC)

        entries: list[tuple[str, str, Any]] = []
        if self.opts.json_config:
            from ..control.config import load_config_file

            entries += load_config_file(self.opts.json_config, REGISTRY)
        if self.opts.ini_config:
            from ..transports.iscsi.ini_config import load_ini_config

            for i, (method, params) in enumerate(load_ini_config(self.opts.ini_config)):
                REGISTRY.lookup(method).bind(params)
                entries.append((f"{self.opts.ini_config} entry {i}", method, params))
        if not entries and self.opts.default_config:
            from .default_config import default_config

            entries = [
                (f"default config entry {i}", mth, p) for i, (mth, p) in enumerate(default_config())
            ]
            entries = [e for e in entries if e[1] in REGISTRY.methods]
        return entries

    def start(self) -> None:
        entries = self.prepare_config()
        self.lock.acquire()
        try:
            self._start(entries)
        except BaseException:
            self.shutdown()
            raise

    def _start(self, entries: list[tuple[str, str, Any]]) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self.nvmf = _new_state("blockfabric.transports.nvmf.state", "NvmfState")
        self.iscsi = _new_state("blockfabric.transports.iscsi.state", "IscsiState")
        self.pool = self._create_pool(entries)
        self._create_trace()
        self.router = self.zctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # a restarted reactor reconnects under the same identity
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.internal_addr = f"ipc://{names.run_dir()}/{self.instance}.internal.sock"
        self.router.bind(self.internal_addr)
        self.loop.add_fd(int(self.router.getsockopt(zmq.FD)), EPOLLIN, self._on_router)
        self.loop.add_poller(self._poll_router)
        self._install_signals()
        self._start_reactors()
        from ..control.addresses import default_rpc_addr
        from ..control.server import RpcServer

        self.rpc_addr = self.opts.rpc_addr or default_rpc_addr(self.instance)
        for label, method, params in entries:
            try:
                REGISTRY.call(self, method, params)
            except RpcError as e:
                raise StartupError(f"{label} ({method}): {e.message}") from None
        self.rpc = RpcServer(
            self.loop,
            self.dispatch,
            self.rpc_addr,
            spdk_path=self.opts.spdk_rpc,
            zmq_context=self.zctx,
        )
        if self.opts.metrics_addr or self.opts.http_addr:
            from ..control.http import HttpServers

            try:
                self.http = HttpServers(self.rpc_addr, self.opts.metrics_addr, self.opts.http_addr)
            except (OSError, ValueError) as e:
                raise StartupError(f"--metrics/--http: {e}") from None
            self.http.start()
        self._aio_timer = self.loop.call_later(1.0, self._watch_aio)
        dead = [r for r in self.reactors if r.proc.poll() is not None]
        if dead:
            raise StartupError(
                f"reactor {dead[0].rid} exited during start-up (status {dead[0].proc.returncode})"
            )
        self._hb_timer = self.loop.call_every(self.opts.heartbeat_s, self._heartbeat)
        self._up = True
        log.info(
            "blockfabric[%s] up: %d reactor(s) on cores %s, RPC at %s",
            self.instance,
            self.num_reactors,
            self.cores,
            self.rpc_addr,
        )

    def _create_pool(self, entries: list[tuple[str, str, Any]]) -> BufferPool:
        """The shared buffer pool always exists: ``-s MEM_MB`` sizes it
        (default `default_pool_mb`); an ``iobuf_set_options`` entry of the
        start-up config (SPDK's small/large_pool_count and bufsizes) sets the
        buffer counts instead. At run time iobuf_set_options has no effect
        (the pool cannot be resized under live reactors)."""
        opts: dict[str, Any] = {}
        for _label, method, params in entries:
            if method == "iobuf_set_options" and isinstance(params, dict):
                opts.update({k: v for k, v in params.items() if v is not None})
        self.pool_options = opts
        kw: dict[str, Any] = {}
        if "small_pool_count" in opts or "large_pool_count" in opts:
            small_size = int(opts.get("small_bufsize") or SMALL_SIZE)
            large_size = int(opts.get("large_bufsize") or LARGE_SIZE)
            if large_size < LARGE_SIZE or small_size > large_size or small_size <= 0:
                log.warning(
                    "iobuf_set_options: buffer sizes %d/%d unsupported (large must be >= %d); "
                    "using %d/%d",
                    small_size, large_size, LARGE_SIZE, SMALL_SIZE, LARGE_SIZE,
                )  # fmt: skip
                small_size, large_size = SMALL_SIZE, LARGE_SIZE
            kw = {
                "small_count": int(opts.get("small_pool_count", 8192)),
                "large_count": int(opts.get("large_pool_count", 1024)),
                "small_size": small_size,
                "large_size": large_size,
            }
            mem_mb = None
        else:
            mem_mb = self.opts.mem_mb or default_pool_mb(self.num_reactors)
        pool = BufferPool.create(
            self.instance,
            self.num_reactors,
            mem_mb,
            hugepages=self.hugepages,  # type: ignore[arg-type]  # CLI value "auto"/bool; BufferPool.create resolves both
            **kw,
        )
        st = pool.stats()
        log.info(
            "buffer pool %s: %d MiB, %d small x %d B + %d large x %d B%s",
            pool.name, st["size"] >> 20, st["small"]["count"], st["small"]["buf_size"],
            st["large"]["count"], st["large"]["buf_size"], " (hugetlbfs)" if st["hugepage"] else "",
        )  # fmt: skip
        return pool

    def _create_trace(self) -> None:
        """The trace segment: one ring per reactor, the last one for the
        supervisor (RPCs). It always exists, so groups can be enabled at run
        time; it is removed at a clean stop and kept after a SIGKILL."""
        seg = tr.create_segment(
            self.instance, self.num_reactors + 1, self.opts.num_trace_entries, self.trace_mask0
        )
        self.trace_seg = seg
        tr.TRACE.attach(seg, self.num_reactors, tr.ROLE_SUPERVISOR)
        if self.trace_mask0:
            log.info(
                "tracepoint group mask %#x specified; use `blockfabric trace -n %s` to see the "
                "events at run time, or `blockfabric trace -f %s` after the instance has died",
                self.trace_mask0, self.instance, seg.path,
            )  # fmt: skip

    def _install_signals(self) -> None:
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        self._sig_r, self._sig_w = r, w
        signal.set_wakeup_fd(w.fileno())
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, self._on_signal)
        self.loop.add_fd(r.fileno(), EPOLLIN, lambda _e: self._drain_sig())

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        self._stopping = True
        self.loop.stop()

    def _drain_sig(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._sig_r.recv(4096)

    def _reactor_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.opts.metrics_addr or self.opts.http_addr:
            # the metrics show bdev latency histograms: reactors time every I/O
            # (bdevs/base.py TIME_IO) unless the environment says otherwise
            env.setdefault("BLOCKFABRIC_BDEV_LATENCY", "1")
        return env

    def _spawn(self, rid: int, core: int, rp: ReactorProc | None = None) -> ReactorProc:
        """Start reactor process ``rid`` on ``core`` (into ``rp`` on a restart)."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        lr, lw = make_pipe()
        assert self.pool is not None
        args = [
            sys.executable, "-m", "blockfabric.actors.reactor",
            "--instance", self.instance, "--id", str(rid), "--core", str(core),
            "--sup", self.internal_addr, "--fd", str(b.fileno()),
            "--poll-mode", self.opts.poll_mode, "--spin-us", str(self.opts.spin_us),
            "--log-level", self.opts.log_level,
            "--nreactors", str(self.num_reactors), "--state-dir", self.state_dir,
            "--pool", self.pool.name, "--log-fd", str(lw),
        ]  # fmt: skip
        if self.trace_seg is not None:
            args += ["--trace", self.trace_seg.name]
        try:
            proc = subprocess.Popen(
                args, pass_fds=(b.fileno(), lw), env=self._reactor_env(), stdin=subprocess.DEVNULL
            )
        except BaseException:
            for x in (a, b):
                x.close()
            os.close(lr)
            os.close(lw)
            raise
        finally:
            b.close()
        os.close(lw)
        a.setblocking(False)
        if rp is None:
            rp = ReactorProc(rid, core, proc, a)
        else:
            rp.proc, rp.chan, rp.ready, rp.started = proc, a, False, time.time()
            rp.spawned_at, rp.hb_sent, rp.kill_reason = time.monotonic(), 0.0, ""
        rp.pidfd = os.pidfd_open(proc.pid)
        rp.log = PipeReader(lr)
        self.loop.add_fd(rp.pidfd, EPOLLIN, functools.partial(self._on_reactor_exit, rp))
        self.loop.add_fd(a.fileno(), EPOLLIN, functools.partial(self._on_reactor_fd, rp))
        self.loop.add_fd(lr, EPOLLIN, functools.partial(self._on_reactor_log, rp))
        return rp

    def _on_reactor_log(self, rp: ReactorProc, _ev: int = 0) -> None:
        lg = rp.log
        if lg is not None and not lg.read():
            self.loop.remove_fd(lg.fd)
            os.close(lg.fd)
            rp.log = None

    def _start_reactors(self) -> None:
        for rid, core in enumerate(self.cores):
            self.reactors.append(self._spawn(rid, core))
        deadline = time.monotonic() + REACTOR_START_TIMEOUT
        while not all(r.ready for r in self.reactors):
            if time.monotonic() > deadline:
                raise StartupError("reactors did not start in time")
            for r in self.reactors:
                if r.proc.poll() is not None:
                    raise StartupError(
                        f"reactor {r.rid} exited during start-up (status {r.proc.returncode})"
                    )
            self.loop.run_once(0.05)
        self.config_changed()

    # ------------------------------------------------------------ messages
    def _on_router(self, _ev: int) -> None:
        self._drain_router()

    def _poll_router(self) -> int:
        if self.router is not None and int(self.router.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            return self._drain_router()
        return 0

    def _drain_router(self) -> int:
        n = 0
        assert self.router is not None
        while True:
            try:
                ident, raw = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return n
            except ValueError:
                continue
            n += 1
            self._handle_reactor_msg(ident, raw)

    def _rid_of(self, ident: bytes) -> int:
        return int(ident[1:])

    def _handle_reactor_msg(self, ident: bytes, raw: bytes) -> None:
        try:
            msg, corr = m.decode(raw)
        except m.MessageError as e:
            log.error("bad message from %r: %s", ident, e)
            return
        rid = self._rid_of(ident)
        if not 0 <= rid < len(self.reactors):
            log.error("message from unknown reactor %r", ident)
            return
        rp = self.reactors[rid]
        rp.hb_sent = 0.0  # any message proves it alive
        if isinstance(msg, m.Hello):
            if msg.pid != rp.proc.pid:
                log.warning("hello from reactor %d pid %d, expected %d", rid, msg.pid, rp.proc.pid)
            elif rp.restarting:
                self.loop.call_soon(functools.partial(self._finish_restart, rp))
            else:
                rp.ready = True
        elif isinstance(msg, m.ControllerCall):
            op = SUPERVISOR_OPS.get(msg.op)
            if op is None:
                reply = m.Reply(False, None, f"unknown op {msg.op}")
            else:
                try:
                    reply = m.Reply(True, op(self, rid, msg.args), "")
                except Exception as e:  # handlers report errors as text to the reactor
                    if not isinstance(e, RpcError | ValueError):
                        log.exception("supervisor op %s failed", msg.op)
                    reply = m.Reply(False, None, str(e))
            if corr:
                self._send(rid, reply, corr)
        elif isinstance(msg, m.Event):
            op = SUPERVISOR_OPS.get(msg.op)
            if op is None:
                log.warning("unknown event %s from reactor %d", msg.op, rid)
            else:
                try:
                    op(self, rid, msg.args)
                except Exception:
                    log.exception("supervisor event %s failed", msg.op)
        elif isinstance(msg, m.Reply):
            if self._hb_corrs.pop(corr, None) is None:
                log.debug("late reply %d from reactor %d", corr, rid)
        else:
            log.warning("unexpected %s from reactor %d", msg.TAG, rid)

    def _send(self, rid: int, msg: m.Message, corr: int = 0) -> None:
        assert self.router is not None
        try:
            self.router.send_multipart([b"r%d" % rid, m.encode(msg, corr)], zmq.NOBLOCK)
        except zmq.ZMQError as e:
            log.error("cannot reach reactor %d: %s", rid, e)

    def request_all(
        self, msg: m.Message, timeout: float = REQUEST_TIMEOUT, only: list[int] | None = None
    ) -> list[Any]:
        """Send ``msg`` to reactors and wait for every reply; other messages that
        arrive meanwhile are handled in order (reactor -> supervisor calls are
        never blocked by this wait)."""
        assert self.router is not None
        targets = only if only is not None else [r.rid for r in self.reactors if r.ready]
        want: dict[int, int] = {}
        for rid in targets:
            corr = next(self._corr)
            want[corr] = rid
            self._send(rid, msg, corr)
        results: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        # a reactor that dies (or is killed for missing heartbeats) while we
        # wait is dropped from the wait: its answer is None
        pidfds = {self.reactors[rid].pidfd: rid for rid in targets if self.reactors[rid].pidfd >= 0}
        for fd in pidfds:
            poller.register(fd, zmq.POLLIN)
        while want:
            self._check_heartbeats()
            if self._up:
                self._send_heartbeats()
            for fd, _ in poller.poll(0) if pidfds else ():
                if fd in pidfds:
                    dead = pidfds.pop(fd)
                    poller.unregister(fd)
                    for c, r in list(want.items()):
                        if r == dead:
                            del want[c]
                            results[r] = None
            if not want:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise RpcError(
                    INTERNAL_ERROR, f"reactor(s) {sorted(want.values())} did not answer {msg.TAG}"
                )
            # spin briefly before blocking: a woken idle vCPU costs more than the reply
            spin_end = time.monotonic() + 0.0002
            while (
                not (int(self.router.getsockopt(zmq.EVENTS)) & zmq.POLLIN)
                and time.monotonic() < spin_end
            ):
                pass
            if not (int(self.router.getsockopt(zmq.EVENTS)) & zmq.POLLIN) and not poller.poll(
                int(min(left, 0.25) * 1000) + 1
            ):
                continue
            while True:
                try:
                    ident, raw = self.router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    rmsg, corr = m.decode(raw)
                except m.MessageError:
                    continue
                if isinstance(rmsg, m.Reply) and corr in want:
                    rid = want.pop(corr)
                    if not rmsg.ok:
                        raise RpcError(INTERNAL_ERROR, f"reactor {rid}: {rmsg.error}")
                    results[rid] = rmsg.result
                else:
                    self._handle_reactor_msg(ident, raw)
        return [results.get(rid) for rid in targets]

    # ------------------------------------------------------ RpcContext API
    def config_changed(self) -> None:
        self._generation += 1
        msg = m.ConfigUpdate(
            self._generation,
            {n: b.describe() for n, b in self.bdevs.items()},
            self.nvmf.snapshot() if self.nvmf is not None else {},
            self.iscsi.snapshot() if self.iscsi is not None else {},
        )
        self.request_all(msg)

    def gather(self, op: str, args: dict[str, Any], timeout: float = 5.0) -> list[Any]:
        return self.request_all(m.Event(op, args), timeout)

    def send_event(self, reactor_id: int | None, op: str, args: dict[str, Any]) -> None:
        for r in self.reactors:
            if r.ready and (reactor_id is None or r.rid == reactor_id):
                self._send(r.rid, m.Event(op, args))

    def add_bdev(self, b: Bdev) -> None:
        self.bdevs[b.name] = b
        self.config_changed()

    def remove_bdev(self, name: str) -> None:
        b = self.bdevs.get(name)
        if b is None:
            raise RpcError(-19, f"bdev {name} not found")
        b.removed = True
        for st in (self.nvmf, self.iscsi):
            hook = getattr(st, "on_bdev_removed", None)
            if hook is not None:
                hook(name)
        # reactors first fail new I/O and drop namespaces/LUNs (new snapshot),
        # then close their channels; only then is the memory released
        self.config_changed()
        self.request_all(m.BdevRemove(name))
        del self.bdevs[name]
        destroy = getattr(b, "destroy", None)
        if destroy is not None:
            destroy()
        self.config_changed()

    def bdev_save_config(self) -> list[dict[str, Any]]:
        from ..bdevs.claims import save_order, stacked_on
        from ..bdevs.rbd_rpc import save_config as rbd_clusters  # before the bdevs using them

        # bases first, then the remote (nvme) bdevs, then what is stacked on
        # them, each after its bases: a restart recreates them in that order
        order = save_order(self.bdevs.values())
        entries = [
            {"method": b.create_method, "params": dict(b.create_params)}
            for b in order
            if b.create_method
        ]
        stacked = [bool(stacked_on(b)) for b in order if b.create_method]
        out = rbd_clusters() + [e for e, st in zip(entries, stacked, strict=True) if not st]
        top = [e for e, st in zip(entries, stacked, strict=True) if st]
        try:
            from ..bdevs.nvme_rpc import save_config as nvme_save_config
        except ImportError:
            return out + top
        return out + nvme_save_config() + top

    def _watch_aio(self) -> None:
        """An aio file that vanished is hot-removed like a deleted bdev."""
        from ..bdevs.aio import AioBdev

        for b in list(self.bdevs.values()):
            if isinstance(b, AioBdev) and b.vanished():
                log.warning("aio bdev %s: %s vanished, removing", b.name, b.filename)
                try:
                    self.remove_bdev(b.name)
                except RpcError as e:
                    log.error("hot-remove of %s failed: %s", b.name, e.message)
        self._aio_timer = self.loop.call_later(1.0, self._watch_aio)

    # ------------------------------------------------------------ listeners
    def add_listener(self, proto: str, addr: str, port: int, family: str = "ipv4") -> str:
        key = (proto, addr, int(port))
        lst = self.listeners.get(key)
        if lst is not None:
            lst.users += 1
            return f"{addr}:{port}"
        if family.lower() == "unix":  # a Unix stream socket at path ``addr`` (FC loopback LLD)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISSOCK(os.lstat(addr).st_mode):
                        os.unlink(addr)  # a stale socket of a dead instance
                s.bind(addr)
                s.listen(128)
            except OSError as e:
                s.close()
                raise RpcError(
                    -98 if e.errno == 98 else -22, f"cannot listen on {addr}: {e.strerror}"
                ) from None
            s.setblocking(False)
            key = (proto, addr, 0)
            self.listeners[key] = Listener(proto, addr, 0, s)
            self.loop.add_fd(s.fileno(), EPOLLIN, functools.partial(self._on_accept, key))
            log.info("listening for %s on %s", proto, addr)
            return f"{addr}:0"
        fam = socket.AF_INET6 if family.lower() == "ipv6" or ":" in addr else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, int(port)))
            s.listen(128)
        except OSError as e:
            s.close()
            raise RpcError(
                -98 if e.errno == 98 else -22, f"cannot listen on {addr}:{port}: {e.strerror}"
            ) from None
        s.setblocking(False)
        port = s.getsockname()[1]  # the real port when 0 was asked for
        key = (proto, addr, port)
        self.listeners[key] = Listener(proto, addr, port, s)
        self.loop.add_fd(s.fileno(), EPOLLIN, functools.partial(self._on_accept, key))
        log.info("listening for %s on %s:%s", proto, addr, port)
        return f"{addr}:{port}"

    def remove_listener(self, proto: str, addr: str, port: int) -> None:
        key = (proto, addr, int(port))
        lst = self.listeners.get(key)
        if lst is None:
            return
        lst.users -= 1
        if lst.users <= 0:
            self.loop.remove_fd(lst.sock.fileno())
            if lst.sock.family == socket.AF_UNIX:
                with contextlib.suppress(OSError):
                    os.unlink(lst.addr)
            lst.sock.close()
            del self.listeners[key]

    def listener_port(self, proto: str, addr: str, port: int) -> int:
        """The bound port (useful with port 0 in tests)."""
        return int(self.listeners[(proto, addr, int(port))].sock.getsockname()[1])

    def _on_accept(self, key: tuple[str, str, int], _ev: int = 0) -> None:
        lst = self.listeners.get(key)
        if lst is None:
            return
        while True:
            try:
                conn, peer = lst.sock.accept()
            except BlockingIOError:
                return
            except OSError as e:
                log.error("accept on %s:%s failed: %s", lst.addr, lst.port, e)
                return
            rp = self._pick_reactor()
            if rp is None:  # every reactor is restarting: the host retries
                conn.close()
                continue
            try:
                send_fd(
                    rp.chan,
                    Handoff(
                        conn.fileno(),
                        lst.proto,
                        f"{lst.addr}:{lst.port}",
                        f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix",
                    ),
                )
            except OSError as e:
                log.error("handing connection to reactor %d failed: %s", rp.rid, e)
            conn.close()

    def _pick_reactor(self) -> ReactorProc | None:
        for _ in range(len(self.reactors)):
            rp = self.reactors[next(self._rr) % len(self.reactors)]
            if rp.ready:
                return rp
        return None

    def _on_reactor_fd(self, rp: ReactorProc, _ev: int = 0) -> None:
        """A reactor hands a connection on to another reactor."""
        while True:
            try:
                h = recv_fd(rp.chan)
            except BlockingIOError:
                return
            except (OSError, ValueError) as e:
                log.error("handoff from reactor %d failed: %s", rp.rid, e)
                return
            if h is None:
                self.loop.remove_fd(rp.chan.fileno())
                return
            try:
                if 0 <= h.target < len(self.reactors) and self.reactors[h.target].ready:
                    send_fd(self.reactors[h.target].chan, h)
                else:
                    log.error("handoff to unknown or restarting reactor %d: dropped", h.target)
            except OSError as e:
                log.error("handoff to reactor %d failed: %s", h.target, e)
            finally:
                os.close(h.fd)

    # ----------------------------------------------------------- lifecycle
    def _close_reactor_fds(self, rp: ReactorProc) -> None:
        if rp.log is not None:  # what it wrote before dying still reaches the log
            rp.log.read()
            self.loop.remove_fd(rp.log.fd)
            os.close(rp.log.fd)
            rp.log = None
        if rp.pidfd >= 0:
            self.loop.remove_fd(rp.pidfd)
            os.close(rp.pidfd)
            rp.pidfd = -1
        with contextlib.suppress(OSError, ValueError):
            self.loop.remove_fd(rp.chan.fileno())
        rp.chan.close()

    def _on_reactor_exit(self, rp: ReactorProc, _ev: int = 0) -> None:
        code = rp.proc.wait()  # always reap: no zombie, whatever happens next
        pid = rp.proc.pid
        self._close_reactor_fds(rp)
        rp.ready = False
        if self._stopping or not self._up:  # start-up notices it via proc.poll()
            return
        try:
            why = (
                f"killed by signal {signal.Signals(-code).name}"
                if code < 0
                else f"exited with status {code}"
            )
        except ValueError:
            why = f"killed by signal {-code}"
        if rp.kill_reason:
            why += f" ({rp.kill_reason})"
        now = time.monotonic()
        window = self.opts.restart_window_s
        rp.restart_times = [t for t in rp.restart_times if now - t < window]
        if len(rp.restart_times) >= self.opts.max_restarts:
            log.error(
                "reactor %d (pid %d, core %d) %s; %d restart(s) within %gs is the limit "
                "(--max-restarts %d --restart-window %g): stopping the target",
                rp.rid, pid, rp.core, why, len(rp.restart_times), window,
                self.opts.max_restarts, window,
            )  # fmt: skip
            rp.last_cause = why
            self.exit_code = 1
            self._stopping = True
            self.loop.stop()
            return
        log.error(
            "reactor %d (pid %d, core %d) %s: restarting it on core %d",
            rp.rid, pid, rp.core, why, rp.core,
        )  # fmt: skip
        self._drop_reactor_state(rp, pid)
        rp.restart_times.append(now)
        rp.restarts += 1
        rp.last_cause = why
        rp.last_restart = time.time()
        rp.restarting = True
        try:
            self._spawn(rp.rid, rp.core, rp)
        except Exception as e:
            log.error("restarting reactor %d failed: %s: stopping the target", rp.rid, e)
            self.exit_code = 1
            self._stopping = True
            self.loop.stop()

    def _drop_reactor_state(self, rp: ReactorProc, pid: int) -> None:
        """Forget what the dead reactor held: its pool buffers, the NVMe-oF
        controllers and queues it hosted (other reactors close I/O queues of
        those controllers), and anything a transport registered for it."""
        if self.pool is not None:
            try:
                n = self.pool.reclaim(rp.rid, pid)
                log.info("reactor %d: %d pool buffer(s) it held returned to the pool", rp.rid, n)
            except Exception:
                log.exception("reclaiming reactor %d's pool buffers failed", rp.rid)
        for st in (self.nvmf, self.iscsi):
            hook = getattr(st, "on_reactor_died", None)
            if hook is not None:
                try:
                    hook(self, rp.rid)
                except Exception:
                    log.exception("%s: reactor_died hook failed", type(st).__name__)
        self.send_event(None, "framework.reactor_died", {"reactor": rp.rid})

    def _finish_restart(self, rp: ReactorProc) -> None:
        """A restarted reactor said hello: give it the current configuration,
        then it takes connections again."""
        if not rp.restarting or rp.proc.poll() is not None:
            return
        msg = m.ConfigUpdate(
            self._generation,
            {n: b.describe() for n, b in self.bdevs.items()},
            self.nvmf.snapshot() if self.nvmf is not None else {},
            self.iscsi.snapshot() if self.iscsi is not None else {},
        )
        try:
            res = self.request_all(msg, only=[rp.rid])
        except RpcError as e:
            log.error("restarted reactor %d did not take its configuration: %s", rp.rid, e.message)
            rp.kill_reason = "configuration failed after restart"
            with contextlib.suppress(ProcessLookupError):
                rp.proc.kill()
            return
        if res == [None]:  # died meanwhile; its exit is handled by the pidfd
            return
        rp.restarting = False
        rp.ready = True
        log.info(
            "reactor %d restarted as pid %d on core %d in %.2fs",
            rp.rid, rp.proc.pid, rp.core, time.time() - rp.last_restart,
        )  # fmt: skip

    def _heartbeat(self) -> None:
        """Ping every reactor; one that has not answered for
        heartbeat_timeout_s (or did not start in time) is SIGKILLed and then
        restarted like a reactor that died."""
        for rp in self.reactors:
            # reap promptly, and handle the exit even if a pidfd event were missed
            if rp.proc.poll() is not None and rp.pidfd >= 0:
                self._on_reactor_exit(rp)
        if self.router is not None:
            self._drain_router()  # answers that are already here count
        self._check_heartbeats()
        self._send_heartbeats()

    def _send_heartbeats(self) -> None:
        """A ping to every ready reactor that has none outstanding and was
        not pinged for an interval (also called while waiting for replies)."""
        now = time.monotonic()
        for rp in self.reactors:
            if (
                rp.ready
                and rp.hb_sent == 0.0
                and rp.proc.returncode is None
                and now - rp.hb_pinged >= self.opts.heartbeat_s * 0.9
            ):
                corr = next(self._corr)
                if len(self._hb_corrs) > 4096:
                    self._hb_corrs.clear()
                self._hb_corrs[corr] = rp.rid
                rp.hb_sent = rp.hb_pinged = now
                self._send(rp.rid, m.Ping(time.perf_counter_ns()), corr)

    def _check_heartbeats(self) -> None:
        if self._stopping:
            return
        now = time.monotonic()
        limit = self.opts.heartbeat_timeout_s
        gap = now - self._hb_checked
        self._hb_checked = now
        if gap > max(1.0, 2 * self.opts.heartbeat_s):
            # the supervisor itself was busy (a long RPC): answers may be
            # waiting unread, so nobody is judged on this round
            for rp in self.reactors:
                if rp.hb_sent:
                    rp.hb_sent = now
                rp.spawned_at = max(rp.spawned_at, now - 1.0) if not rp.ready else rp.spawned_at
            return
        for rp in self.reactors:
            if rp.kill_reason or rp.proc.returncode is not None or rp.pidfd < 0:
                continue
            if rp.ready and rp.hb_sent and now - rp.hb_sent > limit:
                rp.kill_reason = f"no heartbeat answer for {limit:g}s"
            elif not rp.ready and now - rp.spawned_at > max(limit, REACTOR_START_TIMEOUT):
                rp.kill_reason = "did not start in time"
            else:
                continue
            log.error("reactor %d (pid %d) %s: SIGKILL", rp.rid, rp.proc.pid, rp.kill_reason)
            with contextlib.suppress(ProcessLookupError):
                os.kill(rp.proc.pid, signal.SIGKILL)

    def pool_summary(self) -> dict[str, Any] | None:
        """The pool's shape and who holds its buffers (status, iobuf_get_stats)."""
        if self.pool is None:
            return None
        st = self.pool.stats()
        held = self.pool.held_by()
        out = {k: st[k] for k in ("name", "path", "hugepage", "size", "nreactors")}
        for label in ("small", "large"):
            c = st[label]
            out[label] = {
                k: c[k]
                for k in ("buf_size", "count", "per_reactor", "reserve_count", "reserve_free")
            }
            out[label]["in_use"] = c["in_use"]
        out["in_use_by_reactor"] = {str(r): n for r, n in sorted(held.items()) if r >= 0}
        out["options"] = dict(self.pool_options)
        return out

    def reactor_supervision(self, rid: int) -> dict[str, Any]:
        if 0 <= rid < len(self.reactors):
            return self.reactors[rid].info()
        return {}

    def run(self) -> int:
        if not self._stopping:
            self.loop.run()
        self.shutdown()
        return self.exit_code

    def dispatch(self, method: str, params: Any) -> Any:
        if tr.TRACE.mask & tr.G_RPC:
            return self._traced_dispatch(method, params)
        return REGISTRY.call(self, method, params)

    def _traced_dispatch(self, method: str, params: Any) -> Any:
        call = next(self._rpc_calls)
        tr.TRACE.rec_name(tr.TP_RPC_START, call, method)
        err = 1
        try:
            res = REGISTRY.call(self, method, params)
            err = 0
            return res
        finally:
            if tr.TRACE.mask & tr.G_RPC:
                tr.TRACE.rec_name(tr.TP_RPC_DONE, call, method, err)

    def shutdown(self) -> None:
        self._stopping = True
        if self.http is not None:
            with contextlib.suppress(Exception):
                self.http.close()
            self.http = None
        for lst in list(self.listeners.values()):
            with contextlib.suppress(OSError, ValueError):
                self.loop.remove_fd(lst.sock.fileno())
            if lst.sock.family == socket.AF_UNIX:
                with contextlib.suppress(OSError):
                    os.unlink(lst.addr)
            lst.sock.close()
        self.listeners.clear()
        if self.rpc is not None:
            with contextlib.suppress(Exception):
                self.rpc.close()
            self.rpc = None
        alive = [r for r in self.reactors if r.proc.poll() is None]
        for r in [r for r in alive if not r.ready]:  # (re)starting: no mailbox yet
            with contextlib.suppress(ProcessLookupError):
                r.proc.terminate()
        alive = [r for r in alive if r.ready]
        if alive and self.router is not None:
            with contextlib.suppress(Exception):
                self.request_all(
                    m.Shutdown("supervisor stopping"),
                    timeout=REACTOR_STOP_GRACE,
                    only=[r.rid for r in alive],
                )
        for r in self.reactors:
            try:
                r.proc.wait(REACTOR_STOP_GRACE)
            except subprocess.TimeoutExpired:
                log.error("reactor %d did not stop: SIGKILL", r.rid)
                r.proc.kill()
                r.proc.wait()
            if r.log is not None:
                with contextlib.suppress(OSError):
                    r.log.read()
            with contextlib.suppress(OSError, ValueError):
                self._close_reactor_fds(r)
        for b in list(self.bdevs.values()):
            destroy = getattr(b, "destroy", None)
            if destroy is not None:
                with contextlib.suppress(Exception):
                    destroy()
        self.bdevs.clear()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                self.pool.destroy()
            self.pool = None
        if self.trace_seg is not None:
            tr.TRACE.detach()
            with contextlib.suppress(Exception):
                self.trace_seg.unlink()
            self.trace_seg = None
        if self.router is not None:
            self.router.close(0)
            self.router = None
            with contextlib.suppress(OSError):
                os.unlink(self.internal_addr[len("ipc://") :])
        self.zctx.term()
        with contextlib.suppress(Exception):
            Manifest(self.instance).delete()
        if self.lock.held:
            self.lock.release()
        signal.set_wakeup_fd(-1)


# ---------------------------------------------------- supervisor-only RPCs
@rpc_method("blockfabric_get_status", cli_out=OUT_DICT)
def blockfabric_get_status(ctx: Supervisor) -> dict[str, Any]:
    """Processes of this instance (used by `blockfabric status`)."""
    return {
        "instance": ctx.instance,
        "pid": os.getpid(),
        "started": ctx.started,
        "rpc_addr": ctx.rpc_addr,
        "http": ctx.http.addresses() if ctx.http is not None else {},
        "reactors": [
            {"id": r.rid, "core": r.core, "pid": r.proc.pid, "started": r.started, **r.info()}
            for r in ctx.reactors
        ],
        "restart_policy": {
            "max_restarts": ctx.opts.max_restarts,
            "restart_window_s": ctx.opts.restart_window_s,
            "heartbeat_s": ctx.opts.heartbeat_s,
            "heartbeat_timeout_s": ctx.opts.heartbeat_timeout_s,
        },
        "pool": ctx.pool_summary(),
        "listeners": [
            {"proto": lst.proto, "addr": lst.addr, "port": lst.sock.getsockname()[1]}
            for lst in ctx.listeners.values()
        ],
    }


@rpc_method(
    "framework_set_poll_mode",
    Param("mode", str, choices=("adaptive", "busy", "blocking"), pos=0, help="the polling mode"),
    Param("spin_us", int, required=False, min=0, max=1_000_000, help="adaptive: spin time (us)"),
    cli_out=OUT_DICT,
)
def framework_set_poll_mode(ctx: Supervisor, mode: str, spin_us: int | None = None) -> bool:
    """blockfabric extension: switch every reactor's polling mode at run time."""
    ctx.request_all(m.SetPollMode(mode, spin_us if spin_us is not None else ctx.opts.spin_us))
    return True


@rpc_method(
    "framework_ping",
    Param("count", int, required=False, min=1, max=100000, help="round trips to measure"),
    cli_out=OUT_DICT,
)
def framework_ping(ctx: Supervisor, count: int | None = None) -> dict[str, Any]:
    """Message round trips supervisor -> every reactor -> supervisor (ns)."""
    samples = []
    for _ in range(count or 1):
        t0 = time.perf_counter_ns()
        ctx.request_all(m.Ping(t0))
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    return {
        "count": len(samples),
        "median_ns": samples[len(samples) // 2],
        "p99_ns": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "samples_ns": samples[:1000],
    }


def run_supervisor(opts: Options, ready: Callable[[], None] | None = None) -> int:
    root = logging.getLogger()
    root.handlers[:] = [make_handler(opts.log_file, opts.log_max_mb, opts.log_count)]
    root.setLevel(opts.log_level)
    try:
        import setproctitle

        setproctitle.setproctitle(f"blockfabric[{opts.name}] supervisor")
    except ImportError:
        pass
    sup = Supervisor(opts)
    # keep the supervisor off the reactors' cores when the machine has others:
    # a busy-polling reactor and the supervisor on one vCPU slow both down
    spare = os.sched_getaffinity(0) - set(sup.cores)
    if spare:
        os.sched_setaffinity(0, spare)
    sup.start()
    if ready:
        ready()
    return sup.run()
