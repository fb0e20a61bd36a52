"""The zmq listener's request path: one msgpack message through handle_raw."""

from __future__ import annotations

from rpc_common import MAX_RESULT, check_response, dispatch

from blockfabric.control.jsonrpc import handle_raw


def one_input(data: bytes) -> None:
    check_response(handle_raw(data, "msgpack", dispatch, MAX_RESULT), "msgpack")
