"""rbd bdev: a Ceph RBD image through librbd's Python bindings (python3-rbd).

Every process (the supervisor for create/resize/info, each reactor for I/O)
holds **one cluster connection per registered cluster** (a ``rados.Rados``
and an ioctx per pool), shared by all the process's RBD bdevs; each reactor's
channel opens the image once. I/O uses librbd's asynchronous API
(``aio_read``/``aio_write``/``aio_flush``/``aio_discard``/``aio_write_zeroes``):
librbd's own threads call the completion, which appends the result to a deque
and writes an eventfd the reactor loop watches, so completions run on the
reactor thread and the reactor never blocks on Ceph. What can block (connect,
open_ioctx, opening and closing the image, shutting a connection down) runs
on a per-process control thread (or a throw-away thread for closes), never on
the reactor; I/O that arrives while the image is being opened waits in a
bounded queue.

Durability: librbd's cache (``rbd_cache``, writethrough until the first flush,
then writeback) may hold completed writes, so a FUA write (or any write with
``write_through``) is the write followed by ``aio_flush`` and completes after
the flush; a flush is ``aio_flush``. Write zeroes is ``aio_write_zeroes``
(zeroes guaranteed), unmap is ``aio_discard`` with ``rbd_skip_partial_discard``
forced off (librbd's default leaves the data of a partly discarded object in
place, and the transports promise deallocated blocks read as zeroes).

Errors: a negative return value completes the I/O with FAILED (the transports
turn it into the NVMe / SCSI media error). Connection-loss errors (the op and
mon timeouts below, a blocklisted or shut-down client) also retire the
process's connection: the channel fails new I/O at once (no queueing against
a dead cluster) and reconnects every ``reconnect_delay`` seconds until it
can open the image again, then serves I/O again. Without the timeouts librbd
waits forever on a dead cluster, so ``rados_osd_op_timeout`` and
``rados_mon_op_timeout`` default to ``RBD_OP_TIMEOUT`` unless the cluster's
config sets them.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .base import Bdev, Callback, CompareCallback, IoChannel, IoStatus, ReadCallback

log = logging.getLogger(__name__)

RBD_OP_TIMEOUT = 10  # seconds: rados_osd_op_timeout / rados_mon_op_timeout / client_mount_timeout
RECONNECT_DELAY = 1.0  # seconds between reconnect attempts of a channel that lost its cluster
MAX_PENDING = 4096  # I/O queued on one channel while its image opens
ZERO_CHUNK = 1 << 20  # sync-mode fallback write-zeroes piece

# errors that mean "the cluster connection is gone", not "this I/O failed"
LOST_ERRNOS = frozenset(
    {
        errno.ETIMEDOUT,
        errno.ENOTCONN,
        errno.ESHUTDOWN,  # blocklisted (EBLOCKLISTED == ESHUTDOWN in Ceph)
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EPIPE,
    }
)


def bindings() -> tuple[Any, Any]:
    """(rados, rbd) modules, or ImportError with how to install them."""
    try:
        import rados
        import rbd
    except ImportError as e:
        raise ImportError(
            "Ceph's Python bindings are missing (apt-get install python3-rados python3-rbd; "
            f"scripts/install-deps.sh links them into .venv): {e}"
        ) from None
    return rados, rbd


def conn_conf(cluster: dict[str, Any]) -> dict[str, str]:
    """librados configuration of a cluster description: key file, explicit
    config params, and the timeouts that turn a dead cluster into errors."""
    conf: dict[str, str] = {
        "rados_osd_op_timeout": str(RBD_OP_TIMEOUT),
        "rados_mon_op_timeout": str(RBD_OP_TIMEOUT),
        "client_mount_timeout": str(RBD_OP_TIMEOUT),
    }
    if cluster.get("key_file"):
        conf["keyring"] = str(cluster["key_file"])
    for k, v in (cluster.get("config_param") or {}).items():
        conf[str(k)] = str(v)
    # the transports promise that deallocated blocks read back as zeroes
    # (NVMe DLFEAT, SCSI LBPRZ); librbd's default skips the discard of a
    # partial object, leaving the old data there: make it zero them
    conf["rbd_skip_partial_discard"] = "false"
    return conf


def cluster_key(cluster: dict[str, Any]) -> str:
    """Connections are shared by bdevs whose cluster description is equal."""
    import json

    return json.dumps(cluster, sort_keys=True)


def connect(cluster: dict[str, Any]) -> Any:
    """A connected ``rados.Rados`` (blocking, bounded by the timeouts).

    Like SPDK: ``config_file`` is read when given; with neither a file nor
    ``config_param`` Ceph's default search (/etc/ceph/ceph.conf, ...) is read;
    ``config_param`` entries are set last and win."""
    rados, _ = bindings()
    conf = conn_conf(cluster)
    kw: dict[str, Any] = {}
    if cluster.get("user_id"):
        kw["rados_id"] = str(cluster["user_id"])
    r = rados.Rados(**kw)
    try:
        if cluster.get("config_file"):
            r.conf_read_file(str(cluster["config_file"]))
        elif not cluster.get("config_param"):
            r.conf_read_file()
        for k, v in conf.items():
            r.conf_set(k, v)
        r.connect(timeout=int(conf.get("client_mount_timeout", RBD_OP_TIMEOUT)))
    except Exception:
        _shutdown_quietly(r)
        raise
    return r


def _shutdown_quietly(r: Any) -> None:
    try:
        r.shutdown()
    except Exception:
        log.debug("rbd: shutdown of a cluster connection failed", exc_info=True)


def _in_background(fn: Callable[[], None], what: str) -> None:
    """Run a possibly long blocking teardown (close an image whose cluster is
    gone, shut a connection down) without holding anyone up."""

    def run() -> None:
        try:
            fn()
        except Exception:
            log.debug("rbd: %s failed", what, exc_info=True)

    threading.Thread(target=run, name=f"rbd-{what}", daemon=True).start()


class Connection:
    """One process's connection to one cluster, shared by channels."""

    def __init__(self, key: str, rados_conn: Any) -> None:
        self.key = key
        self.rados = rados_conn
        self.ioctxs: dict[str, Any] = {}
        self.users = 0
        self.retired = False

    def ioctx(self, pool: str) -> Any:
        io = self.ioctxs.get(pool)
        if io is None:
            io = self.rados.open_ioctx(pool)
            self.ioctxs[pool] = io
        return io

    def teardown(self) -> None:
        ioctxs, self.ioctxs = list(self.ioctxs.values()), {}
        r = self.rados

        def run() -> None:
            for io in ioctxs:
                try:
                    io.close()
                except Exception:
                    pass
            _shutdown_quietly(r)

        _in_background(run, "shutdown")


def parse_core_mask(mask: str | None) -> set[int]:
    """SPDK's core_mask ("0x3" or "[0,1]") -> CPUs; empty -> every online CPU."""
    if not mask:
        return set(range(os.cpu_count() or 1))
    m = mask.strip()
    if m.startswith("["):
        cpus: set[int] = set()
        for part in m.strip("[]").split(","):
            a, _, b = part.strip().partition("-")
            cpus.update(range(int(a), int(b or a) + 1))
        return cpus
    v = int(m, 16)
    return {i for i in range(v.bit_length()) if v >> i & 1}


def _unpin_thread(cpus: set[int]) -> None:
    """Give the calling thread (the control thread) ``cpus``: librados and
    librbd create their threads (messenger, finisher, op threads) from it,
    and they inherit its affinity instead of crowding the reactor's core."""
    try:
        os.sched_setaffinity(0, cpus)
    except (OSError, ValueError):
        log.debug("rbd: cannot set the librados threads' CPUs to %s", cpus, exc_info=True)


class _Process:
    """Per-process state: the connections and the control thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conns: dict[str, Connection] = {}
        self.pid = os.getpid()
        self.ctl = ThreadPoolExecutor(1, thread_name_prefix="rbd-ctl")
        self.ctl_cpus: set[int] | None = None

    def on_ctl(self, cpus: set[int]) -> None:
        """Runs on the control thread before it connects."""
        if cpus != self.ctl_cpus:
            _unpin_thread(cpus)
            self.ctl_cpus = cpus

    def acquire(self, cluster: dict[str, Any]) -> Connection:
        key = cluster_key(cluster)
        with self.lock:
            c = self.conns.get(key)
            if c is not None:
                c.users += 1
                return c
        r = connect(cluster)  # outside the lock: it blocks
        with self.lock:
            c = self.conns.get(key)
            if c is None:
                c = Connection(key, r)
                self.conns[key] = c
            else:
                _in_background(lambda: _shutdown_quietly(r), "shutdown")
            c.users += 1
            return c

    def release(self, c: Connection) -> None:
        with self.lock:
            c.users -= 1
            if c.users > 0:
                return
            if self.conns.get(c.key) is c:
                del self.conns[c.key]
        c.teardown()

    def retire(self, c: Connection) -> None:
        """The connection is lost: the next acquire connects anew; this one is
        torn down when its last user releases it."""
        with self.lock:
            c.retired = True
            if self.conns.get(c.key) is c:
                del self.conns[c.key]


_PROC: _Process | None = None


def proc() -> _Process:
    global _PROC
    if _PROC is None or _PROC.pid != os.getpid():
        _PROC = _Process()
    return _PROC


def rbd_errno(e: BaseException) -> int:
    n = getattr(e, "errno", None)
    return abs(int(n)) if isinstance(n, int) else errno.EIO


class RbdChannel(IoChannel):
    """One reactor's open image. States: opening -> ready -> lost -> opening ..."""

    def __init__(self, bdev: RbdBdev, loop: Any) -> None:
        super().__init__(bdev)
        self.rbdev = bdev
        self.bs = bdev.block_size
        self.loop = loop
        self.state = "opening"
        self.conn: Connection | None = None
        self.image: Any = None
        self.gen = 0  # bumped each time an image is opened
        self.gen_in_flight: collections.Counter[int] = collections.Counter()
        self.retired_images: dict[int, tuple[Any, Connection]] = {}
        self.pending: collections.deque[tuple[Any, ...]] = collections.deque()
        self.done: collections.deque[tuple[Any, ...]] = collections.deque()
        self.efd = -1
        self._timer: Any = None
        self._closing = False
        self.last_error = ""
        self.reconnects = 0
        if loop is not None:
            from ..runtime.loop import EPOLLIN, make_eventfd

            self.efd = make_eventfd()
            loop.add_fd(self.efd, EPOLLIN, self._on_completions)
            self._open_async()
        else:
            self._open_sync()

    # ------------------------------------------------------------ open / lose
    def _open_blocking(self) -> tuple[Connection, Any]:
        _, rbd = bindings()
        p = proc()
        if self.loop is not None:  # on the control thread of a reactor
            p.on_ctl(parse_core_mask(self.rbdev.cluster.get("core_mask")))
        c = p.acquire(self.rbdev.cluster)
        try:
            img = rbd.Image(c.ioctx(self.rbdev.pool_name), self.rbdev.rbd_name)
        except Exception:
            if _is_lost(c):
                p.retire(c)
            p.release(c)
            raise
        return c, img

    def _open_sync(self) -> None:
        try:
            self._opened(*self._open_blocking())
        except Exception as e:
            self._open_failed(e)

    def _open_async(self, first: bool = True) -> None:
        """Open the image on the control thread. The first open queues I/O
        meanwhile; a reconnect (after a loss) keeps failing it at once."""
        self.state = "opening" if first else "lost"
        fut: Future[tuple[Connection, Any]] = proc().ctl.submit(self._open_blocking)

        def done(f: Future[tuple[Connection, Any]]) -> None:
            try:
                res: tuple[Any, ...] = ("opened", f.result())
            except Exception as e:
                res = ("open_failed", e)
            self._post(res)

        fut.add_done_callback(done)

    def _opened(self, conn: Connection, image: Any) -> None:
        if self._closing:
            _in_background(image.close, "close")
            proc().release(conn)
            return
        self.conn, self.image = conn, image
        self.gen += 1
        self.state = "ready"
        if self.reconnects:
            log.warning("rbd bdev %s: reconnected to the cluster", self.bdev.name)
        pending, self.pending = self.pending, collections.deque()
        for op in pending:
            self._start(*op)

    def _open_failed(self, e: BaseException) -> None:
        self.last_error = f"{type(e).__name__}: {e}"
        log.warning("rbd bdev %s: cannot open the image: %s", self.bdev.name, self.last_error)
        pending, self.pending = self.pending, collections.deque()
        self.state = "lost"
        for op in pending:
            self._fail(op[0], op[1])
        self._schedule_reconnect()

    def _lost(self, rv: int) -> None:
        """An I/O of the current image failed with a connection-loss error."""
        if self.state != "ready":
            return
        self.last_error = f"cluster connection lost ({os.strerror(rv)})"
        log.warning("rbd bdev %s: %s; reconnecting", self.bdev.name, self.last_error)
        self.state = "lost"
        if self.conn is not None:
            proc().retire(self.conn)
            self.retired_images[self.gen] = (self.image, self.conn)
        self.image, self.conn = None, None
        self._reap(self.gen)
        self._schedule_reconnect()

    def _reap(self, gen: int) -> None:
        """Close a retired image once none of its I/O is in flight."""
        if self.gen_in_flight[gen] == 0 and gen in self.retired_images:
            img, conn = self.retired_images.pop(gen)

            def run() -> None:
                try:
                    img.close()
                finally:
                    proc().release(conn)

            _in_background(run, "close")

    def _schedule_reconnect(self) -> None:
        if self.loop is None or self._closing or self._timer is not None:
            return

        def fire() -> None:
            self._timer = None
            if not self._closing and self.state == "lost":
                self.reconnects += 1
                self._open_async(first=False)

        self._timer = self.loop.call_later(self.rbdev.reconnect_delay, fire)

    # ------------------------------------------------------------ completions
    def _post(self, item: tuple[Any, ...]) -> None:
        """Called from librbd's / the control thread: hand over to the reactor."""
        self.done.append(item)
        if self.efd >= 0:
            try:
                os.eventfd_write(self.efd, 1)
            except OSError:
                pass

    def _on_completions(self, _ev: int) -> None:
        try:
            os.eventfd_read(self.efd)
        except OSError:
            pass
        self._drain()

    def _drain(self) -> None:
        done = self.done
        while done:
            item = done.popleft()
            kind = item[0]
            if kind == "io":
                self._complete(*item[1:])
            elif kind == "opened":
                self._opened(*item[1])
            elif kind == "open_failed":
                self._open_failed(item[1])
        if self._closing and self.in_flight == 0:
            self._finish_close()

    def _complete(
        self, gen: int, op: str, cb: Any, into: memoryview | None, rv: int, data: Any
    ) -> None:
        self.in_flight -= 1
        self.gen_in_flight[gen] -= 1
        if rv < 0:
            self.stats.io_errors += 1
            if -rv in LOST_ERRNOS and gen == self.gen:
                self._lost(-rv)
            self._reap(gen)
            log.debug("rbd bdev %s: %s failed: %s", self.bdev.name, op, os.strerror(-rv))
            self._fail(op, cb)
            return
        self._reap(gen)
        try:
            if op == "read":
                mv = memoryview(data)
                if into is not None:
                    into[: len(mv)] = mv
                    mv = into[: len(mv)]
                cb(IoStatus.SUCCESS, mv)
            elif op == "fua_write":
                # the write is done: the flush that makes it durable follows
                self._start("flush", cb, None)
            else:
                cb(IoStatus.SUCCESS)
        except Exception:
            log.exception("rbd bdev %s: completion callback failed", self.bdev.name)

    def _fail(self, op: str, cb: Any) -> None:
        try:
            if op == "read":
                cb(IoStatus.FAILED, None)
            else:
                cb(IoStatus.FAILED)
        except Exception:
            log.exception("rbd bdev %s: completion callback failed", self.bdev.name)

    # ------------------------------------------------------------ submission
    def _submit(self, op: str, cb: Any, into: memoryview | None, *args: Any) -> None:
        if self.state == "ready":
            self._start(op, cb, into, *args)
        elif self.state == "opening" and len(self.pending) < MAX_PENDING:
            self.pending.append((op, cb, into, *args))
        else:
            self.stats.io_errors += 1
            self._fail(op, cb)

    def _start(self, op: str, cb: Any, into: memoryview | None, *args: Any) -> None:
        if self.state != "ready":
            self._submit(op, cb, into, *args)
            return
        img, gen = self.image, self.gen

        def oncomplete(comp: Any, data: Any = None) -> None:
            self._post(("io", gen, op, cb, into, comp.get_return_value(), data))

        self.in_flight += 1
        self.gen_in_flight[gen] += 1
        try:
            if op == "read":
                off, n = args
                comp = img.aio_read(off, n, oncomplete)
            elif op in ("write", "fua_write"):
                off, data = args
                comp = img.aio_write(bytes(data), off, oncomplete)
            elif op == "flush":
                comp = img.aio_flush(oncomplete)
            elif op == "discard":
                off, n = args
                comp = img.aio_discard(off, n, oncomplete)
            elif op == "write_zeroes":
                off, n = args
                comp = img.aio_write_zeroes(off, n, oncomplete)
            else:
                raise ValueError(op)
        except Exception as e:
            # librbd refused to queue it (image closed, bad range)
            self.in_flight -= 1
            self.gen_in_flight[gen] -= 1
            self.stats.io_errors += 1
            log.debug("rbd bdev %s: %s not submitted: %s", self.bdev.name, op, e)
            self._fail(op, cb)
            return
        if self.loop is None:  # synchronous mode (no reactor loop): wait here
            comp.wait_for_complete_and_cb()
            self._drain()

    # ------------------------------------------------------------ hooks
    def _do_read(
        self, offset_blocks: int, num_blocks: int, cb: ReadCallback, into: memoryview | None = None
    ) -> None:
        bs = self.bs
        self._submit("read", cb, into, offset_blocks * bs, num_blocks * bs)

    def _do_write(
        self, offset_blocks: int, data: memoryview, cb: Callback, fua: bool = False
    ) -> None:
        self._submit("fua_write" if fua else "write", cb, None, offset_blocks * self.bs, data)

    def _do_flush(self, cb: Callback) -> None:
        self._submit("flush", cb, None)

    def _do_compare_and_write(
        self,
        offset_blocks: int,
        compare: memoryview,
        write: memoryview,
        cb: CompareCallback,
        fua: bool,
    ) -> None:
        """Refused: a compare then a write would not be atomic against other
        reactors or against another client of the image (Ceph's python3-rbd 16
        has no aio_compare_and_write), and an atomic command that is not atomic
        is worse than none. NVMe answers Invalid Opcode, SCSI ILLEGAL REQUEST."""
        cb(IoStatus.UNSUPPORTED, -1)

    def _do_unmap(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        self._submit("discard", cb, None, offset_blocks * self.bs, num_blocks * self.bs)

    def _do_write_zeroes(self, offset_blocks: int, num_blocks: int, cb: Callback) -> None:
        self._submit("write_zeroes", cb, None, offset_blocks * self.bs, num_blocks * self.bs)

    # ------------------------------------------------------------ teardown
    def close(self) -> None:
        self.removed = True
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for op in list(self.pending):
            self._fail(op[0], op[1])
        self.pending.clear()
        if self.in_flight == 0:
            self._finish_close()

    def _finish_close(self) -> None:
        if self.image is not None and self.conn is not None:
            self.retired_images[self.gen] = (self.image, self.conn)
            self.image, self.conn = None, None
        for gen in list(self.retired_images):
            self._reap(gen)
        if self.efd >= 0 and self.loop is not None:
            self.loop.remove_fd(self.efd)
            os.close(self.efd)
            self.efd = -1
        self.state = "closed"

    def info(self) -> dict[str, Any]:
        return {"state": self.state, "reconnects": self.reconnects, "last_error": self.last_error}


def _is_lost(c: Connection) -> bool:
    """After an open error: is the connection itself still usable?"""
    try:
        c.rados.get_fsid()
        return False
    except Exception:
        return True


class RbdBdev(Bdev):
    MODULE = "rbd"
    PRODUCT = "Ceph Rbd Disk"

    pool_name: str = ""
    rbd_name: str = ""
    cluster_name: str = ""
    # what a process needs to connect: user_id, config_file, key_file, config_param
    cluster: dict[str, Any]
    reconnect_delay: float = RECONNECT_DELAY

    def _description(self) -> dict[str, Any]:
        return {
            "pool_name": self.pool_name,
            "rbd_name": self.rbd_name,
            "cluster_name": self.cluster_name,
            "cluster": dict(self.cluster),
            "reconnect_delay": self.reconnect_delay,
        }

    def _restore(self, d: dict[str, Any]) -> None:
        self.pool_name = str(d["pool_name"])
        self.rbd_name = str(d["rbd_name"])
        self.cluster_name = str(d.get("cluster_name") or "")
        self.cluster = dict(d.get("cluster") or {})
        self.reconnect_delay = float(d.get("reconnect_delay") or RECONNECT_DELAY)

    def update_description(self, d: dict[str, Any]) -> None:
        """A new description from the supervisor (after a resize)."""
        self.num_blocks = int(d["num_blocks"])

    def open_channel(self, loop: Any = None) -> IoChannel:
        return RbdChannel(self, loop)

    def driver_specific(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "pool_name": self.pool_name,
            "rbd_name": self.rbd_name,
        }
        if self.cluster_name:
            d["cluster_name"] = self.cluster_name
        else:
            if self.cluster.get("user_id"):
                d["user_id"] = self.cluster["user_id"]
            if self.cluster.get("config_param"):
                d["config"] = dict(self.cluster["config_param"])
        return {"rbd": d}
