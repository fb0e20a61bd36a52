"""Shared by the FC end-to-end tests: the daemon set-up and a host controller."""

from __future__ import annotations

import time
from typing import Any

from blockfabric.transports.nvmf import spec as S
from blockfabric.transports.nvmf_host.controller import Controller

NQN = "nqn.2016-06.io.blockfabric:fc1"
OTHER = "nqn.2016-06.io.blockfabric:fc2"
TRADDR = "nn-0x20000090fa942779:pn-0x10000090fa942779"
HOSTADDR = "nn-0x20000090fa940001:pn-0x10000090fa940001"
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:0f0f0f0f-1111-2222-3333-444444444444"


def _setup(d: Any, **topts: Any) -> None:
    d.rpc("bdev_malloc_create", {"name": "M0", "num_blocks": 16384, "block_size": 512})
    d.rpc("nvmf_create_transport", {"trtype": "FC", **topts})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "M0"}})
    la = {"trtype": "fc", "adrfam": "fc", "traddr": TRADDR}
    d.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": la})
    d.rpc("nvmf_subsystem_add_listener", {"nqn": S.NVME_DISC_SUBSYS_NAME, "listen_address": la})
    d.rpc("nvmf_create_subsystem", {"nqn": OTHER, "allow_any_host": True})  # not on the FC port


def _ctrl(n_io: int = 2, host: str = HOSTADDR, subnqn: str = NQN) -> Controller:
    return Controller(
        TRADDR,
        "none",
        subnqn,
        hostnqn=HOSTNQN,
        nr_io_queues=n_io,
        trtype="fc",
        host_traddr=host,
        timeout=10.0,
    ).connect()


def _wait(pred: Any, timeout: float = 15.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)
