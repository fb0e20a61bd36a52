"""RPC handlers against NvmfState with a fake RpcContext (no reactors running)."""

from __future__ import annotations

import pytest

from blockfabric.control.errors import INVALID_PARAMS, RpcError
from blockfabric.transports.nvmf.nqn import DISCOVERY_NQN


@pytest.fixture
def rpc(h):  # type: ignore[no-untyped-def]
    r = h.FakeRpc(nreactors=2)
    r.bdevs["Malloc0"] = h.MemBdev("Malloc0", 64)
    r.bdevs["Malloc1"] = h.MemBdev("Malloc1", 64)
    yield r
    r.stop()


def _err(rpc, method, params) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(RpcError) as ei:
        rpc.rpc(method, params)
    assert ei.value.code == INVALID_PARAMS
    return ei.value.message


NQN = "nqn.2016-06.io.spdk:cnode1"


def test_transport(rpc) -> None:  # type: ignore[no-untyped-def]
    assert rpc.rpc(
        "nvmf_create_transport", {"trtype": "tcp", "max_queue_depth": 64, "c2h_success": False}
    )
    [t] = rpc.rpc("nvmf_get_transports")
    assert t["trtype"] == "TCP" and t["max_queue_depth"] == 64 and t["c2h_success"] is False
    assert (
        t["max_io_qpairs_per_ctrlr"],
        t["in_capsule_data_size"],
        t["max_io_size"],
        t["io_unit_size"],
        t["max_aq_depth"],
    ) == (127, 4096, 131072, 131072, 128)
    assert "already exists" in _err(rpc, "nvmf_create_transport", {"trtype": "TCP"})
    assert "not supported" in _err(rpc, "nvmf_create_transport", {"trtype": "VFIOUSER"})
    assert "max_queue_depth" in _err(
        rpc, "nvmf_get_transports", {"trtype": "TCP", "max_queue_depth": 1}
    )


def test_transport_validation(rpc) -> None:  # type: ignore[no-untyped-def]
    assert "max_queue_depth" in _err(
        rpc, "nvmf_create_transport", {"trtype": "TCP", "max_queue_depth": 1}
    )
    assert "multiple of 16" in _err(
        rpc, "nvmf_create_transport", {"trtype": "TCP", "in_capsule_data_size": 1000}
    )
    assert "integer" in _err(rpc, "nvmf_create_transport", {"trtype": "TCP", "max_aq_depth": "x"})
    assert rpc.rpc("nvmf_create_transport", {"trtype": "TCP", "num_cqe": 5})  # RDMA option ignored


def test_subsystem_lifecycle_and_shape(rpc, h) -> None:  # type: ignore[no-untyped-def]
    rpc.rpc("nvmf_create_transport", {"trtype": "TCP"})
    assert rpc.rpc("nvmf_create_subsystem", {"nqn": NQN, "serial_number": "SPDK00000000000001"})
    assert "already exists" in _err(rpc, "nvmf_create_subsystem", {"nqn": NQN})
    why = _err(rpc, "nvmf_create_subsystem", {"nqn": "nqn.2016-13.io.spdk:x"})
    assert "Invalid NQN" in why and "month" in why
    assert "reserved" in _err(rpc, "nvmf_create_subsystem", {"nqn": DISCOVERY_NQN})
    assert "serial_number" in _err(
        rpc, "nvmf_create_subsystem", {"nqn": NQN + "x", "serial_number": "x" * 21}
    )
    assert (
        rpc.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}) == 1
    )
    assert (
        rpc.rpc(
            "nvmf_subsystem_add_ns",
            {
                "nqn": NQN,
                "namespace": {"bdev_name": "Malloc1", "nsid": 7, "eui64": "0011223344556677"},
            },
        )
        == 7
    )
    assert "Unable to find bdev" in _err(
        rpc, "nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "nope"}}
    )
    rpc.bdevs["Malloc2"] = h.MemBdev("Malloc2", 64)
    assert "already exists" in _err(
        rpc, "nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc2", "nsid": 7}}
    )
    assert "already namespace" in _err(
        rpc, "nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}
    )
    assert "nguid" in _err(
        rpc,
        "nvmf_subsystem_add_ns",
        {"nqn": NQN, "namespace": {"bdev_name": "Malloc2", "nguid": "12"}},
    )
    assert "Unable to find subsystem" in _err(
        rpc,
        "nvmf_subsystem_add_ns",
        {"nqn": "nqn.2016-06.io.spdk:zz", "namespace": {"bdev_name": "Malloc2"}},
    )
    rpc.rpc(
        "nvmf_subsystem_add_listener",
        {
            "nqn": NQN,
            "listen_address": {
                "trtype": "tcp",
                "traddr": "127.0.0.1",
                "trsvcid": "0",
                "adrfam": "ipv4",
            },
        },
    )
    rpc.rpc("nvmf_subsystem_add_host", {"nqn": NQN, "host": h.HOSTNQN})
    assert "Invalid host NQN" in _err(rpc, "nvmf_subsystem_add_host", {"nqn": NQN, "host": "bogus"})
    subs = rpc.rpc("nvmf_get_subsystems")
    assert subs[0] == {
        "nqn": DISCOVERY_NQN,
        "subtype": "Discovery",
        "listen_addresses": [],
        "allow_any_host": True,
        "hosts": [],
    }
    s = subs[1]
    port = s["listen_addresses"][0]["trsvcid"]
    assert port != "0" and s["listen_addresses"] == [
        {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port}
    ]
    assert s["hosts"] == [{"nqn": h.HOSTNQN}] and s["allow_any_host"] is False
    assert (s["serial_number"], s["model_number"], s["max_namespaces"]) == (
        "SPDK00000000000001",
        "blockfabric Controller",
        32,
    )
    ns1 = s["namespaces"][0]
    assert (
        ns1["nsid"] == 1
        and ns1["bdev_name"] == "Malloc0"
        and ns1["uuid"] == rpc.bdevs["Malloc0"].uuid
    )
    assert ns1["nguid"] == rpc.bdevs["Malloc0"].uuid.replace("-", "").upper()
    assert s["namespaces"][1]["eui64"] == "0011223344556677"
    # reactors got the snapshot
    snap = rpc.reactors[1].nvmf_config
    assert [n["nsid"] for n in snap["subsystems"][NQN]["namespaces"]] == [1, 7]
    # save_config replays
    cfg = rpc.nvmf.save_config()
    methods = [c["method"] for c in cfg]
    assert methods == [
        "nvmf_set_config",
        "nvmf_set_max_subsystems",
        "nvmf_create_transport",
        "nvmf_create_subsystem",
        "nvmf_subsystem_add_listener",
        "nvmf_subsystem_add_host",
        "nvmf_subsystem_add_ns",
        "nvmf_subsystem_add_ns",
    ]
    assert (
        cfg[3]["params"]["nqn"] == NQN and cfg[3]["params"]["serial_number"] == "SPDK00000000000001"
    )
    assert cfg[4]["params"]["listen_address"] == {
        "trtype": "TCP",
        "adrfam": "IPv4",
        "traddr": "127.0.0.1",
        "trsvcid": port,
    }
    assert cfg[7]["params"]["namespace"] == {
        "nsid": 7,
        "bdev_name": "Malloc1",
        "nguid": rpc.bdevs["Malloc1"].uuid.replace("-", ""),
        "eui64": "0011223344556677",
        "uuid": rpc.bdevs["Malloc1"].uuid,
    }
    # listener sharing: a second subsystem on the same address shares the socket
    rpc.rpc("nvmf_create_subsystem", {"nqn": NQN + "b"})
    rpc.rpc(
        "nvmf_subsystem_add_listener",
        {
            "nqn": NQN + "b",
            "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": port},
        },
    )
    assert len(rpc.listeners) == 1
    assert "already exists" in _err(
        rpc,
        "nvmf_subsystem_add_listener",
        {"nqn": NQN, "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": port}},
    )
    rpc.rpc("nvmf_delete_subsystem", {"nqn": NQN})
    assert len(rpc.listeners) == 1
    rpc.rpc(
        "nvmf_subsystem_remove_listener",
        {
            "nqn": NQN + "b",
            "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": port},
        },
    )
    assert rpc.listeners == {}
    assert "Unable to find subsystem" in _err(rpc, "nvmf_delete_subsystem", {"nqn": NQN})
    assert "not permitted" in _err(rpc, "nvmf_delete_subsystem", {"nqn": DISCOVERY_NQN})
    assert "does not exist" in _err(rpc, "nvmf_subsystem_remove_ns", {"nqn": NQN + "b", "nsid": 3})


def test_listener_needs_transport_and_valid_address(rpc) -> None:  # type: ignore[no-untyped-def]
    rpc.rpc("nvmf_create_subsystem", {"nqn": NQN})
    la = {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "4420"}
    assert "nvmf_create_transport" in _err(
        rpc, "nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": la}
    )
    rpc.rpc("nvmf_create_transport", {"trtype": "TCP"})
    assert "port number" in _err(
        rpc, "nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": {**la, "trsvcid": "abc"}}
    )
    assert "adrfam" in _err(
        rpc, "nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": {**la, "adrfam": "fc"}}
    )
    assert "traddr" in _err(
        rpc,
        "nvmf_subsystem_add_listener",
        {"nqn": NQN, "listen_address": {"trtype": "TCP", "trsvcid": "1"}},
    )
    # a secure channel (TLS) needs a subsystem that names its hosts
    rpc.rpc("nvmf_subsystem_allow_any_host", {"nqn": NQN, "allow_any_host": True})
    assert "allows any host" in _err(
        rpc,
        "nvmf_subsystem_add_listener",
        {"nqn": NQN, "listen_address": la, "secure_channel": True},
    )


def test_cntlid_allocation_round_robin_and_reuse(rpc) -> None:  # type: ignore[no-untyped-def]
    from blockfabric.control.context import SUPERVISOR_OPS

    rpc.rpc(
        "nvmf_create_subsystem",
        {"nqn": NQN, "allow_any_host": True, "min_cntlid": 5, "max_cntlid": 7},
    )
    mk = SUPERVISOR_OPS["nvmf.create_ctrlr"]
    args = {"nqn": NQN, "hostnqn": "nqn.2016-06.io.spdk:h", "hostid": "00" * 16, "kato_ms": 0}
    ids = [mk(rpc, 0, args)["cntlid"] for _ in range(3)]
    assert ids == [5, 6, 7]
    assert mk(rpc, 0, args) == {"error": "busy"}
    assert SUPERVISOR_OPS["nvmf.ctrlr_gone"](rpc, 0, {"nqn": NQN, "cntlid": 6})
    assert rpc.events[-1] == (
        None,
        "nvmf.destroy_ctrlr",
        {"nqn": NQN, "cntlid": 6, "io_only": False},
    )
    assert mk(rpc, 1, args)["cntlid"] == 6
    assert rpc.nvmf.ctrlrs[(NQN, 6)].admin_reactor == 1
    f = SUPERVISOR_OPS["nvmf.find_ctrlr"]
    q = {"nqn": NQN, "cntlid": 6, "hostnqn": args["hostnqn"], "hostid": "00" * 16, "qid": 1}
    assert f(rpc, 1, q) == {"error": "not_enabled"}
    SUPERVISOR_OPS["nvmf.ctrlr_state"](rpc, 1, {"nqn": NQN, "cntlid": 6, "enabled": True})
    assert f(rpc, 0, q) == {"admin_reactor": 1, "vwc": 1}
    assert f(rpc, 0, q) == {"error": "qid"}
    assert f(rpc, 0, {**q, "qid": 2, "hostnqn": "nqn.2016-06.io.spdk:x"}) == {"error": "hostnqn"}
    assert f(rpc, 0, {**q, "cntlid": 99}) == {"error": "cntlid"}
    ctrls = rpc.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN})
    assert [c["cntlid"] for c in ctrls] == [5, 6, 7] and ctrls[1]["num_io_qpairs"] == 1
    # removing access drops the directory entries and tells the reactors
    rpc.rpc("nvmf_subsystem_allow_any_host", {"nqn": NQN, "allow_any_host": False})
    assert rpc.nvmf.ctrlrs == {}


def test_bdev_hot_remove_drops_namespace(rpc) -> None:  # type: ignore[no-untyped-def]
    rpc.rpc("nvmf_create_subsystem", {"nqn": NQN})
    rpc.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc1", "nsid": 3}})
    assert rpc.nvmf.on_bdev_removed("Malloc1") == [(NQN, 3)]
    assert rpc.nvmf.subsystems[NQN]["namespaces"] == {}


def test_stats_and_qpairs_gather(rpc) -> None:  # type: ignore[no-untyped-def]
    rpc.rpc("nvmf_create_subsystem", {"nqn": NQN})
    st = rpc.rpc("nvmf_get_stats")
    assert [g["name"] for g in st["poll_groups"]] == [
        "nvmf_tgt_poll_group_0",
        "nvmf_tgt_poll_group_1",
    ]
    assert rpc.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN}) == []
    assert rpc.rpc("nvmf_subsystem_get_listeners", {"nqn": NQN}) == []
