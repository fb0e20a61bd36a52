"""End-to-end: the transfer buffer pool of a running daemon (size, options, stats)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from blockfabric.transports.nvmf_host.controller import Controller

pytestmark = pytest.mark.e2e
NQN = "nqn.2016-06.io.blockfabric:pool"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_pool_sized_by_s_and_used_by_the_data_path(daemon_factory: Any) -> None:
    d = daemon_factory(mask="0x1", extra=["-s", "32"]).start()
    pool = d.rpc("blockfabric_get_status")["pool"]
    assert pool["name"] == f"blockfabric.{d.name}.bufpool"
    assert 30 * 2**20 < pool["size"] <= 33 * 2**20
    assert pool["small"]["buf_size"] == 8192 and pool["large"]["buf_size"] == 135168
    st0 = d.rpc("iobuf_get_stats")
    assert [e["module"] for e in st0] == ["reactor_0"]
    assert set(st0[0]["small_pool"]) >= {"cache", "main", "retry"}
    for k in ("in_use", "high_water", "waits", "queued", "nomem"):
        assert st0[0][k] == 0, k

    d.rpc("bdev_malloc_create", {"name": "M0", "num_blocks": 8192, "block_size": 512})
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "M0"}})
    port = _free_port()
    la = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    d.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": la})
    c = Controller("127.0.0.1", port, NQN, nr_io_queues=1).connect()
    try:
        data = os.urandom(64 * 1024)  # beyond in-capsule data: R2T into pool buffers
        for lba in range(0, 4096, 128):
            c.write(1, lba, data, 512)
        assert c.read(1, 512, 128, 512) == data
    finally:
        c.close()
    st = d.rpc("iobuf_get_stats")[0]
    gets = st["small_pool"]["gets"] + st["large_pool"]["gets"]
    assert st["acquires"] > 0 and gets > 0 and st["high_water"] > 0
    assert st["in_use"] == 0  # every buffer back once the transfers ended
    assert st["large_pool"]["cache"] + st["large_pool"]["main"] == st["large_pool"]["gets"]
    assert d.rpc("blockfabric_get_status")["pool"]["in_use_by_reactor"] == {}
    full = d.status()
    assert full["iobuf"][0]["module"] == "reactor_0" and full["pool"]["size"] == pool["size"]
    text = d.cli("status", "--name", d.name, "-r", d.rpc_addr).stdout
    assert "buffer pool" in text and "reactor_0" in text


def test_iobuf_set_options_in_the_startup_config_sizes_the_pool(
    daemon_factory: Any, tmp_path: Path
) -> None:
    cfg = {
        "subsystems": [
            {
                "subsystem": "iobuf",
                "config": [
                    {
                        "method": "iobuf_set_options",
                        "params": {"small_pool_count": 1024, "large_pool_count": 96},
                    }
                ],
            }
        ]
    }
    f = tmp_path / "c.json"
    f.write_text(json.dumps(cfg))
    d = daemon_factory(mask="0x1", extra=["--json", str(f)]).start()
    pool = d.rpc("blockfabric_get_status")["pool"]
    assert pool["small"]["count"] == 1024 and pool["large"]["count"] == 96
    assert pool["options"]["small_pool_count"] == 1024
    # at run time it is accepted and changes nothing
    assert d.rpc("iobuf_set_options", {"small_pool_count": 10}) is True
    assert d.rpc("blockfabric_get_status")["pool"]["small"]["count"] == 1024


def test_default_pool_without_s(daemon: Any) -> None:
    pool = daemon.rpc("blockfabric_get_status")["pool"]
    assert 60 * 2**20 < pool["size"] <= 65 * 2**20
