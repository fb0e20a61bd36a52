"""RPC limits: the size of one answer, concurrent SPDK-socket connections."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import msgpack
import pytest
import zmq

from blockfabric.actors.loop import EPOLLIN, EventLoop, make_eventfd
from blockfabric.control import jsonrpc
from blockfabric.control.client import RpcClient, RpcClientError
from blockfabric.control.errors import RpcError
from blockfabric.control.server import ENV_MAX_CONNECTIONS, ENV_MAX_RESULT, RpcServer


def dispatch(method, params):
    if method == "echo":
        return params
    if method == "blob":  # a result of params["n"] bytes
        return "x" * params["n"]
    if method == "many":  # a result of params["n"] small objects
        return [{"i": i} for i in range(params["n"])]
    if method == "deep":
        v: object = 1
        for _ in range(params["n"]):
            v = [v]
        return v
    raise RpcError(-32601, f"Method not found: {method}")


def _req(method, params, i=1):
    return {"jsonrpc": "2.0", "id": i, "method": method, "params": params}


def _raw(obj, enc, limit):
    out = jsonrpc.handle_raw(jsonrpc.encode(obj, enc), enc, dispatch, limit)
    assert out is not None
    return jsonrpc.decode(out, enc)


@pytest.mark.parametrize("enc", ["json", "msgpack"])
def test_result_over_the_limit_is_an_error_naming_it(enc):
    ok = _raw(_req("blob", {"n": 1000}), enc, 4096)
    assert ok["result"] == "x" * 1000
    r = _raw(_req("blob", {"n": 5000}), enc, 4096)
    assert r["id"] == 1 and r["error"]["code"] == -32603
    msg = r["error"]["message"]
    assert "4096" in msg and "BLOCKFABRIC_RPC_MAX_RESULT_BYTES" in msg and "too large" in msg
    # escapes make JSON longer than the string: the exact size is checked too
    r = _raw(_req("echo", {"s": "\x01" * 1000}), enc, 4096)
    if enc == "json":
        assert r["error"]["code"] == -32603  # 6000 bytes of \u0001
    else:
        assert r["result"] == {"s": "\x01" * 1000}


@pytest.mark.parametrize("enc", ["json", "msgpack"])
def test_batch_answer_is_bounded_as_a_whole(enc):
    batch = [_req("blob", {"n": 1500}, i) for i in range(10)]
    out = _raw(batch, enc, 8192)
    assert [r["id"] for r in out] == list(range(10))
    good = [r for r in out if "result" in r]
    bad = [r for r in out if "error" in r]
    assert 3 <= len(good) <= 5 and len(good) + len(bad) == 10
    assert all("8192" in r["error"]["message"] for r in bad)
    raw = jsonrpc.handle_raw(jsonrpc.encode(batch, enc), enc, dispatch, 8192)
    assert raw is not None and len(raw) < 8192 + 10 * 200


def test_huge_result_is_refused_without_encoding_it(monkeypatch):
    calls = []
    real = jsonrpc.encode

    def spy(obj, enc):
        calls.append(obj)
        return real(obj, enc)

    monkeypatch.setattr(jsonrpc, "encode", spy)
    t = time.monotonic()
    r = jsonrpc.decode(
        jsonrpc.handle_raw(
            json.dumps(_req("many", {"n": 2_000_000})).encode(), "json", dispatch, 1 << 16
        ),
        "json",
    )
    assert r["error"]["code"] == -32603 and "65536" in r["error"]["message"]
    # only the small error answer was encoded, never the 2-million-element result
    assert all(not (isinstance(o, dict) and "result" in o) for o in calls)
    assert jsonrpc._size_at_least(list(range(10**6)), 1000) > 1000
    assert time.monotonic() - t < 30


def test_too_deep_result_is_an_error():
    r = _raw(_req("deep", {"n": 10000}), "json", 1 << 20)
    assert r["error"]["code"] == -32603 and "deep" in r["error"]["message"]
    assert "result" in _raw(_req("deep", {"n": 50}), "msgpack", 1 << 20)


# ------------------------------------------------------------- the server
class Running:
    def __init__(self, tmp_path, **kw):
        self.loop = EventLoop(poll_mode="blocking")
        self.zctx = zmq.Context()
        self.zaddr = f"ipc://{tmp_path}/z.sock"
        self.spdk = str(tmp_path / "spdk.sock")
        self.server = RpcServer(
            self.loop, dispatch, self.zaddr, spdk_path=self.spdk, zmq_context=self.zctx, **kw
        )
        self.wake = make_eventfd()
        self.loop.add_fd(self.wake, EPOLLIN, lambda ev: os.eventfd_read(self.wake))
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    def stop(self):
        self.loop.stop()
        os.eventfd_write(self.wake, 1)
        self.thread.join(5)
        assert not self.thread.is_alive()
        self.server.close()
        self.loop.close()
        os.close(self.wake)
        self.zctx.term()


def _spdk_call(path, method, params, timeout=5.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    try:
        s.sendall(json.dumps(_req(method, params)).encode())
        return _read_json(s)
    finally:
        s.close()


def _read_json(s):
    buf = b""
    while True:
        d = s.recv(1 << 20)
        if not d:
            return json.loads(buf) if buf.strip() else None
        buf += d
        try:
            return json.loads(buf)
        except ValueError:
            continue


def test_connection_cap_refuses_with_an_error_and_logs_once(tmp_path, caplog):
    r = Running(tmp_path, max_connections=3)
    held = []
    try:
        for _ in range(3):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(r.spdk)
            held.append(s)
        # the held ones are accepted (they answer)
        held[0].sendall(json.dumps(_req("echo", [1])).encode())
        assert _read_json_one(held[0])["result"] == [1]
        with caplog.at_level(logging.WARNING, logger="blockfabric.control.server"):
            for _ in range(5):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(5)
                s.connect(r.spdk)
                ans = _read_json(s)  # the error, then EOF
                s.close()
                assert ans["error"]["code"] == -32603
                assert "too many RPC connections" in ans["error"]["message"]
                assert "limit is 3" in ans["error"]["message"]
            deadline = time.monotonic() + 5
            while r.server.refused < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert r.server.refused == 5
            refusals = [m for m in caplog.messages if "refusing" in m]
            assert len(refusals) == 1, caplog.messages  # one line for the burst
            # capacity back: the next client is served, and the burst is summed up
            held.pop().close()
            deadline = time.monotonic() + 5
            ans = None
            while time.monotonic() < deadline:
                try:
                    ans = _spdk_call(r.spdk, "echo", {"back": True})
                except (BrokenPipeError, ConnectionResetError):
                    # refused before the close was seen, and the refusal's
                    # close beat our send: the same as a refusal, retry
                    ans = {}
                if "result" in ans:
                    break
                time.sleep(0.05)
            assert ans is not None and ans["result"] == {"back": True}
            # (a retry may have been refused too before the close was seen)
            summary = [m for m in caplog.messages if "refused over the limit of 3" in m]
            assert summary == [
                f"rpc: {r.server.refused} SPDK-socket connection(s) refused over the limit of 3"
            ]
        # the zmq listener is not capped by it
        with RpcClient(r.zaddr, timeout=5) as c:
            assert c.call("echo", [2]) == [2]
    finally:
        for s in held:
            s.close()
        r.stop()


def _read_json_one(s):
    buf = b""
    while True:
        buf += s.recv(65536)
        try:
            return json.loads(buf)
        except ValueError:
            continue


def test_result_limit_on_both_listeners(tmp_path):
    r = Running(tmp_path, max_result_bytes=2048)
    try:
        ans = _spdk_call(r.spdk, "blob", {"n": 4000})
        assert ans["error"]["code"] == -32603 and "2048" in ans["error"]["message"]
        with RpcClient(r.zaddr, timeout=5) as c:
            with pytest.raises(RpcClientError) as e:
                c.call("blob", {"n": 4000})
            assert "2048" in e.value.message
            assert c.call("blob", {"n": 100}) == "x" * 100
    finally:
        r.stop()


def test_limits_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_MAX_CONNECTIONS, "7")
    monkeypatch.setenv(ENV_MAX_RESULT, "0x10000")
    r = Running(tmp_path)
    try:
        assert (r.server.max_connections, r.server.max_result) == (7, 65536)
    finally:
        r.stop()
    monkeypatch.setenv(ENV_MAX_CONNECTIONS, "0")
    loop = EventLoop(poll_mode="blocking")
    try:
        with pytest.raises(ValueError, match=ENV_MAX_CONNECTIONS):
            RpcServer(loop, dispatch, f"ipc://{tmp_path}/y.sock")
        monkeypatch.setenv(ENV_MAX_CONNECTIONS, "lots")
        with pytest.raises(ValueError, match="not an integer"):
            RpcServer(loop, dispatch, f"ipc://{tmp_path}/y.sock")
    finally:
        loop.close()
    assert msgpack  # the msgpack listener shares handle_raw (tested above)


def test_small_requests_with_big_answers_do_not_pile_up(tmp_path):
    """64 requests in one receive, 1 MiB answer each, a client that does not
    read: the server holds at most one answer past its 16 MiB output bound,
    and every answer arrives once the client reads."""
    from blockfabric.control.server import _MAX_PENDING_OUT

    r = Running(tmp_path, max_result_bytes=2 << 20)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(r.spdk)
        s.sendall(b"".join(json.dumps(_req("blob", {"n": 1 << 20}, i)).encode() for i in range(64)))
        time.sleep(1.0)
        [c] = r.server._conns.values()
        assert len(c.out) <= _MAX_PENDING_OUT + (1 << 20) + 64, len(c.out)
        assert c.queue, "the rest waits framed, unanswered"
        s.settimeout(30)
        dec = json.JSONDecoder()
        buf, got = "", []
        while len(got) < 64:
            d = s.recv(1 << 20)
            assert d, f"closed after {len(got)} answers"
            buf += d.decode()
            while True:
                buf = buf.lstrip()
                try:
                    obj, end = dec.raw_decode(buf)
                except ValueError:
                    break
                got.append(obj["id"])
                buf = buf[end:]
        assert got == list(range(64))
    finally:
        s.close()
        r.stop()
