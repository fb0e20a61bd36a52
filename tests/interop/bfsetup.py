"""Configure a running blockfabric daemon (tests/bftest.Daemon) by SPDK-named RPCs for interop tests."""

from __future__ import annotations

from typing import Any

BF_BASE = "iqn.2016-06.io.blockfabric"
DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery"


def malloc(d: Any, name: str, size_mb: int, block_size: int = 512) -> None:
    d.rpc(
        "bdev_malloc_create",
        {"name": name, "num_blocks": (size_mb << 20) // block_size, "block_size": block_size},
    )


def bf_nvmf_subsystem(d: Any, port: int, nqn: str, bdev: str, serial: str = "BF0001") -> None:
    """TCP transport, subsystem NQN with BDEV as namespace 1, listener + discovery listener on PORT."""
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc(
        "nvmf_create_subsystem",
        {"nqn": nqn, "allow_any_host": True, "serial_number": serial},
    )
    d.rpc("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": bdev}})
    addr = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    d.rpc("nvmf_subsystem_add_listener", {"nqn": nqn, "listen_address": addr})
    d.rpc("nvmf_subsystem_add_listener", {"nqn": DISCOVERY_NQN, "listen_address": addr})


def bf_iscsi_portal(d: Any, port: int) -> None:
    d.rpc(
        "iscsi_create_portal_group",
        {"tag": 1, "portals": [{"host": "127.0.0.1", "port": str(port)}]},
    )
    d.rpc(
        "iscsi_create_initiator_group",
        {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]},
    )


def bf_iscsi_node(d: Any, name: str, bdev: str, queue_depth: int = 64) -> None:
    d.rpc(
        "iscsi_create_target_node",
        {
            "name": name,
            "alias_name": name.capitalize(),
            "luns": [{"bdev_name": bdev, "lun_id": 0}],
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
            "queue_depth": queue_depth,
            "disable_chap": True,
        },
    )


def bf_iscsi_targets(
    d: Any, port: int, size_mb: int, user: str, secret: str, muser: str, msecret: str
) -> None:
    """disk1 (no CHAP, SIZE_MB), disk2 (one-way CHAP), disk3 (mutual CHAP), 16 MiB each."""
    bf_iscsi_portal(d, port)
    malloc(d, "Malloc0", size_mb)
    malloc(d, "Malloc1", 16)
    malloc(d, "Malloc2", 16)
    bf_iscsi_node(d, "disk1", "Malloc0")
    bf_iscsi_node(d, "disk2", "Malloc1")
    bf_iscsi_node(d, "disk3", "Malloc2")
    d.rpc(
        "iscsi_create_auth_group",
        {
            "tag": 1,
            "secrets": [{"user": user, "secret": secret, "muser": muser, "msecret": msecret}],
        },
    )
    for node, mutual in (("disk2", False), ("disk3", True)):
        d.rpc(
            "iscsi_target_node_set_auth",
            {
                "name": f"{BF_BASE}:{node}",
                "chap_group": 1,
                "require_chap": True,
                "mutual_chap": mutual,
            },
        )


def daemon_clean(d: Any) -> None:
    """The daemon is still up and its log has no Python traceback."""
    log = d.log()
    assert "Traceback" not in log, f"traceback in the daemon log:\n{log[-4000:]}"
    d.rpc("spdk_get_version")
