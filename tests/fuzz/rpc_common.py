"""JSON-RPC harness pieces: dispatch through the daemon's real registry."""

from __future__ import annotations

from typing import Any

from blockfabric.control import methods as _methods  # noqa: F401  (registers every RPC)
from blockfabric.control.errors import RpcError
from blockfabric.control.jsonrpc import Encoding, decode
from blockfabric.control.registry import REGISTRY


def dispatch(method: str, params: Any) -> Any:
    """Look the method up and validate its params like the daemon does; run
    no handler (they act on a live target) but return what it would get."""
    if method == "fuzz_raise":  # a handler bug must become -32603, not a crash
        raise RuntimeError("handler failed")
    m = REGISTRY.lookup(method)
    kwargs = m.bind(params)
    return {"method": m.name, "kwargs": kwargs}


# a small answer limit, so the fuzzer reaches "result too large" too
MAX_RESULT = 4096


def check_response(resp: bytes | None, encoding: Encoding) -> None:
    if resp is None:
        return
    obj = decode(resp, encoding)
    if not isinstance(obj, list):
        assert len(resp) <= MAX_RESULT, f"answer of {len(resp)} bytes over the limit"
    items = obj if isinstance(obj, list) else [obj]
    assert items, "empty batch answer"
    for r in items:
        assert isinstance(r, dict) and r.get("jsonrpc") == "2.0", r
        assert ("result" in r) != ("error" in r), r
        if "error" in r:
            e = r["error"]
            assert isinstance(e, dict) and isinstance(e.get("code"), int), r
            assert isinstance(e.get("message"), str), r


__all__ = ["MAX_RESULT", "RpcError", "check_response", "dispatch"]
