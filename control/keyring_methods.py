"""Keyring RPCs (SPDK's names and forms): keyring_file_add_key,
keyring_file_remove_key, keyring_get_keys. The keys themselves: keyring.py."""

from __future__ import annotations

from typing import Any

from .context import RpcContext
from .keyring import keyring_of
from .registry import OUT_DICT, Param, rpc_method


@rpc_method(
    "keyring_file_add_key",
    Param("name", str, pos=0, help="Name of the key to add"),
    Param("path", str, pos=1, help="Path to a file containing the key"),
)
def keyring_file_add_key(ctx: RpcContext, name: str, path: str) -> bool:
    """Add a key from a file (regular, owned by the target's user, mode 0600 or
    stricter) in the TLS PSK or DH-HMAC-CHAP interchange format."""
    keyring_of(ctx).add_file(name, path)
    return True


@rpc_method(
    "keyring_file_remove_key",
    Param("name", str, pos=0, help="Name of the key to remove"),
)
def keyring_file_remove_key(ctx: RpcContext, name: str) -> bool:
    """Remove a key (refused while a host or controller uses it)."""
    keyring_of(ctx).remove(name)
    return True


@rpc_method(
    "keyring_get_keys",
    Param("name", str, required=False, short="-n", help="Name of a key"),
    cli_out=OUT_DICT,
)
def keyring_get_keys(ctx: RpcContext, name: str | None = None) -> list[dict[str, Any]]:
    """The keys: name, path, reference count (never the key material)."""
    return keyring_of(ctx).infos(name)
