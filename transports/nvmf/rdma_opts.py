"""NVMe/RDMA transport options: SPDK's names, ranges and defaults.

Owns `RDMA_DEFAULTS` (SPDK lib/nvmf/rdma.c: SPDK_NVMF_RDMA_DEFAULT_*), the
option table the RPC validates against (`RDMA_OPTS`: name -> type, min,
max), and `RdmaOpts`, the reactor's typed view of one snapshot. SPDK's
rpc.py flags for them: -q max_queue_depth, -m max_io_qpairs_per_ctrlr, -c
in_capsule_data_size, -i max_io_size, -u io_unit_size, -a max_aq_depth, -n
num_shared_buffers, -b buf_cache_size, -s/--max-srq-depth, -r/--no-srq,
-d/--num-cqe, -l/--acceptor-backlog, --no-wr-batching.
"""

from __future__ import annotations

from typing import Any

RDMA_DEFAULTS: dict[str, Any] = {
    "trtype": "RDMA",
    "max_queue_depth": 128,
    "max_io_qpairs_per_ctrlr": 127,
    "in_capsule_data_size": 4096,
    "max_io_size": 131072,
    "io_unit_size": 8192,
    "max_aq_depth": 128,
    "num_shared_buffers": 4095,
    "buf_cache_size": 32,
    "dif_insert_or_strip": False,
    "abort_timeout_sec": 1,
    "max_srq_depth": 4096,
    "no_srq": False,
    "num_cqe": 4096,
    "acceptor_backlog": 100,
    "no_wr_batching": False,
    # blockfabric extension: RDMA queue pairs one reactor serves at most
    "max_connections_per_reactor": 1024,
}

# option -> (type, min, max)
RDMA_OPTS: dict[str, tuple[type, int | None, int | None]] = {
    "max_queue_depth": (int, 2, 4096),
    "max_io_qpairs_per_ctrlr": (int, 1, 65534),
    "in_capsule_data_size": (int, 0, 65536),
    "max_io_size": (int, 4096, 1 << 24),
    "io_unit_size": (int, 512, 1 << 24),
    "max_aq_depth": (int, 2, 4096),
    "num_shared_buffers": (int, 0, None),
    "buf_cache_size": (int, 0, 0xFFFFFFFF),
    "dif_insert_or_strip": (bool, None, None),
    "abort_timeout_sec": (int, 0, None),
    "max_srq_depth": (int, 2, 65536),
    "no_srq": (bool, None, None),
    "num_cqe": (int, 16, 1 << 20),
    "acceptor_backlog": (int, 1, 65535),
    "no_wr_batching": (bool, None, None),
    "max_connections_per_reactor": (int, 1, 1 << 20),
}


def validate(opts: dict[str, Any]) -> dict[str, Any]:
    """SPDK defaults updated with ``opts`` (None = default); ValueError names the bad one."""
    conf = dict(RDMA_DEFAULTS)
    for k, v in opts.items():
        if v is None or k not in RDMA_OPTS:
            continue
        t, lo, hi = RDMA_OPTS[k]
        if t is int and (lo is not None and v < lo or hi is not None and v > hi):
            raise ValueError(
                f"parameter '{k}' must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}"
            )
        conf[k] = v
    if conf["in_capsule_data_size"] % 16:
        raise ValueError("parameter 'in_capsule_data_size' must be a multiple of 16")
    if conf["max_io_size"] % 4096:
        raise ValueError("parameter 'max_io_size' must be a multiple of 4096")
    if conf["in_capsule_data_size"] > conf["max_io_size"]:
        raise ValueError("parameter 'in_capsule_data_size' exceeds 'max_io_size'")
    return conf


class RdmaOpts:
    """The RDMA options a reactor needs, from the snapshot."""

    def __init__(self, d: dict[str, Any] | None) -> None:
        o = dict(RDMA_DEFAULTS)
        if d:
            o.update({k: v for k, v in d.items() if v is not None})
        self.raw = o
        self.max_queue_depth = int(o["max_queue_depth"])
        self.max_io_qpairs_per_ctrlr = int(o["max_io_qpairs_per_ctrlr"])
        self.in_capsule_data_size = int(o["in_capsule_data_size"])
        self.max_io_size = int(o["max_io_size"])
        self.io_unit_size = int(o["io_unit_size"])
        self.max_aq_depth = int(o["max_aq_depth"])
        self.max_srq_depth = int(o["max_srq_depth"])
        self.no_srq = bool(o["no_srq"])
        self.num_cqe = int(o["num_cqe"])
        self.acceptor_backlog = int(o["acceptor_backlog"])
        self.max_connections = int(o["max_connections_per_reactor"])
