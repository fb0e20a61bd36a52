"""Unit tests of the sans-I/O JSON-RPC codec and the SPDK stream splitter."""

from __future__ import annotations

import json

import msgpack
import pytest

from blockfabric.control.errors import RpcError
from blockfabric.control.jsonrpc import (
    MAX_REQUEST_BYTES,
    JsonStreamDecoder,
    StreamError,
    handle_raw,
)


def dispatch(method, params):
    if method == "echo":
        return params
    if method == "fail":
        raise RpcError(-17, "File exists")
    if method == "boom":
        raise ValueError("kaboom")
    if method == "bytes":
        return b"\x00\x01"
    raise RpcError(-32601, f"Method not found: {method}")


def js(obj) -> bytes:
    return json.dumps(obj).encode()


def call_json(obj_or_bytes):
    data = obj_or_bytes if isinstance(obj_or_bytes, bytes) else js(obj_or_bytes)
    out = handle_raw(data, "json", dispatch)
    return None if out is None else json.loads(out)


def test_result_and_id_roundtrip():
    r = call_json({"jsonrpc": "2.0", "method": "echo", "params": {"a": 1}, "id": 7})
    assert r == {"jsonrpc": "2.0", "id": 7, "result": {"a": 1}}
    r = call_json({"jsonrpc": "2.0", "method": "echo", "params": [1, 2], "id": "x"})
    assert r["id"] == "x" and r["result"] == [1, 2]


def test_msgpack_roundtrip():
    req = msgpack.packb({"jsonrpc": "2.0", "method": "echo", "params": {"k": "v"}, "id": 1})
    r = msgpack.unpackb(handle_raw(req, "msgpack", dispatch))
    assert r == {"jsonrpc": "2.0", "id": 1, "result": {"k": "v"}}


def test_notification_gets_no_answer():
    assert call_json({"jsonrpc": "2.0", "method": "echo"}) is None
    assert call_json({"jsonrpc": "2.0", "method": "boom"}) is None


@pytest.mark.parametrize(
    "req,needle",
    [
        ({"jsonrpc": "1.0", "method": "echo", "id": 1}, "'jsonrpc'"),
        ({"method": "echo", "id": 1}, "'jsonrpc'"),
        ({"jsonrpc": "2.0", "method": 5, "id": 1}, "'method'"),
        ({"jsonrpc": "2.0", "id": 1}, "'method'"),
        ({"jsonrpc": "2.0", "method": "echo", "params": 3, "id": 1}, "'params'"),
        ({"jsonrpc": "2.0", "method": "echo", "params": "s", "id": 1}, "'params'"),
        ({"jsonrpc": "2.0", "method": "echo", "id": 1.5}, "'id'"),
        ({"jsonrpc": "2.0", "method": "echo", "id": True}, "'id'"),
        ({"jsonrpc": "2.0", "method": "echo", "id": [1]}, "'id'"),
        (5, "object"),
        ([], "empty batch"),
    ],
)
def test_invalid_request(req, needle):
    r = call_json(req)
    assert r["error"]["code"] == -32600
    assert needle in r["error"]["message"]


def test_invalid_request_keeps_valid_id():
    r = call_json({"jsonrpc": "1.0", "method": "echo", "id": 42})
    assert r["id"] == 42


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b'{"jsonrpc": "2.0"', b"\xff\xfe", b"nul", b'{"a": NaN}', b"[" * 100000, b"{} {}"],
)
def test_parse_error(data):
    r = call_json(data)
    assert r["error"]["code"] == -32700
    assert r["id"] is None


def test_msgpack_parse_errors():
    for data in (b"", b"\xc1", msgpack.packb({"a": 1})[:-1], msgpack.packb(1) + b"\x01"):
        r = msgpack.unpackb(handle_raw(data, "msgpack", dispatch))
        assert r["error"]["code"] == -32700


def test_handler_errors():
    r = call_json({"jsonrpc": "2.0", "method": "fail", "id": 1})
    assert r["error"] == {"code": -17, "message": "File exists"}
    r = call_json({"jsonrpc": "2.0", "method": "boom", "id": 2})
    assert r["error"] == {"code": -32603, "message": "kaboom"}
    r = call_json({"jsonrpc": "2.0", "method": "nope", "id": 3})
    assert r["error"]["code"] == -32601


def test_unencodable_result_is_internal_error():
    r = call_json({"jsonrpc": "2.0", "method": "bytes", "id": 1})
    assert r["error"]["code"] == -32603
    # msgpack can carry bytes
    req = msgpack.packb({"jsonrpc": "2.0", "method": "bytes", "id": 1})
    assert msgpack.unpackb(handle_raw(req, "msgpack", dispatch))["result"] == b"\x00\x01"


def test_batch():
    batch = [
        {"jsonrpc": "2.0", "method": "echo", "params": [1], "id": 1},
        {"jsonrpc": "2.0", "method": "echo"},  # notification
        {"jsonrpc": "2.0", "method": "fail", "id": 2},
        7,
    ]
    r = call_json(batch)
    assert [x.get("id") for x in r] == [1, 2, None]
    assert r[0]["result"] == [1]
    assert r[1]["error"]["code"] == -17
    assert r[2]["error"]["code"] == -32600
    assert call_json([{"jsonrpc": "2.0", "method": "echo"}]) is None


def test_too_large():
    big = js({"jsonrpc": "2.0", "method": "echo", "params": ["x" * MAX_REQUEST_BYTES], "id": 1})
    r = call_json(big)
    assert r["error"]["code"] == -32600
    assert r["error"]["message"] == f"request too large ({len(big)} bytes > 4194304)"


# --- stream splitter ------------------------------------------------------------


def test_stream_concatenated_and_split():
    reqs = [
        {"jsonrpc": "2.0", "method": "echo", "params": {"s": 'a"}{[\\'}, "id": 1},
        {"jsonrpc": "2.0", "method": "echo", "params": ["é", "}"], "id": 2},
    ]
    stream = b"\n".join(json.dumps(r, indent=2, ensure_ascii=False).encode() for r in reqs) + b"\n"
    # every split point, byte by byte too
    for cut in range(len(stream) + 1):
        d = JsonStreamDecoder()
        got = d.feed(stream[:cut]) + d.feed(stream[cut:])
        assert [json.loads(g) for g in got] == reqs
        assert d.buffered == 0
    d = JsonStreamDecoder()
    got = []
    for i in range(len(stream)):
        got += d.feed(stream[i : i + 1])
    assert [json.loads(g) for g in got] == reqs


def test_stream_rejects_garbage_and_stops():
    d = JsonStreamDecoder()
    out = d.feed(b'  abc {"x": 1}')
    assert len(out) == 1 and isinstance(out[0], StreamError) and out[0].code == -32700
    assert d.feed(b"{}") == []


def test_stream_partial_over_limit():
    d = JsonStreamDecoder(max_bytes=100)
    assert d.feed(b'{"a": "' + b"x" * 90) == []
    out = d.feed(b"x" * 20)
    assert isinstance(out[0], StreamError) and out[0].code == -32600
    assert json.loads(out[0].response())["error"]["code"] == -32600


def test_stream_invalid_object_goes_to_parse_error():
    d = JsonStreamDecoder()
    (chunk,) = d.feed(b'{"a" 1}')
    assert json.loads(handle_raw(chunk, "json", dispatch))["error"]["code"] == -32700
