"""RPC floods against a running daemon: many SPDK-socket clients (more than
the connection cap), many requests each, oversized requests on both
listeners, a client that never reads its answers. Throughout, a well-behaved
zmq client keeps getting answers and the supervisor's RSS stays under the
bound its limits imply; afterwards the daemon serves as before."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import psutil
import pytest
import zmq

from blockfabric.control.client import RpcClient, RpcClientError
from blockfabric.control.jsonrpc import MAX_REQUEST_BYTES, MAX_RESULT_BYTES
from blockfabric.control.server import _MAX_PENDING_OUT, _RECV_CHUNK

pytestmark = pytest.mark.e2e

MAX_CONNS = 8
FLOOD_CLIENTS = 24
REQUESTS_EACH = 20


def _req(method: str, params: Any = None, i: int = 1) -> bytes:
    r: dict[str, Any] = {"jsonrpc": "2.0", "id": i, "method": method}
    if params is not None:
        r["params"] = params
    return json.dumps(r).encode()


def _answers(s: socket.socket, n: int, timeout: float = 60) -> list[dict[str, Any]]:
    """Read until ``n`` JSON answers arrived or the peer closed."""
    s.settimeout(timeout)
    dec = json.JSONDecoder()
    buf, out = "", []
    while len(out) < n:
        d = s.recv(1 << 16)
        if not d:
            break
        buf += d.decode()
        while True:
            buf = buf.lstrip()
            if not buf:
                break
            try:
                obj, end = dec.raw_decode(buf)
            except ValueError:
                break
            out.append(obj)
            buf = buf[end:]
    return out


class Flood:
    def __init__(self, spdk: str, zaddr: str) -> None:
        self.spdk, self.zaddr = spdk, zaddr
        self.served = 0
        self.refused = 0
        self.reset = 0
        self.oversized_answered = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def _count(self, attr: str) -> None:
        with self.lock:
            setattr(self, attr, getattr(self, attr) + 1)

    def client(self, k: int) -> None:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.spdk)
            with s:
                try:
                    s.sendall(
                        b"".join(_req("spdk_get_version", None, i) for i in range(REQUESTS_EACH))
                    )
                except BrokenPipeError:
                    pass  # refused and closed before we were done: the error is still there
                got = _answers(s, REQUESTS_EACH)
                if len(got) == 1 and "too many RPC connections" in got[0].get("error", {}).get(
                    "message", ""
                ):
                    self._count("refused")
                elif len(got) == REQUESTS_EACH and all("result" in g for g in got):
                    self._count("served")
                else:
                    self.errors.append(f"client {k}: {got[:2]}")
        except ConnectionResetError:
            # refused while requests it sent after the server's drain were unread:
            # the close resets the connection (a refusal too, without the message)
            self._count("reset")
        except OSError as e:
            self.errors.append(f"client {k}: {e}")

    def oversized_spdk(self) -> None:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.spdk)
            with s:
                # a string that never ends: over 4 MiB without the end of the value
                s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"' + b"x" * (MAX_REQUEST_BYTES + 4096))
                got = _answers(s, 1)
                msg = got[0]["error"]["message"] if got else ""
                if "too large" in msg or "too many RPC connections" in msg:
                    self._count("oversized_answered")
                else:
                    self.errors.append(f"oversized spdk: {got}")
        except OSError as e:  # the server may close while we still send
            if "too large" not in str(e):
                self._count("oversized_answered")

    def oversized_zmq(self) -> None:
        ctx = zmq.Context()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.zaddr)
        try:
            big = msgpack.packb(
                {
                    "jsonrpc": "2.0",
                    "id": 9,
                    "method": "spdk_get_version",
                    "params": ["y" * (MAX_REQUEST_BYTES + 1)],
                }
            )
            s.send(big)
            if s.poll(30000):
                r = msgpack.unpackb(s.recv(), raw=False)
                if r["error"]["code"] == -32600 and "too large" in r["error"]["message"]:
                    self._count("oversized_answered")
                    return
                self.errors.append(f"oversized zmq: {r}")
            else:
                self.errors.append("oversized zmq: no answer")
        finally:
            s.close()
            ctx.term()


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def test_rpc_flood(daemon_factory: Any, run_dir: Path) -> None:
    spdk = str(run_dir / "spdk.sock")
    d = daemon_factory(extra=["--spdk-rpc", spdk])
    d.env["BLOCKFABRIC_RPC_MAX_CONNECTIONS"] = str(MAX_CONNS)
    d.start()
    pid = d.rpc("blockfabric_get_status")["pid"]
    base = _rss(pid)
    # what the limits let the flood make the supervisor hold, at most
    # per SPDK connection: a partial request, one receive of framed requests, the
    # unsent output bound and one answer; per zmq message: up to MAXMSGSIZE
    per_conn = MAX_REQUEST_BYTES + _RECV_CHUNK + _MAX_PENDING_OUT + MAX_RESULT_BYTES
    bound = MAX_CONNS * per_conn + 2 * 4 * MAX_REQUEST_BYTES
    f = Flood(spdk, d.rpc_addr)
    peak = base
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # a client that sends a lot and never reads: the server stops reading it
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hog.connect(spdk)
    hog.setblocking(False)
    hog_req = _req("rpc_get_methods", {"include_aliases": True})
    hog_sent = 0
    threads = [threading.Thread(target=f.client, args=(k,)) for k in range(FLOOD_CLIENTS)]
    threads += [threading.Thread(target=f.oversized_spdk) for _ in range(2)]
    threads += [threading.Thread(target=f.oversized_zmq) for _ in range(2)]
    latencies: list[float] = []
    try:
        for t in threads:
            t.start()
        with RpcClient(d.rpc_addr, timeout=30) as c:
            while any(t.is_alive() for t in threads) or len(latencies) < 20:
                try:
                    while hog_sent < 4000:
                        hog.send(hog_req)
                        hog_sent += 1
                except BlockingIOError:
                    pass
                t0 = time.monotonic()
                assert c.call("spdk_get_version")["version"]
                latencies.append(time.monotonic() - t0)
        for t in threads:
            t.join(60)
    finally:
        stop.set()
        sampler.join(5)
        hog.close()
    print(
        f"\nRPC flood: {FLOOD_CLIENTS} SPDK clients x {REQUESTS_EACH} requests "
        f"(cap {MAX_CONNS}): {f.served} served, {f.refused} refused with the error, "
        f"{f.reset} refused by a reset; "
        f"{f.oversized_answered}/4 oversized requests refused; non-reading client sent "
        f"{hog_sent} requests; well-behaved client: {len(latencies)} calls, "
        f"max latency {max(latencies) * 1000:.0f} ms; supervisor RSS {base >> 20} MiB -> "
        f"peak {peak >> 20} MiB (bound from the limits: +{bound >> 20} MiB)"
    )
    assert not f.errors, f.errors[:5]
    assert f.served + f.refused + f.reset == FLOOD_CLIENTS and f.served >= MAX_CONNS - 1
    assert f.refused >= f.reset, "most refused clients read the error"
    assert f.oversized_answered == 4
    assert max(latencies) < 10, latencies
    assert peak - base < bound, (peak - base, bound)
    # all gone: the daemon serves both listeners as before, and logged the refusals
    deadline = time.monotonic() + 10
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(spdk)
        with s:
            s.sendall(_req("spdk_get_version"))
            got = _answers(s, 1)
        if got and "result" in got[0]:
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.1)
    if f.refused:
        assert "refusing SPDK-socket connections" in d.log()


def test_result_limit_on_a_daemon(daemon_factory: Any) -> None:
    d = daemon_factory()
    d.env["BLOCKFABRIC_RPC_MAX_RESULT_BYTES"] = "2048"
    d.start()
    with pytest.raises(RpcClientError) as e:
        d.rpc("rpc_get_methods", {"include_aliases": True})
    assert e.value.code == -32603 and "2048" in e.value.message
    assert "BLOCKFABRIC_RPC_MAX_RESULT_BYTES" in e.value.message
    assert d.rpc("spdk_get_version")["version"]
