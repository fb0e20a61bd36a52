"""Property tests: the codec and the stream splitter never raise and always
answer with a well-formed JSON-RPC response."""

from __future__ import annotations

import json

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockfabric.control.errors import RpcError
from blockfabric.control.jsonrpc import JsonStreamDecoder, StreamError, handle_raw

INTS = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
CODES = {-32700, -32600, -32601, -32602, -32603, -17}


def dispatch(method, params):
    if method == "echo":
        return params
    if method == "fail":
        raise RpcError(-17, "exists")
    if method == "boom":
        raise KeyError(method)
    raise RpcError(-32601, "Method not found")


def check_response(r):
    assert isinstance(r, dict)
    assert r["jsonrpc"] == "2.0"
    assert "id" in r
    assert ("result" in r) != ("error" in r)
    if "error" in r:
        assert r["error"]["code"] in CODES
        assert isinstance(r["error"]["message"], str)


def check_out(out, encoding):
    if out is None:
        return
    r = (
        json.loads(out)
        if encoding == "json"
        else msgpack.unpackb(out, raw=False, strict_map_key=False)
    )
    for x in r if isinstance(r, list) else [r]:
        check_response(x)


json_values = st.recursive(
    st.none() | st.booleans() | INTS | st.floats(allow_nan=False) | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
requestish = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]) | json_values,
        "method": st.sampled_from(["echo", "fail", "boom", "x"]) | json_values,
        "params": json_values,
        "id": INTS | st.text() | st.none() | json_values,
    },
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from(["json", "msgpack"]))
def test_random_bytes(data, encoding):
    check_out(handle_raw(data, encoding, dispatch), encoding)


@settings(max_examples=300)
@given(
    requestish | st.lists(requestish, max_size=4) | json_values,
    st.sampled_from(["json", "msgpack"]),
)
def test_wrong_types(obj, encoding):
    data = json.dumps(obj).encode() if encoding == "json" else msgpack.packb(obj)
    check_out(handle_raw(data, encoding, dispatch), encoding)


@settings(max_examples=200)
@given(requestish, st.sampled_from(["json", "msgpack"]), st.data())
def test_truncated(obj, encoding, data):
    raw = json.dumps(obj).encode() if encoding == "json" else msgpack.packb(obj)
    cut = data.draw(st.integers(0, max(0, len(raw) - 1)))
    out = handle_raw(raw[:cut], encoding, dispatch)
    check_out(out, encoding)
    assert out is not None  # a truncated message is never silently ignored


def test_huge_payloads():
    for n in (4 * 1024 * 1024 + 1, 6 * 1024 * 1024):
        for enc in ("json", "msgpack"):
            out = handle_raw(b"[" + b"1," * (n // 2), enc, dispatch)
            check_out(out, enc)


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_stream_random_chunks(chunks):
    d = JsonStreamDecoder(max_bytes=64)
    for c in chunks:
        for item in d.feed(c):
            if isinstance(item, StreamError):
                check_response(json.loads(item.response()))
            else:
                check_out(handle_raw(item, "json", dispatch), "json")


@settings(max_examples=200)
@given(st.lists(requestish, min_size=1, max_size=5), st.data())
def test_stream_reassembles(reqs, data):
    stream = b"".join(json.dumps(r).encode() for r in reqs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    d = JsonStreamDecoder()
    got = []
    prev = 0
    for c in [*cuts, len(stream)]:
        got += d.feed(stream[prev:c])
        prev = c
    assert [json.loads(g) for g in got] == reqs
