"""SPDK's JSON text RPC stream: JsonStreamDecoder framing + handle_raw.

Input: byte 0 picks where the stream is split into two reads (the framing
must give the same requests whatever the split); the rest is the stream."""

from __future__ import annotations

from rpc_common import MAX_RESULT, check_response, dispatch

from blockfabric.control.jsonrpc import JsonStreamDecoder, StreamError, handle_raw

MAX = 64 * 1024  # a small request limit so the fuzzer reaches "too large"


def _frames(chunks: list[bytes]) -> list[bytes | StreamError]:
    d = JsonStreamDecoder(MAX)
    out: list[bytes | StreamError] = []
    for c in chunks:
        out += d.feed(c)
        assert d.buffered <= MAX + len(c), "decoder buffers past its limit"
    return out


def one_input(data: bytes) -> None:
    if not data:
        return
    stream = data[1:]
    cut = data[0] * len(stream) // 256
    whole = _frames([stream])
    split = _frames([stream[:cut], stream[cut:]])
    assert whole == split, (whole, split)
    for item in whole:
        if isinstance(item, StreamError):
            check_response(item.response(), "json")
            break
        check_response(handle_raw(item, "json", dispatch, MAX_RESULT), "json")
