"""The --json config loader: parse + validate every entry against the registry."""

from __future__ import annotations

from rpc_common import dispatch as _dispatch  # noqa: F401  (registers every RPC)

from blockfabric.control.config import ConfigError, parse_config_text, validate_config
from blockfabric.control.registry import REGISTRY


def one_input(data: bytes) -> None:
    try:
        text = data.decode("utf-8")  # load_config_file: not UTF-8 -> ConfigError
    except UnicodeDecodeError:
        return
    try:
        entries = validate_config(parse_config_text(text, "fuzz"), REGISTRY)
    except ConfigError as e:
        assert str(e), "ConfigError without a reason"
        return
    for label, method, params in entries:
        assert isinstance(label, str) and isinstance(params, dict)
        REGISTRY.lookup(method).bind(params)  # validated: must bind again
