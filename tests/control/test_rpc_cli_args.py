"""`blockfabric rpc` argument mapping: argv -> (method, params) like SPDK's rpc.py."""

from __future__ import annotations

import argparse
import io
import json
import os
import threading

import pytest
import zmq

from blockfabric.actors.loop import EPOLLIN, EventLoop, make_eventfd
from blockfabric.control import rpc_cli
from blockfabric.control.errors import RpcError
from blockfabric.control.rpc_cli import parse_method_args
from blockfabric.control.server import RpcServer

P = parse_method_args


@pytest.mark.parametrize(
    "argv,method,params",
    [
        (["spdk_get_version"], "spdk_get_version", None),
        (["rpc_get_methods", "-i"], "rpc_get_methods", {"include_aliases": True}),
        (["bdev_get_bdevs", "-b", "Malloc0"], "bdev_get_bdevs", {"name": "Malloc0"}),
        (
            ["bdev_get_bdevs", "-b", "M", "-t", "100"],
            "bdev_get_bdevs",
            {"name": "M", "timeout": 100},
        ),
        (
            ["bdev_malloc_create", "-b", "Malloc0", "64", "512"],
            "bdev_malloc_create",
            {"num_blocks": 131072, "block_size": 512, "name": "Malloc0"},
        ),
        (
            ["bdev_malloc_create", "0.5", "4096", "-u", "u-1"],
            "bdev_malloc_create",
            {"num_blocks": 128, "block_size": 4096, "uuid": "u-1"},
        ),
        (
            ["construct_malloc_bdev", "-b", "Malloc1", "64", "512"],
            "construct_malloc_bdev",
            {"num_blocks": 131072, "block_size": 512, "name": "Malloc1"},
        ),
        (
            ["bdev_null_create", "Null0", "8", "4096"],
            "bdev_null_create",
            {"name": "Null0", "num_blocks": 2048, "block_size": 4096},
        ),
        (
            ["bdev_aio_create", "/tmp/f", "Aio0"],
            "bdev_aio_create",
            {"filename": "/tmp/f", "name": "Aio0"},
        ),
        (
            ["bdev_aio_create", "/tmp/f", "Aio0", "4096"],
            "bdev_aio_create",
            {"filename": "/tmp/f", "name": "Aio0", "block_size": 4096},
        ),
        (["bdev_malloc_delete", "Malloc0"], "bdev_malloc_delete", {"name": "Malloc0"}),
        (["log_set_level", "DEBUG"], "log_set_level", {"level": "DEBUG"}),
        (["framework_get_config", "bdev"], "framework_get_config", {"name": "bdev"}),
        (
            ["nvmf_create_transport", "-t", "TCP", "-u", "16384", "-m", "8", "-c", "8192"],
            "nvmf_create_transport",
            {
                "trtype": "TCP",
                "io_unit_size": 16384,
                "max_io_qpairs_per_ctrlr": 8,
                "in_capsule_data_size": 8192,
            },
        ),
        (
            [
                "nvmf_create_transport",
                "-t",
                "TCP",
                "-q",
                "128",
                "-a",
                "32",
                "-n",
                "511",
                "-b",
                "32",
                "-i",
                "131072",
            ],
            "nvmf_create_transport",
            {
                "trtype": "TCP",
                "max_queue_depth": 128,
                "max_aq_depth": 32,
                "num_shared_buffers": 511,
                "buf_cache_size": 32,
                "max_io_size": 131072,
            },
        ),
        (
            ["nvmf_create_transport", "-t", "TCP", "-o"],
            "nvmf_create_transport",
            {"trtype": "TCP", "c2h_success": False},
        ),
        (
            [
                "nvmf_create_subsystem",
                "nqn.2016-06.io.spdk:cnode1",
                "-a",
                "-s",
                "SPDK00000000000001",
                "-d",
                "SPDK_Controller1",
                "-m",
                "10",
            ],
            "nvmf_create_subsystem",
            {
                "nqn": "nqn.2016-06.io.spdk:cnode1",
                "allow_any_host": True,
                "serial_number": "SPDK00000000000001",
                "model_number": "SPDK_Controller1",
                "max_namespaces": 10,
            },
        ),
        (["nvmf_delete_subsystem", "nqn.x"], "nvmf_delete_subsystem", {"nqn": "nqn.x"}),
        (
            [
                "nvmf_subsystem_add_ns",
                "nqn.x",
                "Malloc0",
                "-n",
                "3",
                "-u",
                "U",
                "-g",
                "G",
                "-e",
                "E",
            ],
            "nvmf_subsystem_add_ns",
            {
                "nqn": "nqn.x",
                "namespace": {
                    "bdev_name": "Malloc0",
                    "nsid": 3,
                    "uuid": "U",
                    "nguid": "G",
                    "eui64": "E",
                },
            },
        ),
        (
            ["nvmf_subsystem_remove_ns", "nqn.x", "2"],
            "nvmf_subsystem_remove_ns",
            {"nqn": "nqn.x", "nsid": 2},
        ),
        (
            [
                "nvmf_subsystem_add_listener",
                "nqn.x",
                "-t",
                "tcp",
                "-a",
                "127.0.0.1",
                "-s",
                "4420",
                "-f",
                "ipv4",
            ],
            "nvmf_subsystem_add_listener",
            {
                "nqn": "nqn.x",
                "listen_address": {
                    "trtype": "tcp",
                    "traddr": "127.0.0.1",
                    "trsvcid": "4420",
                    "adrfam": "ipv4",
                },
            },
        ),
        (
            [
                "nvmf_subsystem_remove_listener",
                "nqn.x",
                "-t",
                "tcp",
                "-a",
                "10.0.0.1",
                "-s",
                "4420",
            ],
            "nvmf_subsystem_remove_listener",
            {
                "nqn": "nqn.x",
                "listen_address": {"trtype": "tcp", "traddr": "10.0.0.1", "trsvcid": "4420"},
            },
        ),
        (
            ["nvmf_subsystem_add_host", "nqn.x", "nqn.h"],
            "nvmf_subsystem_add_host",
            {"nqn": "nqn.x", "host": "nqn.h"},
        ),
        (
            ["nvmf_subsystem_allow_any_host", "nqn.x", "-e"],
            "nvmf_subsystem_allow_any_host",
            {"nqn": "nqn.x", "allow_any_host": True},
        ),
        (
            ["nvmf_subsystem_allow_any_host", "nqn.x", "-d"],
            "nvmf_subsystem_allow_any_host",
            {"nqn": "nqn.x", "allow_any_host": False},
        ),
        (["nvmf_get_subsystems"], "nvmf_get_subsystems", None),
        (["nvmf_subsystem_get_qpairs", "nqn.x"], "nvmf_subsystem_get_qpairs", {"nqn": "nqn.x"}),
        (
            ["iscsi_create_portal_group", "1", "127.0.0.1:3260 [::1]:3261"],
            "iscsi_create_portal_group",
            {
                "tag": 1,
                "portals": [{"host": "127.0.0.1", "port": "3260"}, {"host": "::1", "port": "3261"}],
            },
        ),
        (
            ["add_portal_group", "1", "127.0.0.1:3260"],
            "add_portal_group",
            {"tag": 1, "portals": [{"host": "127.0.0.1", "port": "3260"}]},
        ),
        (
            ["add_initiator_group", "2", "ANY", "127.0.0.1/32"],
            "add_initiator_group",
            {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]},
        ),
        (
            ["add_initiators_to_initiator_group", "2", "-n", "iqn.a iqn.b"],
            "add_initiators_to_initiator_group",
            {"tag": 2, "initiators": ["iqn.a", "iqn.b"]},
        ),
        (
            ["iscsi_initiator_group_remove_initiators", "2", "-m", "10.0.0.0/8"],
            "iscsi_initiator_group_remove_initiators",
            {"tag": 2, "netmasks": ["10.0.0.0/8"]},
        ),
        (
            [
                "construct_target_node",
                "disk1",
                "Data Disk1",
                "Malloc0:0 Malloc1:1",
                "1:2",
                "64",
                "-d",
            ],
            "construct_target_node",
            {
                "name": "disk1",
                "alias_name": "Data Disk1",
                "queue_depth": 64,
                "disable_chap": True,
                "luns": [
                    {"bdev_name": "Malloc0", "lun_id": 0},
                    {"bdev_name": "Malloc1", "lun_id": 1},
                ],
                "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
            },
        ),
        (
            ["iscsi_create_target_node", "t", "a", "M:0", "1:1 2:2", "32", "-H", "-g", "3"],
            "iscsi_create_target_node",
            {
                "name": "t",
                "alias_name": "a",
                "queue_depth": 32,
                "header_digest": True,
                "chap_group": 3,
                "luns": [{"bdev_name": "M", "lun_id": 0}],
                "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}, {"pg_tag": 2, "ig_tag": 2}],
            },
        ),
        (
            ["target_node_add_lun", "iqn.t", "Malloc2", "-i", "2"],
            "target_node_add_lun",
            {"name": "iqn.t", "bdev_name": "Malloc2", "lun_id": 2},
        ),
        (
            ["add_pg_ig_maps", "iqn.t", "1:1"],
            "add_pg_ig_maps",
            {"name": "iqn.t", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}]},
        ),
        (
            ["delete_pg_ig_maps", "iqn.t", "1:1"],
            "delete_pg_ig_maps",
            {"name": "iqn.t", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}]},
        ),
        (["delete_target_node", "iqn.t"], "delete_target_node", {"name": "iqn.t"}),
        (["iscsi_delete_target_node", "iqn.t"], "iscsi_delete_target_node", {"name": "iqn.t"}),
        (["delete_portal_group", "1"], "delete_portal_group", {"tag": 1}),
        (["delete_initiator_group", "2"], "delete_initiator_group", {"tag": 2}),
        (["get_target_nodes"], "get_target_nodes", None),
        (
            ["iscsi_set_options", "-f", "/a", "-r", "-g", "1", "-q", "64"],
            "iscsi_set_options",
            {"auth_file": "/a", "require_chap": True, "chap_group": 1, "max_queue_depth": 64},
        ),
        (
            [
                "iscsi_create_auth_group",
                "1",
                "-c",
                "user:u1 secret:s1,user:u2 secret:s2 muser:m msecret:ms",
            ],
            "iscsi_create_auth_group",
            {
                "tag": 1,
                "secrets": [
                    {"user": "u1", "secret": "s1"},
                    {"user": "u2", "secret": "s2", "muser": "m", "msecret": "ms"},
                ],
            },
        ),
        (
            ["iscsi_auth_group_add_secret", "1", "-u", "u", "-s", "s"],
            "iscsi_auth_group_add_secret",
            {"tag": 1, "user": "u", "secret": "s"},
        ),
        (
            ["iscsi_target_node_set_auth", "iqn.t", "-g", "1", "-m"],
            "iscsi_target_node_set_auth",
            {"name": "iqn.t", "chap_group": 1, "mutual_chap": True},
        ),
        (
            [
                "bdev_nvme_attach_controller",
                "-b",
                "TLSTEST",
                "-t",
                "tcp",
                "-a",
                "127.0.0.1",
                "-s",
                "4420",
                "-f",
                "ipv4",
                "-n",
                "nqn.s",
                "-q",
                "nqn.h",
                "-e",
                "-d",
                "-l",
                "30",
                "-o",
                "2",
            ],
            "bdev_nvme_attach_controller",
            {
                "name": "TLSTEST",
                "trtype": "tcp",
                "traddr": "127.0.0.1",
                "trsvcid": "4420",
                "adrfam": "ipv4",
                "subnqn": "nqn.s",
                "hostnqn": "nqn.h",
                "hdgst": True,
                "ddgst": True,
                "ctrlr_loss_timeout_sec": 30,
                "reconnect_delay_sec": 2,
            },
        ),
        (
            ["bdev_nvme_detach_controller", "Nvme0"],
            "bdev_nvme_detach_controller",
            {"name": "Nvme0"},
        ),
        # rpc.py turns --tgt_name into --tgt-name
        (["nvmf_get_stats", "--tgt_name", "t1"], "nvmf_get_stats", {"tgt_name": "t1"}),
        # --params merges over the arguments, and carries unknown methods
        (
            ["bdev_get_bdevs", "-b", "M", "--params", '{"timeout": 5}'],
            "bdev_get_bdevs",
            {"name": "M", "timeout": 5},
        ),
        (["my_custom_method", "--params", '{"a": [1]}'], "my_custom_method", {"a": [1]}),
        (["my_custom_method"], "my_custom_method", None),
    ],
)
def test_mapping(argv, method, params):
    m, p, _ = P(argv)
    assert (m, p) == (method, params)


def test_output_modes():
    assert P(["nvmf_create_transport", "-t", "TCP"])[2] == "none"
    assert P(["bdev_malloc_create", "1", "512"])[2] == "json"
    assert P(["bdev_get_bdevs"])[2] == "dict"
    assert P(["bdev_nvme_attach_controller", "-b", "N", "-t", "tcp", "-a", "x"])[2] == "array"
    assert rpc_cli.format_result("Malloc0", "json") == "Malloc0"
    assert rpc_cli.format_result(True, "none") is None
    assert rpc_cli.format_result([{"a": 1}], "dict") == '[\n  {\n    "a": 1\n  }\n]'
    assert rpc_cli.format_result(["Nvme0n1", "a b"], "array") == "Nvme0n1 'a b'"


def test_bad_arguments():
    with pytest.raises(SystemExit):
        P(["bdev_malloc_create", "-b", "M"])  # sizes missing
    with pytest.raises(SystemExit):
        P(["nvmf_subsystem_add_listener", "nqn.x", "-a", "1.2.3.4"])  # -t required
    with pytest.raises(rpc_cli.CliError, match="invalid JSON"):
        P(["bdev_get_bdevs", "--params", "{x"])
    with pytest.raises(rpc_cli.CliError, match="object or array"):
        P(["foo", "--params", "3"])


def test_load_config_reads_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": []}]}))
    assert P(["load_config", "-j", str(f)])[:2] == (
        "load_config",
        {"subsystems": [{"subsystem": "bdev", "config": []}]},
    )


def test_register_adds_rpc_subcommand():
    top = argparse.ArgumentParser(prog="blockfabric")
    sub = top.add_subparsers(dest="cmd")
    rpc_cli.register(sub)
    a = top.parse_args(["rpc", "-s", "tcp://127.0.0.1:1", "-t", "2", "bdev_get_bdevs", "-t", "7"])
    assert a.server_addr == "tcp://127.0.0.1:1" and a.timeout == 2.0
    assert a.rpc_args == ["bdev_get_bdevs", "-t", "7"]
    assert a.func is rpc_cli.run


# --- end to end against a real server ------------------------------------------------


def _dispatch(method, params):
    if method == "bdev_malloc_create":
        return params.get("name", "Malloc0")
    if method == "fail_me":
        raise RpcError(-32602, "Invalid parameters")
    if method in ("nvmf_create_transport", "construct_target_node"):
        return True
    if method == "echo":
        return params
    raise RpcError(-32601, f"Method not found: {method}")


@pytest.fixture
def server(tmp_path):
    loop = EventLoop(poll_mode="blocking")
    zctx = zmq.Context()
    srv = RpcServer(loop, _dispatch, f"ipc://{tmp_path}/cli.sock", zmq_context=zctx)
    wake = make_eventfd()
    loop.add_fd(wake, EPOLLIN, lambda ev: os.eventfd_read(wake))
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    yield srv.addr
    loop.stop()
    os.eventfd_write(wake, 1)
    t.join(5)
    srv.close()
    loop.close()
    os.close(wake)
    zctx.term()


def test_cli_end_to_end(server, capsys):
    assert rpc_cli.main(["-s", server, "bdev_malloc_create", "-b", "Malloc7", "64", "512"]) == 0
    assert capsys.readouterr().out == "Malloc7\n"
    assert rpc_cli.main(["-s", server, "nvmf_create_transport", "-t", "TCP"]) == 0
    assert capsys.readouterr().out == ""
    assert rpc_cli.main(["-s", server, "echo", "--params", '{"a": 1}']) == 0
    assert json.loads(capsys.readouterr().out) == {"a": 1}
    assert rpc_cli.main(["-s", server, "fail_me", "--params", '{"x": 1}']) == 1
    err = capsys.readouterr().err
    assert err.startswith("request:\n")
    assert "Got JSON-RPC error response\nresponse:\n" in err
    assert '"method": "fail_me"' in err and '"code": -32602' in err


def test_cli_unreachable(tmp_path, capsys):
    assert rpc_cli.main(["-s", f"ipc://{tmp_path}/nothing.sock", "spdk_get_version"]) == 1
    assert "is the target running" in capsys.readouterr().err


def test_cli_dry_run(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert rpc_cli.main(["--dry-run", "bdev_get_bdevs", "-b", "X"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.split("\n", 1)[1]) == {
        "method": "bdev_get_bdevs",
        "params": {"name": "X"},
    }
