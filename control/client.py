"""RPC client for a running blockfabric instance.

Addresses: ``ipc://PATH`` and ``tcp://HOST:PORT`` speak the native protocol
(zmq DEALER, one msgpack JSON-RPC message per frame); a plain path (``/var/tmp/
spdk.sock``) or ``unix://PATH`` speaks SPDK's JSON-text protocol over a unix
stream socket, as SPDK's rpc.py does.

    with RpcClient("ipc:///var/tmp/blockfabric.sock", timeout=5) as c:
        c.call("bdev_get_bdevs", {"name": "Malloc0"})
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from typing import Any

import msgpack
import zmq

from .addresses import ipc_path
from .jsonrpc import JsonStreamDecoder, StreamError


class RpcClientError(Exception):
    """The server answered with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            d["data"] = self.data
        return d


class RpcConnectionError(ConnectionError):
    """The target cannot be reached at all (no socket file, refused)."""


def _unix_path(addr: str) -> str | None:
    if addr.startswith("unix://"):
        return addr[len("unix://") :]
    if addr.startswith("/") or addr.startswith("./"):
        return addr
    return None


class RpcClient:
    def __init__(
        self, addr: str, timeout: float = 60.0, zmq_context: zmq.Context | None = None
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.addr = addr
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._zctx = zmq_context
        self._zsock: zmq.Socket | None = None
        self._usock: socket.socket | None = None
        self._udec: JsonStreamDecoder | None = None
        self._upath = _unix_path(addr)
        if self._upath is None and not addr.startswith(("ipc://", "tcp://")):
            raise ValueError(f"unsupported RPC address {addr!r} (ipc://, tcp://, or a unix path)")

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._zsock is not None:
            self._zsock.close(linger=0)
            self._zsock = None
        if self._usock is not None:
            self._usock.close()
            self._usock = None

    def _timeout_error(self) -> TimeoutError:
        return TimeoutError(
            f"no answer from {self.addr} in {self.timeout:g}s: is the target running?"
        )

    # --- public -----------------------------------------------------------------
    def call(self, method: str, params: Any = None) -> Any:
        """Run one method; returns its result or raises RpcClientError/TimeoutError."""
        req_id = next(self._ids)
        req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": req_id}
        if params is not None:
            req["params"] = params
        resp = self._roundtrip_unix(req) if self._upath is not None else self._roundtrip_zmq(req)
        if not isinstance(resp, dict):
            raise RpcClientError(-32603, f"malformed response: {resp!r}")
        err = resp.get("error")
        if err is not None:
            if not isinstance(err, dict):
                raise RpcClientError(-32603, f"malformed error object: {err!r}")
            raise RpcClientError(
                int(err.get("code", -32603)), str(err.get("message", "")), err.get("data")
            )
        return resp.get("result")

    # --- zmq ----------------------------------------------------------------------
    def _zsocket(self) -> zmq.Socket:
        if self._zsock is None:
            path = ipc_path(self.addr)
            if path is not None and not os.path.exists(path):
                # zmq would connect lazily and only time out: say what is wrong now
                raise RpcConnectionError(
                    f"{self.addr}: socket file missing: is the target running?"
                )
            ctx = self._zctx or zmq.Context.instance()
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(self.addr)
            self._zsock = s
        return self._zsock

    def _roundtrip_zmq(self, req: dict[str, Any]) -> Any:
        s = self._zsocket()
        s.send(msgpack.packb(req, use_bin_type=True))
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not s.poll(int(left * 1000) + 1, zmq.POLLIN):
                # a late answer would be taken for the next call's: start afresh
                self.close()
                raise self._timeout_error()
            frames = s.recv_multipart()
            try:
                resp = msgpack.unpackb(frames[-1], raw=False, strict_map_key=False)
            except Exception as e:
                raise RpcClientError(-32700, f"undecodable response: {e}") from e
            # skip a stale answer to an earlier, timed-out request
            if isinstance(resp, dict) and resp.get("id") not in (req["id"], None):
                continue
            return resp

    # --- SPDK unix socket ---------------------------------------------------------
    def _roundtrip_unix(self, req: dict[str, Any]) -> Any:
        assert self._upath is not None
        if self._usock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self._upath)
            except OSError as e:
                s.close()
                raise RpcConnectionError(
                    f"cannot connect to {self._upath}: {e.strerror}: is the target running?"
                ) from e
            self._usock = s
            self._udec = JsonStreamDecoder()
        assert self._udec is not None
        s = self._usock
        s.settimeout(self.timeout)
        s.sendall(json.dumps(req).encode())
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise self._timeout_error()
            s.settimeout(left)
            try:
                data = s.recv(65536)
            except TimeoutError:
                self.close()
                raise self._timeout_error() from None
            if not data:
                self.close()
                raise RpcConnectionError(f"{self._upath}: connection closed before the answer")
            for item in self._udec.feed(data):
                if isinstance(item, StreamError):
                    self.close()
                    raise RpcClientError(item.code, item.message)
                resp = json.loads(item)
                if isinstance(resp, dict) and resp.get("id") not in (req["id"], None):
                    continue
                return resp
