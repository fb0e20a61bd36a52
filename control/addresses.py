"""Where a blockfabric instance listens for RPCs.

One instance per name: "default" owns ``ipc:///var/tmp/blockfabric.sock``
(next to SPDK's ``/var/tmp/spdk.sock``), any other name gets its own file so
several targets can run side by side on one host.
"""

from __future__ import annotations

import re

RPC_DIR = "/var/tmp"
DEFAULT_INSTANCE = "default"
# SPDK's default unix-socket path, for the optional SPDK-compatible listener
SPDK_DEFAULT_RPC_PATH = "/var/tmp/spdk.sock"

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def default_rpc_addr(instance: str = DEFAULT_INSTANCE) -> str:
    """The zmq address of instance ``instance``'s RPC server."""
    if not _NAME_RE.match(instance) or instance in (".", ".."):
        # the name becomes part of a file name: refuse '/', spaces, ...
        raise ValueError(f"invalid instance name {instance!r} (use letters, digits, '_', '.', '-')")
    if instance == DEFAULT_INSTANCE:
        return f"ipc://{RPC_DIR}/blockfabric.sock"
    return f"ipc://{RPC_DIR}/blockfabric.{instance}.sock"


def ipc_path(addr: str) -> str | None:
    """File path of an ``ipc://`` address, None for other transports."""
    if addr.startswith("ipc://"):
        return addr[len("ipc://") :]
    return None
