"""JSON-RPC 2.0 error codes and the exception RPC handlers raise."""

from __future__ import annotations

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# SPDK answers some state errors (e.g. "already exists") with -17 (EEXIST) or
# -19 (ENODEV); its rpc.py just prints message and code, so we do the same.
EEXIST = -17
ENODEV = -19
EINVAL = -22
EBUSY = -16


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: object | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"code": self.code, "message": self.message}
        if self.data is not None:
            d["data"] = self.data
        return d


def invalid_params(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, message)
