"""The legacy iSCSI INI config loader (-c): every call it produces must pass
the registry's validation, as the supervisor checks before applying."""

from __future__ import annotations

from rpc_common import dispatch as _dispatch  # noqa: F401  (registers every RPC)

from blockfabric.control.config import ConfigError
from blockfabric.control.registry import REGISTRY
from blockfabric.transports.iscsi.ini_config import parse_ini_config


def one_input(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        calls = parse_ini_config(text, "fuzz.ini")
    except ConfigError as e:
        assert str(e).startswith("fuzz.ini:"), f"error without FILE:LINE: {e}"
        return
    for method, params in calls:
        REGISTRY.lookup(method).bind(params)
