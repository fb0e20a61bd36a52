"""The control plane of a real daemon: errors, fuzz, save_config round trip."""

from __future__ import annotations

import json
import os
import random
import socket

import msgpack
import pytest
import zmq
from bftest import shm_objects

from blockfabric.control.client import RpcClientError

pytestmark = pytest.mark.e2e


def _err(d, method, params):
    with pytest.raises(RpcClientError) as e:
        d.rpc(method, params)
    return e.value


def test_rpc_errors_name_the_problem(daemon):
    e = _err(daemon, "no_such_method", {})
    assert e.code == -32601
    e = _err(daemon, "bdev_malloc_create", {"num_blocks": 8, "block_size": 512, "bogus": 1})
    assert e.code == -32602 and "bogus" in e.message
    e = _err(daemon, "bdev_malloc_create", {"num_blocks": "8", "block_size": 512})
    assert e.code == -32602 and "num_blocks" in e.message
    e = _err(daemon, "bdev_malloc_create", {"num_blocks": 8, "block_size": 500})
    assert e.code == -32602 and "block_size" in e.message
    e = _err(daemon, "bdev_malloc_create", {"block_size": 512})
    assert "missing required parameter 'num_blocks'" in e.message
    daemon.rpc("bdev_malloc_create", {"name": "M", "num_blocks": 8, "block_size": 512})
    e = _err(daemon, "bdev_malloc_create", {"name": "M", "num_blocks": 8, "block_size": 512})
    assert "already exists" in e.message
    e = _err(daemon, "bdev_malloc_delete", {"name": "nope"})
    assert "not found" in e.message
    e = _err(daemon, "nvmf_create_subsystem", {"nqn": "nqn.bad"})
    assert "nqn" in e.message.lower()


def test_rpc_fuzz_never_takes_the_daemon_down(daemon):
    rng = random.Random(1234)
    addr = daemon.rpc_addr
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(addr)
    valid = msgpack.packb({"jsonrpc": "2.0", "id": 1, "method": "spdk_get_version"})
    payloads = [
        b"",
        b"\xc1",
        valid[: len(valid) // 2],
        msgpack.packb([1, 2, 3]),
        msgpack.packb("x"),
        msgpack.packb({"jsonrpc": "2.0", "id": 2, "method": 7}),
        msgpack.packb({"jsonrpc": "2.0", "id": 3, "method": "bdev_get_bdevs", "params": "str"}),
        msgpack.packb(
            {
                "jsonrpc": "2.0",
                "id": 4,
                "method": "bdev_malloc_create",
                "params": {"num_blocks": -1, "block_size": 512},
            }
        ),
        msgpack.packb(
            {
                "jsonrpc": "2.0",
                "id": 5,
                "method": "bdev_malloc_create",
                "params": {"num_blocks": 2**63, "block_size": 512},
            }
        ),
        msgpack.packb({"jsonrpc": "2.0", "id": 6, "method": "x" * 100000}),
        msgpack.packb(
            {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "bdev_get_bdevs",
                "params": {"name": "a" * (5 << 20)},
            }
        ),
        b'{"jsonrpc": "2.0", "id": 8, "method": "spdk_get_version"',
    ]
    payloads += [rng.randbytes(rng.randint(1, 300)) for _ in range(200)]
    for p in payloads:
        s.send(p)
    # every request that can be answered is answered; none kills the daemon
    poller = zmq.Poller()
    poller.register(s, zmq.POLLIN)
    answers = 0
    while poller.poll(3000):
        msgpack.unpackb(s.recv(), raw=False)
        answers += 1
    assert answers >= 10
    s.close()
    ctx.term()
    assert daemon.rpc("spdk_get_version")["version"].startswith("blockfabric")


def test_spdk_wire_protocol_listener(daemon_factory, run_dir):
    path = str(run_dir / "spdk.sock")
    d = daemon_factory(extra=["--spdk-rpc", path]).start()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    c = socket.socket(socket.AF_UNIX)
    c.connect(path)
    c.sendall(
        b'{"jsonrpc":"2.0","id":1,"method":"bdev_malloc_create","params":{"name":"S","num_blocks":8,'
        b'"block_size":512}}{"jsonrpc":"2.0","id":2,"method":"bdev_get_bdevs"}'
    )
    buf = b""
    dec = json.JSONDecoder()
    got = []
    while len(got) < 2:
        buf += c.recv(65536)
        buf = buf.lstrip()
        while buf:
            try:
                obj, end = dec.raw_decode(buf.decode())
            except ValueError:
                break
            got.append(obj)
            buf = buf[end:].lstrip()
    assert got[0]["result"] == "S" and got[1]["result"][0]["name"] == "S"
    c.sendall(b"garbage that is not json")
    c.close()
    assert d.rpc("spdk_get_version")


def test_save_config_restart_reproduces(daemon_factory, run_dir):
    d = daemon_factory(mask="0x1").start()
    d.rpc("bdev_malloc_create", {"name": "M0", "num_blocks": 256, "block_size": 4096})
    d.rpc("bdev_null_create", {"name": "N0", "num_blocks": 1024, "block_size": 512})
    d.rpc("nvmf_create_transport", {"trtype": "TCP", "in_capsule_data_size": 8192})
    nqn = "nqn.2016-06.io.blockfabric:save"
    d.rpc("nvmf_create_subsystem", {"nqn": nqn, "serial_number": "SAVE1", "allow_any_host": False})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": "M0", "nsid": 3}})
    d.rpc(
        "nvmf_subsystem_add_host",
        {
            "nqn": nqn,
            "host": "nqn.2014-08.org.nvmexpress:uuid:" + "1" * 8 + "-1111-1111-1111-" + "1" * 12,
        },
    )
    # two distinct free ports (port + 1 may be any other process's ephemeral port)
    with socket.socket() as s, socket.socket() as s2:
        s.bind(("127.0.0.1", 0))
        s2.bind(("127.0.0.1", 0))
        port, port2 = s.getsockname()[1], s2.getsockname()[1]
    d.rpc(
        "nvmf_subsystem_add_listener",
        {
            "nqn": nqn,
            "listen_address": {
                "trtype": "tcp",
                "adrfam": "ipv4",
                "traddr": "127.0.0.1",
                "trsvcid": str(port),
            },
        },
    )
    d.rpc(
        "iscsi_create_portal_group",
        {"tag": 1, "portals": [{"host": "127.0.0.1", "port": str(port2)}]},
    )
    d.rpc(
        "iscsi_create_initiator_group",
        {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]},
    )
    d.rpc(
        "iscsi_create_target_node",
        {
            "name": "save1",
            "alias_name": "a",
            "luns": [{"bdev_name": "N0", "lun_id": 0}],
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
            "queue_depth": 32,
            "disable_chap": True,
        },
    )
    saved = d.rpc("save_config")
    d.stop()
    cfg = run_dir / "saved.json"
    cfg.write_text(json.dumps(saved))
    d2 = daemon_factory(mask="0x1", extra=["--json", str(cfg)]).start()
    assert d2.rpc("save_config") == saved
    d2.stop()
    assert shm_objects(d2.name) == []


def test_bad_config_file_creates_nothing(daemon_factory, run_dir):
    cfg = run_dir / "bad.json"
    cfg.write_text(
        json.dumps(
            {
                "subsystems": [
                    {
                        "subsystem": "bdev",
                        "config": [
                            {
                                "method": "bdev_malloc_create",
                                "params": {"name": "A", "num_blocks": 8, "block_size": 512},
                            },
                            {
                                "method": "bdev_malloc_create",
                                "params": {
                                    "name": "B",
                                    "num_blocks": 8,
                                    "block_size": 512,
                                    "oops": 1,
                                },
                            },
                        ],
                    }
                ]
            }
        )
    )
    d = daemon_factory(extra=["--json", str(cfg)])
    p = d.cli("start", "--name", d.name, "-r", d.rpc_addr, "--json", str(cfg), check=False)
    assert p.returncode != 0
    assert "config[1]" in p.stderr and "oops" in p.stderr
    assert shm_objects(d.name) == []
    cfg.write_text('{"subsystems": [')
    p = d.cli("start", "--name", d.name, "-r", d.rpc_addr, "--json", str(cfg), check=False)
    assert p.returncode != 0 and "line" in p.stderr
