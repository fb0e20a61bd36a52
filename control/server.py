"""The supervisor's RPC listeners, driven by its EventLoop.

* zmq ROUTER (``ipc://`` or ``tcp://``): one msgpack-encoded JSON-RPC message per
  zmq frame; the frames before it (routing id, and the empty delimiter a REQ
  client adds) are echoed back unchanged, so DEALER and REQ clients both work.
* optional SPDK-compatible unix stream socket (e.g. /var/tmp/spdk.sock): JSON
  text objects concatenated with no framing, exactly what SPDK's rpc.py sends;
  answers are JSON text. Lets SPDK's own scripts drive blockfabric.

Socket files are created mode 0600 (RPC = full control of the target) and
removed by `close()`. Binding refuses a path where a live server answers, and
removes a stale file left by a crashed one.

Requests run synchronously in the loop thread through `jsonrpc.handle_raw`.

Limits (each bounds what one client can make the supervisor hold):

* a request: `jsonrpc.MAX_REQUEST_BYTES` (4 MiB);
* an answer: ``max_result_bytes`` (default `jsonrpc.MAX_RESULT_BYTES`, 16 MiB,
  or ``BLOCKFABRIC_RPC_MAX_RESULT_BYTES``): a larger result is answered with a
  -32603 error naming the limit instead of being encoded;
* unsent answers per SPDK connection: `_MAX_PENDING_OUT` (1 MiB): past it the
  connection is not read and its already-framed requests (at most one receive,
  64 KiB, of them) wait unanswered, so one connection holds at most about
  4 MiB (a partial request) + 1 MiB + one answer;
* unsent answers of all SPDK connections together: `_MAX_TOTAL_OUT` (16 MiB):
  past it no connection is served until the clients have read half of it, so
  clients that never read cannot make the supervisor hold
  ``max_connections`` x the per-connection bound;
* requests answered per connection per wake-up: `_MAX_SERVE_PER_WAKE`, so a
  connection full of requests cannot starve the ZeroMQ socket and the others;
* SPDK-socket connections at once: ``max_connections`` (default
  `DEFAULT_MAX_CONNECTIONS`, or ``BLOCKFABRIC_RPC_MAX_CONNECTIONS``): one more is
  answered with a JSON-RPC error saying so and closed; the first refusal of a
  burst is logged, the rest are counted (``refused``) and summed up in one line
  when a connection is accepted again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from ..runtime.loop import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, Loop
from .addresses import ipc_path
from .errors import INTERNAL_ERROR
from .jsonrpc import (
    MAX_REQUEST_BYTES,
    MAX_RESULT_BYTES,
    JsonStreamDecoder,
    StreamError,
    encode,
    error_response,
    handle_raw,
)

log = logging.getLogger(__name__)

Dispatch = Callable[[str, Any], Any]

SOCKET_MODE = 0o600
# most zmq messages handled per wake-up before other fds get a turn
_MAX_BATCH = 64
# messages queued per ZeroMQ peer and direction (ZeroMQ's default is 1000)
_ZMQ_HWM = 64
_RECV_CHUNK = 65536
# stop reading from an SPDK client that does not read its answers
_MAX_PENDING_OUT = 1024 * 1024
# ... and from all of them together
_MAX_TOTAL_OUT = 16 * 1024 * 1024
# requests answered per connection before the loop serves other fds
_MAX_SERVE_PER_WAKE = 16
# SPDK-socket clients at once (rpc.py opens one per command; scripts run a few)
DEFAULT_MAX_CONNECTIONS = 64
# bytes read (and dropped) from a refused connection so that closing it does not reset it
_REFUSE_DRAIN = 1024 * 1024
ENV_MAX_CONNECTIONS = "BLOCKFABRIC_RPC_MAX_CONNECTIONS"
ENV_MAX_RESULT = "BLOCKFABRIC_RPC_MAX_RESULT_BYTES"


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw, 0)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: not an integer") from None
    if v < minimum:
        raise ValueError(f"{name}={v}: must be >= {minimum}")
    return v


def _prepare_unix_path(path: str) -> None:
    """Fail if a live server owns ``path``; remove a stale socket file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: left over by a process that died
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path} is in use by a running server")


class _SpdkConn:
    __slots__ = ("sock", "fd", "decoder", "queue", "out", "closing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.decoder = JsonStreamDecoder(MAX_REQUEST_BYTES)
        # requests framed but not answered yet: served only while ``out`` has
        # room, so one read full of small requests with big answers cannot pile
        # up more than one answer past _MAX_PENDING_OUT
        self.queue: deque[bytes | StreamError] = deque()
        self.out = bytearray()
        self.closing = False


def _int_opt(sock: zmq.Socket[bytes], opt: int) -> int:
    """An integer socket option (pyzmq types getsockopt as int | bytes | str)."""
    v = sock.getsockopt(opt)
    if not isinstance(v, int):
        raise TypeError(f"zmq option {opt} is not an integer: {v!r}")
    return v


class RpcServer:
    def __init__(
        self,
        loop: Loop,
        dispatch: Dispatch,
        zmq_addr: str,
        spdk_path: str | None = None,
        zmq_context: zmq.Context | None = None,
        max_connections: int | None = None,
        max_result_bytes: int | None = None,
    ) -> None:
        self.loop = loop
        self.dispatch = dispatch
        self.max_connections = (
            max_connections
            if max_connections is not None
            else _env_int(ENV_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS, 1)
        )
        self.max_result = (
            max_result_bytes
            if max_result_bytes is not None
            else _env_int(ENV_MAX_RESULT, MAX_RESULT_BYTES, 1024)
        )
        self.refused = 0  # SPDK-socket connections refused over max_connections
        self._refused_burst = 0
        self._own_ctx = zmq_context is None
        self.ctx = zmq_context or zmq.Context()
        self._files: list[str] = []
        self._conns: dict[int, _SpdkConn] = {}
        self._out_total = 0  # unsent answer bytes of every SPDK connection
        self._starved: set[int] = set()  # connections waiting for _MAX_TOTAL_OUT room
        self._listener: socket.socket | None = None
        self.spdk_path = spdk_path
        self.closed = False

        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # a bit over the limit still reaches handle_raw and gets its -32600 answer;
        # far bigger ones make zmq drop the peer before buffering them
        self.sock.setsockopt(zmq.MAXMSGSIZE, 4 * MAX_REQUEST_BYTES)
        # per-peer queues: a client that sends without reading its answers
        # gets them dropped past _ZMQ_HWM instead of piling up in ZeroMQ
        self.sock.setsockopt(zmq.SNDHWM, _ZMQ_HWM)
        self.sock.setsockopt(zmq.RCVHWM, _ZMQ_HWM)
        try:
            path = ipc_path(zmq_addr)
            if path is not None:
                _prepare_unix_path(path)
            self.sock.bind(zmq_addr)
            if path is not None:
                os.chmod(path, SOCKET_MODE)
                self._files.append(path)
            # the address actually bound (tcp://127.0.0.1:0 -> real port)
            self.addr = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self._zfd: int = _int_opt(self.sock, zmq.FD)
            loop.add_fd(self._zfd, EPOLLIN, self._on_zmq)
            if spdk_path is not None:
                self._open_spdk(spdk_path)
        except Exception:
            self.close()
            raise
        # messages may have queued before the fd was registered (edge-triggered)
        loop.call_soon(lambda: self._on_zmq(EPOLLIN))

    # --- zmq ROUTER -----------------------------------------------------------
    def _on_zmq(self, _events: int) -> None:
        if self.closed:
            return
        sock = self.sock
        handled = 0
        # zmq's fd is edge-triggered: drain until EVENTS says nothing is left
        while _int_opt(sock, zmq.EVENTS) & zmq.POLLIN:
            if handled >= _MAX_BATCH:
                self.loop.call_soon(lambda: self._on_zmq(EPOLLIN))
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            handled += 1
            if len(frames) < 2:
                continue  # no routing id: cannot answer
            envelope, payload = frames[:-1], frames[-1]
            resp = handle_raw(payload, "msgpack", self.dispatch, self.max_result)
            if resp is None:
                continue
            try:
                sock.send_multipart([*envelope, resp], zmq.NOBLOCK)
            except zmq.ZMQError as e:  # peer gone or its queue full: drop the answer
                log.debug("rpc answer dropped: %s", e)

    # --- SPDK-compatible unix stream listener ---------------------------------
    def _open_spdk(self, path: str) -> None:
        _prepare_unix_path(path)
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # umask 0177 would race with other threads; bind then chmod before listen,
            # so no client can connect while the file still has the default mode
            ls.bind(path)
            self._files.append(path)
            os.chmod(path, SOCKET_MODE)
            ls.listen(64)
            ls.setblocking(False)
        except Exception:
            ls.close()
            raise
        self._listener = ls
        self.loop.add_fd(ls.fileno(), EPOLLIN, self._on_accept)

    def _on_accept(self, _events: int) -> None:
        ls = self._listener
        if ls is None:
            return
        while True:
            try:
                s, _ = ls.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE etc.: try again on the next wake-up
                log.warning("rpc accept failed: %s", e)
                return
            if len(self._conns) >= self.max_connections:
                self._refuse(s)
                continue
            if self._refused_burst:
                log.warning(
                    "rpc: %d SPDK-socket connection(s) refused over the limit of %d",
                    self._refused_burst,
                    self.max_connections,
                )
                self._refused_burst = 0
            s.setblocking(False)
            c = _SpdkConn(s)
            self._conns[c.fd] = c
            self.loop.add_fd(c.fd, EPOLLIN, self._conn_handler(c))

    def _refuse(self, s: socket.socket) -> None:
        """Answer a connection over the limit with an error and close it."""
        self.refused += 1
        self._refused_burst += 1
        if self._refused_burst == 1:
            log.warning(
                "rpc: refusing SPDK-socket connections: %d open, the limit is %d (%s)",
                len(self._conns),
                self.max_connections,
                ENV_MAX_CONNECTIONS,
            )
        msg = (
            f"too many RPC connections: {len(self._conns)} open, "
            f"the limit is {self.max_connections} ({ENV_MAX_CONNECTIONS})"
        )
        with contextlib.suppress(OSError):
            s.setblocking(False)
            s.send(encode(error_response(INTERNAL_ERROR, msg), "json") + b"\n")
            # what the client already sent is dropped unread; a close with unread
            # bytes would reset the connection and the client could lose the answer
            for _ in range(_REFUSE_DRAIN // _RECV_CHUNK):
                if not s.recv(_RECV_CHUNK):
                    break
        with contextlib.suppress(OSError):
            s.close()

    def _conn_handler(self, c: _SpdkConn) -> Callable[[int], None]:
        return lambda events: self._on_conn(c, events)

    def _on_conn(self, c: _SpdkConn, events: int) -> None:
        if events & EPOLLOUT:
            self._flush(c)
            self._serve(c)
        if events & (EPOLLIN | EPOLLERR | EPOLLHUP) and not c.closing:
            self._read(c)
        self._rearm(c)

    def _rearm(self, c: _SpdkConn) -> None:
        if c.fd not in self._conns:
            return
        if c.closing and not c.out and not c.queue:
            self._drop(c)
            return
        reading = not c.closing and not c.queue and len(c.out) < _MAX_PENDING_OUT
        want = EPOLLIN if reading else 0
        if c.out:
            want |= EPOLLOUT
        elif c.queue and c.fd not in self._starved:
            want |= EPOLLOUT  # writable at once: serve the rest on the next turn
        self.loop.modify_fd(c.fd, want)

    def _resume_starved(self) -> None:
        """Serve the connections that waited for room in _MAX_TOTAL_OUT."""
        if not self._starved or self._out_total > _MAX_TOTAL_OUT // 2:
            return
        fds, self._starved = self._starved, set()
        for fd in fds:
            c = self._conns.get(fd)
            if c is not None:
                self._rearm(c)  # EPOLLOUT fires on the next turn and serves it

    def _read(self, c: _SpdkConn) -> None:
        while len(c.out) < _MAX_PENDING_OUT and not c.queue:
            try:
                data = c.sock.recv(_RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(c)
                return
            if not data:
                c.closing = True  # peer closed its side: answer what we have, then close
                return
            c.queue.extend(c.decoder.feed(data))
            self._serve(c)
            if c.fd not in self._conns or c.closing:
                return

    def _serve(self, c: _SpdkConn) -> None:
        """Answer queued requests while the unsent output has room."""
        budget = _MAX_SERVE_PER_WAKE
        while c.queue and len(c.out) < _MAX_PENDING_OUT and c.fd in self._conns:
            if self._out_total >= _MAX_TOTAL_OUT:
                self._starved.add(c.fd)
                break
            if budget == 0:
                break  # _rearm keeps EPOLLOUT: the rest on the next loop turn
            budget -= 1
            item = c.queue.popleft()
            if isinstance(item, StreamError):
                resp: bytes | None = item.response()
                c.closing = True  # the stream cannot be resynchronised
                c.queue.clear()
            else:
                resp = handle_raw(item, "json", self.dispatch, self.max_result)
            if resp is not None:
                c.out += resp + b"\n"
                self._out_total += len(resp) + 1
        if c.fd in self._conns:
            self._flush(c)

    def _flush(self, c: _SpdkConn) -> None:
        sent = 0
        try:
            while len(c.out) > sent:
                try:
                    n = c.sock.send(memoryview(c.out)[sent:])
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    self._drop(c)
                    return
                sent += n
        finally:
            if sent and c.fd in self._conns:
                del c.out[:sent]  # one memmove per flush, not one per send
                self._out_total -= sent
                self._resume_starved()

    def _drop(self, c: _SpdkConn) -> None:
        if self._conns.pop(c.fd, None) is None:
            return
        self._out_total -= len(c.out)
        c.out.clear()
        self._starved.discard(c.fd)
        self.loop.remove_fd(c.fd)
        with contextlib.suppress(OSError):
            c.sock.close()
        self._resume_starved()

    # --- shutdown -------------------------------------------------------------
    def close(self) -> None:
        """Close every socket and remove the socket files (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for c in list(self._conns.values()):
            self._drop(c)
        if self._listener is not None:
            self.loop.remove_fd(self._listener.fileno())
            self._listener.close()
            self._listener = None
        if hasattr(self, "_zfd"):
            self.loop.remove_fd(self._zfd)
        self.sock.close(linger=0)
        if self._own_ctx:
            self.ctx.term()
        for path in self._files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._files.clear()
