"""iSCSI RPC methods against IscsiState with a fake RpcContext."""

from __future__ import annotations

from typing import Any

import pytest

import blockfabric.transports.iscsi.rpc  # noqa: F401  (registers the methods)
from blockfabric.control.errors import RpcError
from blockfabric.control.registry import REGISTRY
from blockfabric.transports.iscsi.state import IscsiState


class Ctx:
    def __init__(self) -> None:
        self.iscsi = IscsiState()
        self.bdevs = {"Malloc0": object(), "Malloc1": object()}
        self.num_reactors = 2
        self.changes = 0
        self.listeners: list[tuple[str, str, int, str]] = []
        self.removed: list[tuple[str, str, int]] = []

    def config_changed(self) -> None:
        self.changes += 1

    def add_listener(self, proto: str, addr: str, port: int, family: str = "ipv4") -> str:
        if port == 1:
            raise RpcError(-32603, "cannot bind")
        self.listeners.append((proto, addr, port, family))
        return f"{addr}:{port}"

    def remove_listener(self, proto: str, addr: str, port: int) -> None:
        self.removed.append((proto, addr, port))

    def gather(self, op: str, args: dict[str, Any], timeout: float = 5.0) -> list[Any]:
        return [[{"cid": 0, "tsih": 1}], [{"cid": 1, "tsih": 2}]]


def call(ctx: Ctx, name: str, params: Any = None) -> Any:
    return REGISTRY.call(ctx, name, params)


@pytest.fixture
def ctx() -> Ctx:
    c = Ctx()
    call(
        c,
        "iscsi_create_portal_group",
        {"tag": 1, "portals": [{"host": "127.0.0.1", "port": "3260"}]},
    )
    call(
        c,
        "iscsi_create_initiator_group",
        {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]},
    )
    return c


def test_portal_group_lifecycle(ctx: Ctx) -> None:
    assert ctx.listeners == [("iscsi", "127.0.0.1", 3260, "ipv4")]
    assert call(ctx, "get_portal_groups") == [
        {"tag": 1, "portals": [{"host": "127.0.0.1", "port": "3260"}], "private": False}
    ]
    call(ctx, "add_portal_group", {"tag": 3, "portals": [{"host": "[::1]", "port": 3261}]})
    assert ctx.listeners[-1] == ("iscsi", "::1", 3261, "ipv6")
    with pytest.raises(RpcError, match="already exists"):
        call(
            ctx,
            "iscsi_create_portal_group",
            {"tag": 3, "portals": [{"host": "127.0.0.1", "port": "3262"}]},
        )
    with pytest.raises(RpcError, match="portals\\[0\\].port"):
        call(
            ctx,
            "iscsi_create_portal_group",
            {"tag": 4, "portals": [{"host": "127.0.0.1", "port": "x"}]},
        )
    with pytest.raises(RpcError, match="cannot bind"):
        call(
            ctx,
            "iscsi_create_portal_group",
            {
                "tag": 5,
                "portals": [{"host": "127.0.0.1", "port": "3270"}, {"host": "h", "port": "1"}],
            },
        )
    assert ("iscsi", "127.0.0.1", 3270) in ctx.removed and 5 not in ctx.iscsi.portal_groups
    call(ctx, "iscsi_delete_portal_group", {"tag": 3})
    assert ("iscsi", "::1", 3261) in ctx.removed


def test_target_node(ctx: Ctx) -> None:
    p = {"name": "disk1", "alias_name": "Data Disk1", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
         "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}], "queue_depth": 64}  # fmt: skip
    assert call(ctx, "iscsi_create_target_node", p) is True
    nodes = call(ctx, "iscsi_get_target_nodes")
    assert nodes[0]["name"] == "iqn.2016-06.io.blockfabric:disk1"
    assert nodes[0]["luns"] == [{"bdev_name": "Malloc0", "lun_id": 0}]
    assert nodes[0]["pg_ig_maps"] == [{"pg_tag": 1, "ig_tag": 2}] and "home_reactor" not in nodes[0]
    with pytest.raises(RpcError, match="already exists"):
        call(ctx, "construct_target_node", p)
    with pytest.raises(RpcError, match="bdev Nope not found"):
        call(
            ctx,
            "iscsi_create_target_node",
            {**p, "name": "d2", "luns": [{"bdev_name": "Nope", "lun_id": 0}]},
        )
    with pytest.raises(RpcError, match="portal group 9 not found"):
        call(
            ctx,
            "iscsi_create_target_node",
            {**p, "name": "d2", "pg_ig_maps": [{"pg_tag": 9, "ig_tag": 2}]},
        )
    with pytest.raises(RpcError, match="mutually exclusive"):
        call(
            ctx,
            "iscsi_create_target_node",
            {**p, "name": "d2", "disable_chap": True, "require_chap": True},
        )
    with pytest.raises(RpcError, match="queue_depth"):
        call(ctx, "iscsi_create_target_node", {**p, "name": "d2", "queue_depth": 0})
    call(ctx, "iscsi_create_target_node", {**p, "name": "iqn.2020-01.com.x:d2"})
    snap = ctx.iscsi.snapshot()
    assert [t["home_reactor"] for t in snap["target_nodes"]] == [0, 1]  # round robin
    call(ctx, "iscsi_target_node_add_lun", {"name": "disk1", "bdev_name": "Malloc1"})
    assert ctx.iscsi.node("disk1").luns == {0: "Malloc0", 1: "Malloc1"}
    with pytest.raises(RpcError, match="LUN 1 already exists"):
        call(ctx, "target_node_add_lun", {"name": "disk1", "bdev_name": "Malloc1", "lun_id": 1})
    with pytest.raises(RpcError, match="used by target node"):
        call(ctx, "iscsi_delete_portal_group", {"tag": 1})
    call(
        ctx,
        "iscsi_target_node_remove_pg_ig_maps",
        {"name": "disk1", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}]},
    )
    call(ctx, "add_pg_ig_maps", {"name": "disk1", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}]})
    assert ctx.iscsi.on_bdev_removed("Malloc1") == [("iqn.2016-06.io.blockfabric:disk1", 1)]
    call(ctx, "delete_target_node", {"name": "iqn.2016-06.io.blockfabric:disk1"})
    with pytest.raises(RpcError, match="not found"):
        call(ctx, "iscsi_delete_target_node", {"name": "disk1"})


def test_initiator_groups(ctx: Ctx) -> None:
    call(
        ctx,
        "iscsi_initiator_group_add_initiators",
        {"tag": 2, "initiators": ["iqn.x:a"], "netmasks": ["10.0.0.0/8"]},
    )
    assert call(ctx, "iscsi_get_initiator_groups") == [
        {"tag": 2, "initiators": ["ANY", "iqn.x:a"], "netmasks": ["127.0.0.1/32", "10.0.0.0/8"]}
    ]
    with pytest.raises(RpcError, match="invalid netmask"):
        call(ctx, "iscsi_initiator_group_add_initiators", {"tag": 2, "netmasks": ["300.0.0.0/8"]})
    call(ctx, "iscsi_initiator_group_remove_initiators", {"tag": 2, "initiators": ["iqn.x:a"]})
    with pytest.raises(RpcError, match="not in group"):
        call(ctx, "iscsi_initiator_group_remove_initiators", {"tag": 2, "initiators": ["iqn.x:a"]})
    with pytest.raises(RpcError, match="must be an integer"):
        call(
            ctx,
            "iscsi_create_initiator_group",
            {"tag": "x", "initiators": ["ANY"], "netmasks": ["ANY"]},
        )
    call(ctx, "delete_initiator_group", {"tag": 2})
    assert call(ctx, "get_initiator_groups") == []


def test_auth_groups_and_options(ctx: Ctx) -> None:
    call(
        ctx,
        "iscsi_create_auth_group",
        {"tag": 1, "secrets": [{"user": "u", "secret": "s", "muser": "m", "msecret": "ms"}]},
    )
    call(ctx, "iscsi_auth_group_add_secret", {"tag": 1, "user": "u2", "secret": "s2"})
    assert call(ctx, "iscsi_get_auth_groups") == [
        {
            "tag": 1,
            "secrets": [
                {"user": "u", "secret": "s", "muser": "m", "msecret": "ms"},
                {"user": "u2", "secret": "s2"},
            ],
        }
    ]
    with pytest.raises(RpcError, match="muser and msecret"):
        call(
            ctx,
            "iscsi_auth_group_add_secret",
            {"tag": 1, "user": "u3", "secret": "s", "muser": "m"},
        )
    call(ctx, "iscsi_auth_group_remove_secret", {"tag": 1, "user": "u2"})
    call(
        ctx,
        "iscsi_set_discovery_auth",
        {"require_chap": True, "mutual_chap": True, "chap_group": 1},
    )
    o = call(ctx, "iscsi_get_options")
    assert (
        o["require_chap"]
        and o["chap_group"] == 1
        and o["node_base"] == "iqn.2016-06.io.blockfabric"
    )
    assert (
        o["max_connections_per_session"] == 2
        and o["first_burst_length"] == 8192
        and o["nop_timeout"] == 60
    )
    with pytest.raises(RpcError, match="auth group 7 not found"):
        call(ctx, "iscsi_set_discovery_auth", {"chap_group": 7})
    call(ctx, "iscsi_set_options", {"max_sessions": 16, "first_burst_length": 65536})
    assert call(ctx, "get_iscsi_global_params")["max_sessions"] == 16
    with pytest.raises(RpcError, match="error_recovery_level"):
        call(ctx, "iscsi_set_options", {"error_recovery_level": 2})
    with pytest.raises(RpcError, match="unknown parameter 'bogus'"):
        call(ctx, "iscsi_set_options", {"bogus": 1})
    # bounds against hostile hosts (blockfabric extensions)
    o = call(ctx, "iscsi_get_options")
    assert (o["login_timeout"], o["data_out_timeout"]) == (15, 30)
    assert o["max_connections_per_reactor"] == 1024 and o["max_transfer_length"] == 32 << 20
    call(
        ctx,
        "iscsi_set_options",
        {"login_timeout": 5, "data_out_timeout": 10, "max_connections_per_reactor": 100},
    )
    assert call(ctx, "iscsi_get_options")["login_timeout"] == 5
    with pytest.raises(RpcError, match="max_transfer_length"):
        call(ctx, "iscsi_set_options", {"max_transfer_length": 1 << 40})
    with pytest.raises(RpcError, match="max_connections_per_reactor"):
        call(ctx, "iscsi_set_options", {"max_connections_per_reactor": 0})
    call(ctx, "iscsi_create_target_node", {"name": "d", "alias_name": "", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
                                           "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}], "queue_depth": 8})  # fmt: skip
    call(ctx, "iscsi_target_node_set_auth", {"name": "d", "chap_group": 1, "require_chap": True})
    assert ctx.iscsi.node("d").require_chap
    cfg = ctx.iscsi.save_config()
    assert [c["method"] for c in cfg] == [
        "iscsi_set_options", "iscsi_create_auth_group", "iscsi_create_portal_group",
        "iscsi_create_initiator_group", "iscsi_create_target_node",
    ]  # fmt: skip
    # save_config replays into an identical state
    c2 = Ctx()
    for c in cfg:
        call(c2, c["method"], c["params"])
    assert c2.iscsi.save_config() == cfg


def test_get_connections(ctx: Ctx) -> None:
    assert call(ctx, "iscsi_get_connections") == [{"cid": 0, "tsih": 1}, {"cid": 1, "tsih": 2}]
