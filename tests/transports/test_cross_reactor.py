"""Data written through one reactor reads back through another; queue pairs
are spread over reactors; hot-removal of a bdev under live I/O."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from bftest import shm_objects

from blockfabric.transports.nvmf_host.controller import Controller

pytestmark = pytest.mark.e2e
NQN = "nqn.2016-06.io.blockfabric:xr"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _export(d, bdev="Malloc0", blocks=8192, bs=512):
    d.rpc("bdev_malloc_create", {"name": bdev, "num_blocks": blocks, "block_size": bs})
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": bdev}})
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


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_write_on_one_reactor_read_on_the_other(daemon_factory):
    d = daemon_factory(mask="0x3").start()
    port = _export(d)
    c = Controller("127.0.0.1", port, NQN, nr_io_queues=2)
    c.connect()
    try:
        qpairs = d.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN})
        # admin + 2 I/O queues, accepted round-robin over 2 reactors
        threads = {q.get("thread") or q.get("reactor") or q.get("lcore") for q in qpairs}
        assert len(qpairs) == 3 and len(threads) == 2, qpairs
        pattern = os.urandom(64 * 1024)
        c.write(1, 100, pattern, 512, q=0)
        assert c.read(1, 100, 128, 512, q=1) == pattern
        pattern2 = os.urandom(4096)
        c.write(1, 7000, pattern2, 512, q=1)
        assert c.read(1, 7000, 8, 512, q=0) == pattern2
    finally:
        c.close()


def test_hot_remove_under_io(daemon_factory):
    d = daemon_factory(mask="0x3").start()
    port = _export(d, blocks=16384)
    d.rpc("bdev_malloc_create", {"name": "Other", "num_blocks": 2048, "block_size": 512})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Other", "nsid": 2}})
    c = Controller("127.0.0.1", port, NQN, nr_io_queues=2)
    c.connect()
    errors: list[str] = []
    ok = [0]
    stop = threading.Event()

    def hammer() -> None:
        data = os.urandom(1 << 20)
        while not stop.is_set():
            try:
                c.write(1, 0, data, 512, q=0)
                c.read(1, 0, 2048, 512, q=0)
                ok[0] += 1
            except Exception as e:  # expected once the namespace is gone
                errors.append(str(e))
                return

    t = threading.Thread(target=hammer)
    t.start()
    while ok[0] < 2 and t.is_alive():
        pass
    d.rpc("bdev_malloc_delete", {"name": "Malloc0", "force": True})
    t.join(20)
    stop.set()
    assert not t.is_alive()
    assert errors, "I/O to the removed namespace must fail"
    assert any(w in errors[0] for w in ("Namespace", "Invalid", "Not Ready", "Aborted")), errors[0]
    assert f"blockfabric.{d.name}.malloc.Malloc0" not in shm_objects(d.name)
    # the other namespace is untouched and the target still serves
    data = os.urandom(4096)
    c.write(2, 10, data, 512, q=1)
    assert c.read(2, 10, 8, 512, q=1) == data
    c.close()
    assert "Traceback" not in d.log()
