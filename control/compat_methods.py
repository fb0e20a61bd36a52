"""SPDK methods that appear in every SPDK save_config output but configure
things blockfabric does not have (SPDK's iobuf, sock and accel layers, bdev
examine). They are accepted with their real parameters and have no effect, so
an SPDK JSON config file loads unchanged; README lists them."""

from __future__ import annotations

from typing import Any

from .registry import REGISTRY, Param, rpc_method


def _noop(ctx: Any, **_: Any) -> bool:
    return True


_INT = int
_COMPAT: dict[str, tuple[tuple[str, type], ...]] = {
    "bdev_wait_for_examine": (),
    "bdev_set_options": (
        ("bdev_io_pool_size", _INT),
        ("bdev_io_cache_size", _INT),
        ("bdev_auto_examine", bool),
        ("iobuf_small_cache_size", _INT),
        ("iobuf_large_cache_size", _INT),
    ),
    "iobuf_set_options": (
        ("small_pool_count", _INT),
        ("large_pool_count", _INT),
        ("small_bufsize", _INT),
        ("large_bufsize", _INT),
        ("enable_numa", bool),
    ),
    "sock_set_default_impl": (("impl_name", str),),
    "sock_impl_set_options": (
        ("impl_name", str),
        ("recv_buf_size", _INT),
        ("send_buf_size", _INT),
        ("enable_recv_pipe", bool),
        ("enable_quickack", bool),
        ("enable_placement_id", _INT),
        ("enable_zerocopy_send_server", bool),
        ("enable_zerocopy_send_client", bool),
        ("zerocopy_threshold", _INT),
        ("tls_version", _INT),
        ("enable_ktls", bool),
    ),
    "accel_set_options": (
        ("small_cache_size", _INT),
        ("large_cache_size", _INT),
        ("task_count", _INT),
        ("sequence_count", _INT),
        ("buf_count", _INT),
    ),
    "vmd_enable": (),
    "nvmf_set_max_subsystems": (("max_subsystems", _INT),),
    "nvmf_set_crdt": (("crdt1", _INT), ("crdt2", _INT), ("crdt3", _INT)),
    "keyring_file_add_key": (("name", str), ("path", str)),
    "scsi_set_options": (),
}

for _name, _params in _COMPAT.items():
    if _name in REGISTRY.methods or _name in REGISTRY.alias_of:
        continue
    rpc_method(_name, *(Param(n, t, required=False) for n, t in _params))(_noop)
