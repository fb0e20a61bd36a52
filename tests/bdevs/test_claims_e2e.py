"""Claims on a real daemon: bdev_get_bdevs' claimed for stacked bases and for
exported bdevs, deletes refused naming the claimer, and save_config of a
whole stack reproduced by a restart in dependency order."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from blockfabric.control.client import RpcClientError

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

NQN = "nqn.2016-06.io.blockfabric:claims"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _claims(d: Any) -> dict[str, bool]:
    return {b["name"]: b["claimed"] for b in d.rpc("bdev_get_bdevs")}


def _refused(d: Any, method: str, params: dict[str, Any]) -> str:
    with pytest.raises(RpcClientError) as ei:
        d.rpc(method, params)
    assert ei.value.code == -16, ei.value
    return str(ei.value)


def _stack(d: Any) -> None:
    for n in ("M0", "M1", "M2", "M3", "M4"):
        d.rpc("bdev_malloc_create", {"name": n, "num_blocks": 8192, "block_size": 512})
    assert d.rpc("bdev_split_create", {"base_bdev": "M0", "split_count": 2}) == ["M0p0", "M0p1"]
    d.rpc("bdev_passthru_create", {"base_bdev_name": "M1", "name": "PT1"})
    d.rpc(
        "bdev_delay_create",
        {
            "base_bdev_name": "PT1", "name": "D1", "avg_read_latency": 10,
            "p99_read_latency": 20, "avg_write_latency": 30, "p99_write_latency": 40,
        },
    )  # fmt: skip
    d.rpc("bdev_error_create", {"base_name": "M2"})
    d.rpc(
        "bdev_raid_create",
        {"name": "R0", "raid_level": "raid0", "strip_size_kb": 64, "base_bdevs": ["M0p0", "M0p1"]},
    )
    d.rpc("bdev_raid_create", {"name": "R1", "raid_level": "1", "base_bdevs": ["EE_M2", "M3"]})
    # a replacement created after the raid: save_config must still put it first
    d.rpc("bdev_raid_remove_base_bdev", {"name": "M3"})
    d.rpc("bdev_malloc_create", {"name": "M5", "num_blocks": 8192, "block_size": 512})
    d.rpc("bdev_raid_add_base_bdev", {"raid_bdev": "R1", "base_bdev": "M5"})
    d.rpc(
        "bdev_delay_update_latency",
        {"delay_bdev_name": "D1", "latency_type": "p99_write", "latency_us": 77},
    )


def test_claims_refusals_and_restart_from_saved_config(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory(mask="0x3").start()
    _stack(d)
    for _ in range(100):
        if not any("process" in r for r in d.rpc("bdev_raid_get_bdevs", {"category": "all"})):
            break
        time.sleep(0.05)
    c = _claims(d)
    assert {n for n, v in c.items() if v} == {
        "M0",
        "M0p0",
        "M0p1",
        "M1",
        "PT1",
        "M2",
        "EE_M2",
        "M5",
    }
    assert not c["M3"] and not c["M4"] and not c["R0"] and not c["D1"]
    [pt] = d.rpc("bdev_get_bdevs", {"name": "PT1"})
    assert pt["claim_type"] == "exclusive_write" and pt["claimed_by"] == ["delay bdev D1"]

    # exports claim too
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "R0", "nsid": 1}})
    d.rpc(
        "iscsi_create_portal_group",
        {"tag": 1, "portals": [{"host": "127.0.0.1", "port": str(_free_port())}]},
    )
    d.rpc("iscsi_create_initiator_group", {"tag": 2, "initiators": ["ANY"], "netmasks": ["ANY"]})
    d.rpc(
        "iscsi_create_target_node",
        {
            "name": "disk1", "alias_name": "disk1",
            "luns": [{"bdev_name": "M4", "lun_id": 0}],
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}], "queue_depth": 8,
        },
    )  # fmt: skip
    c = _claims(d)
    assert c["R0"] and c["M4"]
    [m4] = d.rpc("bdev_get_bdevs", {"name": "M4"})
    assert m4["claimed_by"] == ["iSCSI target node iqn.2016-06.io.blockfabric:disk1 LUN 0"]

    # deletes refused, naming who holds the bdev
    assert "claimed by split bdev M0p0, split bdev M0p1" in _refused(
        d, "bdev_malloc_delete", {"name": "M0"}
    )
    assert "raid bdev R0" in _refused(d, "bdev_split_delete", {"base_bdev": "M0"})
    assert f"NVMe-oF subsystem {NQN} namespace 1" in _refused(d, "bdev_raid_delete", {"name": "R0"})
    assert "delay bdev D1" in _refused(d, "bdev_passthru_delete", {"name": "PT1"})
    assert "raid bdev R1" in _refused(d, "bdev_error_delete", {"name": "EE_M2"})
    assert "iSCSI target node" in _refused(d, "bdev_malloc_delete", {"name": "M4"})
    # a claimed bdev cannot be claimed twice
    assert "already claimed by raid bdev R1" in _refused(
        d, "bdev_passthru_create", {"base_bdev_name": "M5", "name": "X"}
    )
    # the released member is free
    assert d.rpc("bdev_malloc_delete", {"name": "M3"}) is True

    saved = d.rpc("save_config")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    bdev_cfg = next(s for s in saved["subsystems"] if s["subsystem"] == "bdev")["config"]
    order = [
        (
            e["method"],
            e["params"].get("name") or e["params"].get("base_bdev") or e["params"].get("base_name"),
        )
        for e in bdev_cfg
    ]
    pos = {x: i for i, x in enumerate(order)}
    assert pos[("bdev_malloc_create", "M5")] < pos[("bdev_raid_create", "R1")]
    assert pos[("bdev_passthru_create", "PT1")] < pos[("bdev_delay_create", "D1")]
    assert pos[("bdev_split_create", "M0")] < pos[("bdev_raid_create", "R0")]
    before = {b["name"]: b for b in d.rpc("bdev_get_bdevs")}
    d.stop()

    d2 = daemon_factory(mask="0x3", extra=["--json", str(path)]).start()
    after = {b["name"]: b for b in d2.rpc("bdev_get_bdevs")}
    assert set(after) == set(before)
    for n, b in before.items():
        a = after[n]
        for k in ("num_blocks", "block_size", "uuid", "claimed", "product_name"):
            assert a[k] == b[k], (n, k, a[k], b[k])
    [d1] = d2.rpc("bdev_get_bdevs", {"name": "D1"})
    assert d1["driver_specific"]["delay"]["p99_write_latency"] == 77
    r1 = next(r for r in d2.rpc("bdev_raid_get_bdevs", {"category": "all"}) if r["name"] == "R1")
    assert [m["name"] for m in r1["base_bdevs_list"]] == ["M5", "EE_M2"] or [
        m["name"] for m in r1["base_bdevs_list"]
    ] == ["EE_M2", "M5"]
    assert "Traceback" not in d2.log()
