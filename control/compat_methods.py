"""SPDK methods that appear in every SPDK save_config output but configure
things blockfabric does not have (SPDK's iobuf, sock and accel layers, bdev
examine). They are accepted with their real parameters and have no effect, so
an SPDK JSON config file loads unchanged; README lists them."""

from __future__ import annotations

from typing import Any

from .context import RpcContext
from .registry import REGISTRY, Param, rpc_method


def _noop(ctx: RpcContext, **_: Any) -> bool:
    return True


def _o(
    name: str, t: type, short: str = "", long: str | None = "", required: bool = False, **kw: Any
) -> Param:
    """A param with rpc.py's option strings (optional unless SPDK requires it)."""
    return Param(name, t, required=required, short=short, long=long, **kw)


_COMPAT: dict[str, tuple[Param, ...]] = {
    "bdev_wait_for_examine": (),
    "bdev_set_options": (
        _o("bdev_io_pool_size", int, "-p"),
        _o("bdev_io_cache_size", int, "-c"),
        _o("bdev_auto_examine", bool, long="--auto-examine", toggle=True),
        _o("iobuf_small_cache_size", int),
        _o("iobuf_large_cache_size", int),
    ),
    "iobuf_set_options": (
        _o("small_pool_count", int),
        _o("large_pool_count", int),
        _o("small_bufsize", int),
        _o("large_bufsize", int),
        _o("enable_numa", bool),
    ),
    "sock_set_default_impl": (_o("impl_name", str, "-i", "--impl", required=True),),
    "sock_impl_set_options": (
        _o("impl_name", str, "-i", "--impl", required=True),
        _o("recv_buf_size", int, "-r"),
        _o("send_buf_size", int, "-s"),
        _o("enable_recv_pipe", bool, long="--recv-pipe", toggle=True),
        _o("enable_quickack", bool, long="--quickack", toggle=True),
        _o("enable_placement_id", int, "-p"),
        _o("enable_zerocopy_send_server", bool, long="--zerocopy-send-server", toggle=True),
        _o("enable_zerocopy_send_client", bool, long="--zerocopy-send-client", toggle=True),
        _o("zerocopy_threshold", int),
        _o("tls_version", int),
        _o("enable_ktls", bool, long="--ktls", toggle=True),
    ),
    "accel_set_options": (
        _o("small_cache_size", int),
        _o("large_cache_size", int),
        _o("task_count", int),
        _o("sequence_count", int),
        _o("buf_count", int),
    ),
    "vmd_enable": (),
    "nvmf_set_crdt": (_o("crdt1", int, "-t1"), _o("crdt2", int, "-t2"), _o("crdt3", int, "-t3")),
    "scsi_set_options": (),
}

for _name, _params in _COMPAT.items():
    if _name in REGISTRY.methods or _name in REGISTRY.alias_of:
        continue
    rpc_method(
        _name, *_params, cli_help="accepted, no effect (an SPDK layer blockfabric does not have)"
    )(_noop)
