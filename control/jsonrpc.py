"""Sans-I/O JSON-RPC 2.0 codec: bytes in, response bytes out.

`handle_raw` is the whole request path of both RPC listeners (zmq/msgpack and
the SPDK-compatible unix socket speaking JSON text): decode, validate, run
``dispatch(method, params)``, encode. It never raises; every failure becomes a
JSON-RPC error object:

* -32700 parse error: not msgpack / not UTF-8 JSON text, truncated, NaN, too deep
* -32600 invalid request: wrong ``jsonrpc``/``method``/``params``/``id``, empty
  batch, request over `MAX_REQUEST_BYTES`
* -32601 / -32602: raised by ``dispatch`` (the registry) as RpcError
* -32603: any other exception in ``dispatch``, a result that cannot be encoded,
  or an answer larger than ``max_result`` bytes (`MAX_RESULT_BYTES` by default:
  the error names the limit; see `bounded_encode`)

`JsonStreamDecoder` splits SPDK's unix-socket stream (JSON texts concatenated
with no framing, as SPDK's rpc.py writes them) into one request per object.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgpack

from .errors import INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR, RpcError

# Largest request we accept: 4 MiB. A full SPDK load_config of a large target is
# well under 1 MiB; the limit bounds the memory one client can make us buffer.
MAX_REQUEST_BYTES = 4 * 1024 * 1024

# Largest answer we build for one request (a batch counts as one): 16 MiB. A
# bdev_get_bdevs on 10 000 bdevs is about 6 MiB of JSON. The supervisor sets it
# from BLOCKFABRIC_RPC_MAX_RESULT_BYTES (control/server.py).
MAX_RESULT_BYTES = 16 * 1024 * 1024
# deepest result structure we encode (json and msgpack both recurse)
MAX_RESULT_DEPTH = 256

Encoding = Literal["json", "msgpack"]
Dispatch = Callable[[str, Any], Any]


def _reject_constant(name: str) -> Any:
    # NaN/Infinity are not JSON; accepting them would make us echo invalid JSON
    raise ValueError(f"invalid JSON constant {name}")


def decode(data: bytes, encoding: Encoding) -> Any:
    """Parse one message; raises ValueError (with a reason) when it is not valid."""
    if encoding == "msgpack":
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        except msgpack.ExtraData as e:
            raise ValueError("extra data after the msgpack object") from e
        except Exception as e:  # OutOfData, FormatError, StackError, UnicodeDecodeError...
            raise ValueError(f"invalid msgpack: {type(e).__name__}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError("request is not UTF-8 text") from e
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"{e.msg} at line {e.lineno} column {e.colno}") from e
    except (ValueError, RecursionError) as e:
        raise ValueError(str(e) or "nesting too deep") from e


def encode(obj: Any, encoding: Encoding) -> bytes:
    if encoding == "msgpack":
        return msgpack.packb(obj, use_bin_type=True)
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()


class ResultTooLarge(ValueError):
    def __init__(self, limit: int, what: str = "result") -> None:
        super().__init__(
            f"{what} too large: over the {limit}-byte RPC result limit "
            "(BLOCKFABRIC_RPC_MAX_RESULT_BYTES)"
        )
        self.limit = limit


def _size_at_least(obj: Any, limit: int) -> int:
    """A lower bound of ``obj``'s encoded size in either encoding, computed
    without encoding it and abandoned as soon as it passes ``limit`` (so the
    walk costs O(limit), not O(result)); raises ValueError when too deep."""
    total = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        o, depth = stack.pop()
        if depth > MAX_RESULT_DEPTH:
            raise ValueError(f"result nested deeper than {MAX_RESULT_DEPTH}")
        if isinstance(o, str | bytes | bytearray | memoryview):
            total += len(o) + 1
        elif isinstance(o, dict):
            total += 1 + len(o)
            if total > limit:  # before pushing its items: O(limit) work at most
                return total
            for k, v in o.items():
                stack.append((k, depth + 1))
                stack.append((v, depth + 1))
        elif isinstance(o, list | tuple):
            total += 1 + len(o)
            if total > limit:
                return total
            stack.extend((v, depth + 1) for v in o)
        else:
            total += 1
        if total > limit:
            return total
    return total


def bounded_encode(obj: Any, encoding: Encoding, limit: int, what: str = "result") -> bytes:
    """Encode ``obj`` unless its encoding would exceed ``limit`` bytes
    (ResultTooLarge). The size is bounded from below before anything is
    built, so a huge result is refused without building its encoding; the
    exact size of what was built is checked after (escapes can grow JSON)."""
    if _size_at_least(obj, limit) > limit:
        raise ResultTooLarge(limit, what)
    out = encode(obj, encoding)
    if len(out) > limit:
        raise ResultTooLarge(limit, what)
    return out


def error_response(code: int, message: str, req_id: Any = None, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": req_id, "error": err}


def _valid_id(v: Any) -> bool:
    return v is None or isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))


def _call_one(req: Any, dispatch: Dispatch) -> dict[str, Any] | None:
    """Validate and run one request object; None for a (valid) notification."""
    if not isinstance(req, dict):
        return error_response(INVALID_REQUEST, "Invalid request: request must be an object")
    has_id = "id" in req
    req_id = req.get("id")
    if not _valid_id(req_id):
        return error_response(
            INVALID_REQUEST, "Invalid request: 'id' must be a string, integer or null"
        )
    if req.get("jsonrpc") != "2.0":
        return error_response(INVALID_REQUEST, "Invalid request: 'jsonrpc' must be \"2.0\"", req_id)
    method = req.get("method")
    if not isinstance(method, str):
        return error_response(INVALID_REQUEST, "Invalid request: 'method' must be a string", req_id)
    params = req.get("params")
    if "params" in req and not isinstance(params, dict | list):
        return error_response(
            INVALID_REQUEST, "Invalid request: 'params' must be an object or an array", req_id
        )
    try:
        result = dispatch(method, params)
    except RpcError as e:
        resp = {"jsonrpc": "2.0", "id": req_id, "error": e.to_dict()}
    except Exception as e:  # a handler bug must not take the server down
        resp = error_response(INTERNAL_ERROR, str(e) or type(e).__name__, req_id)
    else:
        resp = {"jsonrpc": "2.0", "id": req_id, "result": result}
    return resp if has_id else None


def _checked(resp: dict[str, Any], encoding: Encoding, limit: int, batch_limit: int = 0) -> bytes:
    """Encode one response; one whose result/error data cannot be encoded, or
    is over ``limit`` bytes (what is left of ``batch_limit`` in a batch),
    becomes an error naming the reason."""
    try:
        return bounded_encode(resp, encoding, limit)
    except ResultTooLarge as e:
        msg = str(ResultTooLarge(batch_limit, "batch answer")) if batch_limit else str(e)
        return encode(error_response(INTERNAL_ERROR, msg, resp.get("id")), encoding)
    except Exception as e:
        return encode(
            error_response(
                INTERNAL_ERROR, f"result cannot be encoded as {encoding}: {e}", resp.get("id")
            ),
            encoding,
        )


def handle_raw(
    data: bytes, encoding: Encoding, dispatch: Dispatch, max_result: int = MAX_RESULT_BYTES
) -> bytes | None:
    """Answer one raw request (object or batch); None when nothing is to be
    sent. The answer is at most about ``max_result`` bytes: a result over it
    becomes a -32603 error naming the limit (in a batch, so does every answer
    after the running total passed it)."""
    try:
        return _handle(data, encoding, dispatch, max_result)
    except Exception as e:  # last resort: handle_raw never raises
        return encode(error_response(INTERNAL_ERROR, f"internal error: {e}"), encoding)


def _handle(data: bytes, encoding: Encoding, dispatch: Dispatch, max_result: int) -> bytes | None:
    n = len(data)
    if n > MAX_REQUEST_BYTES:
        return encode(
            error_response(INVALID_REQUEST, f"request too large ({n} bytes > {MAX_REQUEST_BYTES})"),
            encoding,
        )
    try:
        req = decode(bytes(data), encoding)
    except ValueError as e:
        return encode(error_response(PARSE_ERROR, f"Parse error: {e}"), encoding)
    if isinstance(req, list):
        if not req:
            return encode(error_response(INVALID_REQUEST, "Invalid request: empty batch"), encoding)
        parts: list[bytes] = []
        left = max_result
        for r in req:
            resp = _call_one(r, dispatch)
            if resp is None:
                continue
            if left <= 0:
                err = ResultTooLarge(max_result, "batch answer")
                part = encode(error_response(INTERNAL_ERROR, str(err), resp.get("id")), encoding)
            else:
                part = _checked(resp, encoding, left, max_result)
            left -= len(part)
            parts.append(part)
        if not parts:
            return None
        return _join_array(parts, encoding)
    resp = _call_one(req, dispatch)
    if resp is None:
        return None
    return _checked(resp, encoding, max_result)


def _join_array(parts: list[bytes], encoding: Encoding) -> bytes:
    """An array of already-encoded elements (no re-encoding of the batch)."""
    if encoding == "json":
        return b"[" + b",".join(parts) + b"]"
    n = len(parts)
    if n < 16:
        head = bytes([0x90 | n])
    elif n < 65536:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return head + b"".join(parts)


# --- SPDK unix-socket stream framing ------------------------------------------


@dataclass(frozen=True)
class StreamError:
    """A framing failure; the connection cannot be resynchronised after it."""

    code: int
    message: str

    def response(self) -> bytes:
        return encode(error_response(self.code, self.message), "json")


# JSON's structural characters are ASCII, and UTF-8 never uses ASCII byte values
# inside a multi-byte character, so the stream can be scanned as bytes.
_STRUCT = re.compile(rb'[{}\[\]"]')
_IN_STRING = re.compile(rb'["\\]')
_WS = b" \t\r\n"


class JsonStreamDecoder:
    """Splits concatenated JSON texts into one bytes object per top-level value.

    Why not json.raw_decode alone: on a partial buffer it cannot tell "needs more
    bytes" from "invalid" (an unterminated string reports the string's start).
    A bracket/string scan finds where each value ends (resumable, so feeding a
    large request in pieces stays linear); the complete slice is then parsed by
    `handle_raw`, which reports syntax errors as -32700.
    """

    def __init__(self, max_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._pos = 0  # scan position in _buf
        self._start = -1  # start of the value being scanned, -1 between values
        self._depth = 0
        self._in_str = False
        self.failed = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | StreamError]:
        if self.failed:
            return []
        self._buf += data
        out: list[bytes | StreamError] = []
        buf = self._buf
        while True:
            if self._start < 0:
                i = self._pos
                n = len(buf)
                while i < n and buf[i] in _WS:
                    i += 1
                if i == n:
                    buf.clear()
                    self._pos = 0
                    return out
                if buf[i] not in b"{[":
                    self.failed = True
                    out.append(
                        StreamError(PARSE_ERROR, "Parse error: expected a JSON object or array")
                    )
                    return out
                self._start = i
                self._pos = i
                self._depth = 0
                self._in_str = False
            end = self._scan()
            if end < 0:
                if len(buf) - self._start > self.max_bytes:
                    self.failed = True
                    out.append(
                        StreamError(
                            INVALID_REQUEST,
                            f"request too large (over {self.max_bytes} bytes without its end)",
                        )
                    )
                return out
            out.append(bytes(buf[self._start : end]))
            del buf[:end]
            self._pos = 0
            self._start = -1

    def _scan(self) -> int:
        """Advance the scan; end offset of the current value, or -1 if incomplete."""
        buf = self._buf
        n = len(buf)
        i = self._pos
        while i < n:
            if self._in_str:
                m = _IN_STRING.search(buf, i)
                if m is None:
                    i = n
                    break
                if buf[m.start()] == 0x5C:  # backslash: skip the escaped byte
                    i = m.start() + 2
                    continue
                self._in_str = False
                i = m.end()
                continue
            m = _STRUCT.search(buf, i)
            if m is None:
                i = n
                break
            c = buf[m.start()]
            i = m.end()
            if c == 0x22:  # '"'
                self._in_str = True
            elif c in b"{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    self._pos = i
                    return i
        # an escape at the very end leaves i == n + 1: resume there next time
        self._pos = i
        return -1


JsonStreamError = StreamError  # the name used in the design notes
