"""bdev_nvme: a second daemon imports a remote namespace over NVMe/TCP, exports it
again, and I/O through it reaches the first target; loss and reconnect."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from blockfabric.transports.nvmf_host.controller import Controller
from blockfabric.transports.nvmf_host.queue import NvmeStatusError, TransportError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "transports", "nvmf_host"))
from nvmf_fake_target import SUBNQN, FakeTarget  # noqa: E402

pytestmark = pytest.mark.e2e
NQN2 = "nqn.2016-06.io.blockfabric:reexport"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def export(d, nqn: str, bdev: str) -> int:
    port = free_port()
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": nqn, "allow_any_host": True})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": bdev}})
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
    return port


def test_attach_reexport_io_detach(daemon_factory) -> None:
    t = FakeTarget(num_blocks=4096)
    d = daemon_factory(mask="0x3").start()
    try:
        names = d.rpc(
            "bdev_nvme_attach_controller",
            {
                "name": "Nvme0",
                "trtype": "tcp",
                "adrfam": "ipv4",
                "traddr": "127.0.0.1",
                "trsvcid": str(t.port),
                "subnqn": SUBNQN,
                "ctrlr_loss_timeout_sec": 2,
                "reconnect_delay_sec": 1,
            },
        )
        assert names == ["Nvme0n1"]
        (b,) = d.rpc("bdev_get_bdevs", {"name": "Nvme0n1"})
        assert (b["block_size"], b["num_blocks"]) == (512, 4096)
        (c,) = d.rpc("bdev_nvme_get_controllers", {"name": "Nvme0"})
        assert (
            c["ctrlrs"][0]["trid"]["traddr"] == "127.0.0.1" and c["ctrlrs"][0]["state"] == "enabled"
        )
        port = export(d, NQN2, "Nvme0n1")
        with Controller("127.0.0.1", port, NQN2, nr_io_queues=2) as h:
            h.connect()
            data = os.urandom(64 * 512)
            h.write(1, 8, data, 512)
            assert bytes(t.mem[8 * 512 : 72 * 512]) == data  # reached the first target
            t.mem[0:512] = b"\x77" * 512
            assert h.read(1, 0, 1, 512, q=1) == b"\x77" * 512
            assert h.read(1, 8, 64, 512) == data
            # the remote target goes away: I/O fails with an error, not a hang
            t.close()
            with pytest.raises((NvmeStatusError, TransportError)):
                for _ in range(20):
                    h.read(1, 0, 1, 512)
                    time.sleep(0.1)
        # ctrlr_loss_timeout_sec 2 elapses: the bdev is removed
        deadline = time.time() + 15
        while (
            time.time() < deadline
            and d.rpc("bdev_get_bdevs", {})
            and any(x["name"] == "Nvme0n1" for x in d.rpc("bdev_get_bdevs", {}))
        ):
            time.sleep(0.3)
        assert not any(x["name"] == "Nvme0n1" for x in d.rpc("bdev_get_bdevs", {}))
        assert d.rpc("bdev_nvme_get_controllers", {}) == []
    finally:
        t.close()
        d.stop()


def test_reconnect_after_target_restart_and_detach(daemon_factory) -> None:
    t = FakeTarget(num_blocks=1024)
    port = t.port
    d = daemon_factory(mask="0x3").start()
    try:
        d.rpc(
            "bdev_nvme_attach_controller",
            {
                "name": "N1",
                "trtype": "TCP",
                "traddr": "127.0.0.1",
                "trsvcid": str(port),
                "subnqn": SUBNQN,
                "ctrlr_loss_timeout_sec": -1,
                "reconnect_delay_sec": 1,
            },
        )
        p2 = export(d, NQN2, "N1n1")
        t.close()
        time.sleep(1.5)
        assert (
            d.rpc("bdev_nvme_get_controllers", {"name": "N1"})[0]["ctrlrs"][0]["state"] == "failed"
        )
        t2 = FakeTarget(num_blocks=1024, port=port)
        try:
            t2.mem[0:512] = b"\x42" * 512
            deadline = time.time() + 15
            while (
                d.rpc("bdev_nvme_get_controllers", {"name": "N1"})[0]["ctrlrs"][0]["state"]
                != "enabled"
            ):
                assert time.time() < deadline, "controller did not reconnect"
                time.sleep(0.3)
            with Controller("127.0.0.1", p2, NQN2) as h:
                h.connect()
                got = None
                for _ in range(30):  # reactors reconnect their I/O queues every reconnect_delay_sec
                    try:
                        got = h.read(1, 0, 1, 512)
                        break
                    except NvmeStatusError:
                        time.sleep(0.3)
                assert got == b"\x42" * 512
            assert d.rpc("bdev_nvme_detach_controller", {"name": "N1"}) is True
            assert not any(x["name"] == "N1n1" for x in d.rpc("bdev_get_bdevs", {}))
        finally:
            t2.close()
    finally:
        t.close()
        d.stop()


def test_attach_errors(daemon_factory) -> None:
    d = daemon_factory().start()
    try:
        with pytest.raises(Exception, match="trtype"):
            d.rpc(
                "bdev_nvme_attach_controller",
                {"name": "X", "trtype": "pcie", "traddr": "127.0.0.1"},
            )
        with pytest.raises(Exception, match="cannot connect"):
            d.rpc(
                "bdev_nvme_attach_controller",
                {
                    "name": "X",
                    "trtype": "tcp",
                    "traddr": "127.0.0.1",
                    "trsvcid": str(free_port()),
                    "subnqn": SUBNQN,
                },
            )
        with pytest.raises(Exception, match="not found"):
            d.rpc("bdev_nvme_detach_controller", {"name": "X"})
    finally:
        d.stop()


def test_attach_real_target_from_second_daemon(daemon_factory) -> None:
    nqn1 = "nqn.2016-06.io.blockfabric:cnode1"
    d1 = daemon_factory(mask="0x3").start()
    d2 = daemon_factory(mask="0x3").start()
    try:
        d1.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 131072, "block_size": 512})
        p1 = export(d1, nqn1, "Malloc0")
        assert d2.rpc(
            "bdev_nvme_attach_controller",
            {
                "name": "Nvme0",
                "trtype": "TCP",
                "adrfam": "IPv4",
                "traddr": "127.0.0.1",
                "trsvcid": str(p1),
                "subnqn": nqn1,
                "hdgst": True,
                "ddgst": True,
            },
        ) == ["Nvme0n1"]
        p2 = export(d2, NQN2, "Nvme0n1")
        data = os.urandom(256 * 512)  # 128 KiB: R2T and split C2H data on both hops
        with Controller("127.0.0.1", p2, NQN2) as via, Controller("127.0.0.1", p1, nqn1) as direct:
            via.connect()
            direct.connect()
            via.write(1, 1000, data, 512)
            assert direct.read(1, 1000, 256, 512) == data
            direct.write(1, 5, b"\x11" * 512, 512)
            assert via.read(1, 5, 1, 512) == b"\x11" * 512
            with pytest.raises(NvmeStatusError, match="LBA Out of Range"):
                via.read(1, 131071, 2, 512)
        assert d2.rpc("bdev_nvme_detach_controller", {"name": "Nvme0"}) is True
    finally:
        d2.stop()
        d1.stop()
