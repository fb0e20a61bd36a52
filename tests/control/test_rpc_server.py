"""RpcServer on a real EventLoop thread: zmq ipc/tcp with RpcClient, and the
SPDK-compatible unix listener driven by a raw socket."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time

import msgpack
import pytest
import zmq

from blockfabric.actors.loop import EPOLLIN, EventLoop, make_eventfd
from blockfabric.control.client import RpcClient, RpcClientError, RpcConnectionError
from blockfabric.control.errors import RpcError
from blockfabric.control.server import RpcServer


def dispatch(method, params):
    if method == "echo":
        return params
    if method == "fail":
        raise RpcError(-17, "File exists")
    if method == "boom":
        raise RuntimeError("handler exploded")
    if method == "sleep":
        time.sleep(params["s"])
        return True
    raise RpcError(-32601, f"Method not found: {method}")


class Running:
    def __init__(self, zmq_addr, spdk_path=None):
        self.loop = EventLoop(poll_mode="blocking")
        self.zctx = zmq.Context()
        self.server = RpcServer(
            self.loop, dispatch, zmq_addr, spdk_path=spdk_path, zmq_context=self.zctx
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


@pytest.fixture
def ipc_server(tmp_path):
    path = tmp_path / "bf.sock"
    spdk = tmp_path / "spdk.sock"
    r = Running(f"ipc://{path}", spdk_path=str(spdk))
    yield r, path, spdk
    r.stop()


def test_ipc_roundtrip_and_modes(ipc_server):
    r, path, spdk = ipc_server
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(spdk).st_mode) == 0o600
    with RpcClient(f"ipc://{path}", timeout=5) as c:
        assert c.call("echo", {"a": [1, 2]}) == {"a": [1, 2]}
        assert c.call("echo") is None
        with pytest.raises(RpcClientError) as ei:
            c.call("fail")
        assert (ei.value.code, ei.value.message) == (-17, "File exists")
        with pytest.raises(RpcClientError) as ei:
            c.call("boom")
        assert ei.value.code == -32603 and "handler exploded" in ei.value.message
        with pytest.raises(RpcClientError) as ei:
            c.call("nosuch")
        assert ei.value.code == -32601


def test_files_removed_on_close(tmp_path):
    path = tmp_path / "x.sock"
    spdk = tmp_path / "s.sock"
    r = Running(f"ipc://{path}", spdk_path=str(spdk))
    assert path.exists() and spdk.exists()
    r.stop()
    assert not path.exists() and not spdk.exists()


def test_second_server_on_same_path_refused(ipc_server):
    r, path, spdk = ipc_server
    loop = EventLoop(poll_mode="blocking")
    try:
        with pytest.raises(OSError, match="in use"):
            RpcServer(loop, dispatch, f"ipc://{path}")
        with pytest.raises(OSError, match="in use"):
            RpcServer(loop, dispatch, f"ipc://{path}.other", spdk_path=str(spdk))
    finally:
        loop.close()
    assert not os.path.exists(f"{path}.other")  # cleaned up after the failure
    with RpcClient(f"ipc://{path}", timeout=5) as c:  # the first one still serves
        assert c.call("echo", [1]) == [1]


def test_stale_socket_file_replaced(tmp_path):
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # file left, nobody listening
    r = Running(f"ipc://{path}")
    try:
        with RpcClient(f"ipc://{path}", timeout=5) as c:
            assert c.call("echo", {"ok": True}) == {"ok": True}
    finally:
        r.stop()


def test_tcp_ephemeral_port():
    r = Running("tcp://127.0.0.1:0")
    try:
        addr = r.server.addr
        assert addr.startswith("tcp://127.0.0.1:") and not addr.endswith(":0")
        with RpcClient(addr, timeout=5) as c:
            for i in range(50):
                assert c.call("echo", [i]) == [i]
        # a REQ client works too (the empty delimiter frame is echoed back)
        ctx = zmq.Context.instance()
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(addr)
        req.send(msgpack.packb({"jsonrpc": "2.0", "method": "echo", "params": [9], "id": 3}))
        assert req.poll(5000)
        assert msgpack.unpackb(req.recv()) == {"jsonrpc": "2.0", "id": 3, "result": [9]}
        # garbage frame -> parse error, server keeps serving
        req.send(b"\xc1garbage")
        assert req.poll(5000)
        assert msgpack.unpackb(req.recv())["error"]["code"] == -32700
        req.close()
        with RpcClient(addr, timeout=5) as c:
            with pytest.raises(RpcClientError) as ei:
                c.call("echo", ["x" * (4 * 1024 * 1024 + 10)])
            assert ei.value.code == -32600 and "request too large" in ei.value.message
    finally:
        r.stop()


def test_many_clients_concurrently(ipc_server):
    r, path, _ = ipc_server
    errors = []

    def worker(n):
        try:
            with RpcClient(f"ipc://{path}", timeout=10) as c:
                for i in range(30):
                    assert c.call("echo", [n, i]) == [n, i]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def test_client_timeout_message(ipc_server):
    r, path, _ = ipc_server
    with RpcClient(f"ipc://{path}", timeout=0.3) as c:
        with pytest.raises(
            TimeoutError, match=r"no answer from ipc://.* in 0.3s: is the target running\?"
        ):
            c.call("sleep", {"s": 0.8})
        time.sleep(0.7)
        # the late answer to the timed-out call must not be taken for this one
        assert c.call("echo", ["after"]) == ["after"]


def test_client_missing_socket(tmp_path):
    with pytest.raises(RpcConnectionError, match="is the target running"):
        RpcClient(f"ipc://{tmp_path}/none.sock", timeout=1).call("echo")
    with pytest.raises(RpcConnectionError, match="is the target running"):
        RpcClient(str(tmp_path / "none.sock"), timeout=1).call("echo")


def test_tcp_timeout_when_nothing_listens():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(TimeoutError, match="is the target running"):
        RpcClient(f"tcp://127.0.0.1:{port}", timeout=0.2).call("echo")


# --- SPDK unix listener ------------------------------------------------------------


def recv_objects(sock, n, timeout=5.0):
    dec = json.JSONDecoder()
    buf = ""
    out = []
    sock.settimeout(timeout)
    while len(out) < n:
        data = sock.recv(65536)
        if not data:
            break
        buf += data.decode()
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


def req(method, params=None, id=1):
    d = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        d["params"] = params
    return json.dumps(d, indent=2).encode()


def test_spdk_socket_concatenated_and_split(ipc_server):
    _, _, spdk = ipc_server
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(spdk))
    try:
        # three requests in one write, one of them a notification
        s.sendall(req("echo", [1], 1) + b'{"jsonrpc":"2.0","method":"echo"}' + req("fail", None, 2))
        got = recv_objects(s, 2)
        assert got[0] == {"jsonrpc": "2.0", "id": 1, "result": [1]}
        assert got[1]["id"] == 2 and got[1]["error"]["code"] == -17
        # one request split into single bytes
        data = req("echo", {"k": "v}{"}, 3)
        for i in range(len(data)):
            s.send(data[i : i + 1])
            if i % 16 == 0:
                time.sleep(0.001)
        assert recv_objects(s, 1) == [{"jsonrpc": "2.0", "id": 3, "result": {"k": "v}{"}}]
        # batch over the SPDK socket
        s.sendall(b"[" + req("echo", [5], 5) + b"," + req("echo", [6], 6) + b"]")
        (batch,) = recv_objects(s, 1)
        assert [x["result"] for x in batch] == [[5], [6]]
    finally:
        s.close()


def test_spdk_socket_many_clients(ipc_server):
    _, _, spdk = ipc_server
    socks = []
    try:
        for _ in range(5):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(spdk))
            socks.append(s)
        for i, s in enumerate(socks):
            s.sendall(req("echo", [i], i))
        for i, s in enumerate(socks):
            assert recv_objects(s, 1) == [{"jsonrpc": "2.0", "id": i, "result": [i]}]
    finally:
        for s in socks:
            s.close()


def test_spdk_socket_garbage_answers_and_closes(ipc_server):
    _, _, spdk = ipc_server
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(spdk))
    try:
        s.sendall(b"hello")
        (r,) = recv_objects(s, 1)
        assert r["error"]["code"] == -32700
        s.settimeout(5)
        assert s.recv(10) == b""  # server closed the connection
    finally:
        s.close()


def test_spdk_socket_with_rpc_client(ipc_server):
    _, _, spdk = ipc_server
    with RpcClient(str(spdk), timeout=5) as c:
        assert c.call("echo", {"x": 1}) == {"x": 1}
        with pytest.raises(RpcClientError) as ei:
            c.call("fail")
        assert ei.value.code == -17
