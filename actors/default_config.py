"""The built-in configuration `make run` starts with (no --json / -c given).

A 256 MiB malloc bdev Malloc0, exported over NVMe/TCP as
nqn.2016-06.io.blockfabric:cnode1 on 127.0.0.1:4420 (with a discovery
listener there too) and over iSCSI as iqn.2016-06.io.blockfabric:disk1 LUN 0 on
127.0.0.1:3260 to initiators from 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

NVMF_NQN = "nqn.2016-06.io.blockfabric:cnode1"
DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery"
ISCSI_IQN = "iqn.2016-06.io.blockfabric:disk1"


def default_config(
    nvmf_port: int = 4420, iscsi_port: int = 3260
) -> list[tuple[str, dict[str, Any]]]:
    listen = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(nvmf_port)}
    return [
        (
            "bdev_malloc_create",
            {"name": "Malloc0", "num_blocks": 256 * 1024 * 1024 // 512, "block_size": 512},
        ),
        ("nvmf_create_transport", {"trtype": "TCP"}),
        (
            "nvmf_create_subsystem",
            {
                "nqn": NVMF_NQN,
                "allow_any_host": True,
                "serial_number": "BF00000000000001",
                "model_number": "blockfabric Controller",
            },
        ),
        ("nvmf_subsystem_add_ns", {"nqn": NVMF_NQN, "namespace": {"bdev_name": "Malloc0"}}),
        ("nvmf_subsystem_add_listener", {"nqn": NVMF_NQN, "listen_address": listen}),
        ("nvmf_subsystem_add_listener", {"nqn": DISCOVERY_NQN, "listen_address": listen}),
        (
            "iscsi_create_portal_group",
            {"tag": 1, "portals": [{"host": "127.0.0.1", "port": str(iscsi_port)}]},
        ),
        (
            "iscsi_create_initiator_group",
            {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]},
        ),
        (
            "iscsi_create_target_node",
            {
                "name": "disk1",
                "alias_name": "Disk1",
                "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
                "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
                "queue_depth": 64,
                "disable_chap": True,
            },
        ),
    ]


def host_instructions(nvmf_port: int = 4420, iscsi_port: int = 3260) -> str:
    return f"""\
NVMe/TCP host (nvme-cli, modprobe nvme-tcp):
  nvme discover -t tcp -a 127.0.0.1 -s {nvmf_port}
  nvme connect  -t tcp -a 127.0.0.1 -s {nvmf_port} -n {NVMF_NQN}
  nvme list
  nvme disconnect -n {NVMF_NQN}
iSCSI initiator (open-iscsi):
  iscsiadm -m discovery -t sendtargets -p 127.0.0.1:{iscsi_port}
  iscsiadm -m node -T {ISCSI_IQN} -p 127.0.0.1:{iscsi_port} --login
  iscsiadm -m session -P 3
  iscsiadm -m node -T {ISCSI_IQN} -p 127.0.0.1:{iscsi_port} --logout
RPC: blockfabric rpc bdev_get_bdevs
"""
