"""ANA against a real daemon (issue 12 item 1): the state set in the
supervisor reaches every reactor by the config broadcast (I/O queues on
both reactors refuse I/O, the admin reactor sends the AEN), and it survives
save_config and a restart from the saved file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from blockfabric.transports.nvmf import ana
from blockfabric.transports.nvmf import spec as S
from blockfabric.transports.nvmf_host.controller import Controller
from blockfabric.transports.nvmf_host.queue import NvmeStatusError

pytestmark = pytest.mark.timeout(180)

NQN = "nqn.2016-06.io.blockfabric:anad"


def _setup(d: Any) -> str:
    d.rpc("bdev_malloc_create", {"name": "M0", "num_blocks": 2048, "block_size": 512})
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True, "ana_reporting": True})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "M0", "anagrpid": 4}})
    d.rpc(
        "nvmf_subsystem_add_listener",
        {"nqn": NQN, "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "0"}},
    )
    return str(d.rpc("nvmf_subsystem_get_listeners", {"nqn": NQN})[0]["address"]["trsvcid"])


def test_ana_across_reactors_and_restart(daemon_factory: Any, run_dir: Path) -> None:
    d = daemon_factory(mask="0x3").start()
    port = _setup(d)
    la = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port}
    with Controller("127.0.0.1", port, NQN, nr_io_queues=4, timeout=20.0) as c:
        c.connect()
        qps = d.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN})
        for q in range(4):
            c.write(1, q, bytes([q]) * 512, 512, q=q)
        c.set_features(S.FID_ASYNC_EVENT_CONFIG, ana.AEC_ANA)
        box = c.async_event_request()
        d.rpc(
            "nvmf_subsystem_listener_set_ana_state",
            {"nqn": NQN, "listen_address": la, "ana_state": "inaccessible", "anagrpid": 4},
        )
        assert c.wait_async_event(box, timeout=20) == ana.AEN_DW0
        assert c.ana_log().state_of(4) == ana.INACCESSIBLE
        for q in range(4):  # every queue, whichever reactor holds it
            with pytest.raises(NvmeStatusError) as ei:
                c.read(1, q, 1, 512, q=q)
            assert S.split_status(ei.value.status)[:2] == (S.SCT_PATH, ana.SC_ANA_INACCESSIBLE)
    assert len(qps) >= 5
    saved = d.rpc("save_config")
    before = d.rpc("nvmf_subsystem_get_listeners", {"nqn": NQN})
    assert before[0]["ana_states"] == [{"ana_group": 4, "ana_state": "inaccessible"}]
    d.stop()
    cfg = run_dir / "ana.json"
    cfg.write_text(json.dumps(saved))
    d2 = daemon_factory(mask="0x3", extra=["--json", str(cfg)]).start()
    assert d2.rpc("nvmf_subsystem_get_listeners", {"nqn": NQN}) == before
    assert d2.rpc("save_config") == saved
    with Controller("127.0.0.1", port, NQN, nr_io_queues=1, timeout=20.0) as c:
        c.connect()
        assert c.ana_log().state_of(4) == ana.INACCESSIBLE
        with pytest.raises(NvmeStatusError):
            c.read(1, 0, 1, 512)
        d2.rpc(
            "nvmf_subsystem_listener_set_ana_state",
            {"nqn": NQN, "listen_address": la, "ana_state": "optimized"},
        )
        assert c.read(1, 0, 1, 512) == bytes(512)
    d2.stop()
