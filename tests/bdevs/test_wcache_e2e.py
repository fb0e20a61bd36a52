"""bdev_wcache in a running daemon: created by RPC over a malloc bdev, written
through NVMe/TCP with our host library on two reactors, power-failed by RPC."""

from __future__ import annotations

import json
import os
import socket

import pytest
from bftest import shm_objects

from blockfabric.control.client import RpcClientError as RpcError
from blockfabric.transports.nvmf_host.controller import Controller

pytestmark = pytest.mark.e2e
NQN = "nqn.2016-06.io.blockfabric:wc"
BS = 512


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _export(d, bdevs):
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    for i, b in enumerate(bdevs, 1):
        d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": b, "nsid": i}})
    port = _free_port()
    d.rpc(
        "nvmf_subsystem_add_listener",
        {
            "nqn": NQN,
            "listen_address": {
                "trtype": "tcp",
                "adrfam": "ipv4",
                "traddr": "127.0.0.1",
                "trsvcid": str(port),
            },
        },
    )
    return port


@pytest.mark.parametrize("kind", ["malloc", "aio"])
def test_wcache_power_fail_over_nvmf(daemon_factory, kind):
    ncpu = len(os.sched_getaffinity(0))
    d = daemon_factory(mask="0x3" if ncpu >= 2 else "0x1").start()
    for base in ("Base0", "Base1"):
        if kind == "malloc":
            d.rpc("bdev_malloc_create", {"name": base, "num_blocks": 4096, "block_size": BS})
        else:
            f = d.run_dir / f"{d.name}.{base}.img"
            f.write_bytes(bytes(4096 * BS))
            d.rpc("bdev_aio_create", {"name": base, "filename": str(f), "block_size": BS})
    # the CLI form, as a user types it
    d.cli("rpc", "-s", d.rpc_addr, "bdev_wcache_create", "-b", "Base0", "-p", "WC0")
    d.rpc(
        "bdev_wcache_create",
        {"base_bdev_name": "Base1", "name": "WC1", "max_dirty_mb": 2, "ignore_fua": True},
    )
    info = {b["name"]: b for b in d.rpc("bdev_get_bdevs")}
    assert info["WC0"]["driver_specific"]["wcache"]["base_bdev_name"] == "Base0"
    assert info["WC1"]["driver_specific"]["wcache"]["ignore_fua"] is True
    cfg = [
        e
        for s in d.rpc("save_config")["subsystems"]
        if s["subsystem"] == "bdev"
        for e in s["config"]
    ]
    methods = [e["method"] for e in cfg]
    assert methods.index("bdev_wcache_create") > methods.index(f"bdev_{kind}_create")
    with pytest.raises(RpcError) as ei:
        d.rpc(f"bdev_{kind}_delete", {"name": "Base0"})  # claimed by WC0
    assert ei.value.code == -16
    with pytest.raises(RpcError):
        d.rpc("bdev_wcache_create", {"base_bdev_name": "Base0", "name": "WC2"})
    with pytest.raises(RpcError) as ei:
        d.rpc("bdev_wcache_power_fail", {"name": "Base0"})
    assert ei.value.code == -19

    port = _export(d, ["WC0", "WC1"])
    c = Controller("127.0.0.1", port, NQN, nr_io_queues=2)
    c.connect()
    try:
        flushed = os.urandom(16 * BS)
        unflushed = os.urandom(8 * BS)
        for ns in (1, 2):
            c.write(ns, 0, flushed, BS, q=0)
            c.flush(ns, q=1)  # a flush on the other queue (reactor) covers it
            c.write(ns, 100, unflushed, BS, q=1)
            assert c.read(ns, 100, 8, BS, q=0) == unflushed  # the cache serves reads
        r0 = d.rpc("bdev_wcache_power_fail", {"name": "WC0"})
        r1 = d.cli("rpc", "-s", d.rpc_addr, "bdev_wcache_power_fail", "WC1", "--seed", "1")
        assert r0["dropped"] >= 1 and r0["persisted"] == 0
        assert '"dropped"' in r1.stdout
        # WC0: the flushed write survived, the unflushed one is gone
        assert c.read(1, 0, 16, BS, q=1) == flushed
        assert c.read(1, 100, 8, BS, q=0) == bytes(8 * BS)
        # WC1 ignores flushes (the broken test double): the same test loses data
        assert c.read(2, 0, 16, BS, q=0) == bytes(16 * BS)
        st = {b["name"]: b for b in d.rpc("bdev_get_bdevs")}["WC0"]["driver_specific"]["wcache"]
        assert st["power_fails"] == 1 and st["dirty_writes"] == 0
    finally:
        c.close()
    # save_config reproduces the cache on a restart
    saved = d.rpc("save_config")
    cfg_file = d.run_dir / "wc.json"
    cfg_file.write_text(json.dumps(saved))
    d.rpc("nvmf_delete_subsystem", {"nqn": NQN})
    assert d.rpc("bdev_wcache_delete", {"name": "WC0"}) is True
    assert d.rpc(f"bdev_{kind}_delete", {"name": "Base0"}) is True
    assert not [o for o in shm_objects(d.name) if "wcache.WC0" in o]
    d.stop()
    assert shm_objects(d.name) == []
    d2 = daemon_factory(extra=["--json", str(cfg_file)]).start()
    got = {b["name"]: b for b in d2.rpc("bdev_get_bdevs")}
    assert got["WC0"]["driver_specific"]["wcache"]["base_bdev_name"] == "Base0"
    assert got["WC1"]["driver_specific"]["wcache"]["ignore_fua"] is True
    assert got["WC0"]["uuid"] == info["WC0"]["uuid"]
    d2.stop()
    assert shm_objects(d2.name) == []
