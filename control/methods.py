"""Imports every module that declares RPC methods, so the registry is complete."""

from __future__ import annotations

import importlib

MODULES = (
    "blockfabric.bdevs.rpc",
    "blockfabric.control.framework_methods",
    "blockfabric.control.keyring_methods",
    "blockfabric.actors.supervisor",
    "blockfabric.actors.trace_rpc",
    "blockfabric.transports.nvmf.rpc",
    "blockfabric.transports.iscsi.rpc",
    "blockfabric.bdevs.nvme_rpc",
    "blockfabric.bdevs.rbd_rpc",
    "blockfabric.bdevs.stack_rpc",
    "blockfabric.control.compat_methods",  # last: only names nobody else serves
)

for _m in MODULES:
    importlib.import_module(_m)
