"""Linux native NVMe multipath (6.1 in QEMU) across two blockfabric nodes (issue 12 items 3, 4).

Three daemons on the host: C exports a malloc namespace; A and B each import
it with bdev_nvme_attach_controller and export it as namespace 1 of the same
subsystem NQN, with the same UUID/NGUID/EUI-64, one ANA group per node
(A: group 1, B: group 2) and disjoint controller ID ranges (the kernel
refuses two controllers with one cntlid in one subsystem). A is optimized, B
non-optimized at the start.

One guest boot (guest/nvme-multipath.sh) connects to both, checks
`nvme list-subsys` (one subsystem, two paths with their ANA states, one block
device), runs a 64 KiB O_DIRECT pattern writer and, on its marks: (a) moves
the optimized path to B (A inaccessible), then A back to non-optimized;
(b) SIGKILLs node B (all its processes); (c) restarts B from its saved config
on the same ports, optimized. No write may fail, the pattern must verify, and
the longest stall the writer saw in (a) and (b) is written to
bench/results/multipath.json/.md.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import khost
import pytest
from bfsetup import malloc

pytestmark = [pytest.mark.interop, pytest.mark.timeout(1200)]

NQN = "nqn.2016-06.io.blockfabric:mpath1"
BACKEND_NQN = "nqn.2016-06.io.blockfabric:backend"
NS_UUID = "6d1c2f0a-5b3e-4c1d-9a7e-2f4b8c6d0e11"
SERIAL = "BFMPATH0001"
REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"


def _addr(port: int) -> dict[str, str]:
    return {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}


def export_backend(d: Any, port: int, size_mb: int) -> None:
    """Node C: the shared backend (until a distributed bdev is in)."""
    malloc(d, "Backend0", size_mb)
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": BACKEND_NQN, "allow_any_host": True})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": BACKEND_NQN, "namespace": {"bdev_name": "Backend0"}})
    d.rpc("nvmf_subsystem_add_listener", {"nqn": BACKEND_NQN, "listen_address": _addr(port)})


def export_node(d: Any, node: int, port: int, backend_port: int, state: str) -> None:
    """Node A (1) or B (2): import the backend, export it in ANA group ``node``."""
    d.rpc(
        "bdev_nvme_attach_controller",
        {
            "name": "Shared",
            "trtype": "tcp",
            "traddr": "127.0.0.1",
            "adrfam": "ipv4",
            "trsvcid": str(backend_port),
            "subnqn": BACKEND_NQN,
        },
    )
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc(
        "nvmf_create_subsystem",
        {
            "nqn": NQN,
            "allow_any_host": True,
            "serial_number": SERIAL,
            "ana_reporting": True,
            "min_cntlid": 1 + (node - 1) * 1000,
            "max_cntlid": node * 1000,
        },
    )
    d.rpc(
        "nvmf_subsystem_add_ns",
        {
            "nqn": NQN,
            "namespace": {
                "bdev_name": "Sharedn1",
                "nsid": 1,
                "uuid": NS_UUID,
                "nguid": uuid.UUID(NS_UUID).hex,
                "eui64": "00a0b0c0d0e0f001",
                "anagrpid": node,
            },
        },
    )
    d.rpc(
        "nvmf_subsystem_add_listener",
        {"nqn": NQN, "listen_address": _addr(port), "ana_state": state},
    )


def set_ana(d: Any, port: int, state: str, grp: int | None = None) -> None:
    p: dict[str, Any] = {"nqn": NQN, "listen_address": _addr(port), "ana_state": state}
    if grp is not None:
        p["anagrpid"] = grp
    d.rpc("nvmf_subsystem_listener_set_ana_state", p)


def sigkill_node(d: Any) -> list[int]:
    """SIGKILL every process of the node (supervisor and reactors) at once."""
    pids = d.pids()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    end = time.monotonic() + 15
    while time.monotonic() < end and any(_alive(p) for p in pids):
        time.sleep(0.1)
    d.started = False
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def write_results(facts: dict[str, str], extra: dict[str, Any]) -> dict[str, Any]:
    res = {
        "what": "longest I/O stall the Linux 6.1 multipath host saw (64 KiB O_DIRECT writes, "
        "QEMU guest, 3 blockfabric nodes on one machine)",
        "stall_base_ms": int(facts.get("stall_base_ms", "-1")),
        "stall_a_ms": int(facts.get("stall_a_ms", "-1")),
        "stall_b_ms": int(facts.get("stall_b_ms", "-1")),
        "stall_c_ms": int(facts.get("stall_c_ms", "-1")),
        "writes": int(facts.get("writes", "0")),
        "write_errors": int(facts.get("write_errors", "-1")),
        **extra,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "multipath.json").write_text(json.dumps(res, indent=2) + "\n")
    md = [
        "| phase | longest stall (ms) |",
        "|---|---|",
        f"| steady, before any change (peer of the same run) | {res['stall_base_ms']} |",
        f"| (a) optimized path set inaccessible (ANA) | {res['stall_a_ms']} |",
        f"| (b) optimized node SIGKILLed | {res['stall_b_ms']} |",
        f"| (c) node back, optimized again | {res['stall_c_ms']} |",
        "",
        f"{res['writes']} writes, {res['write_errors']} errors; {res['what']}.",
    ]
    (RESULTS / "multipath.md").write_text("\n".join(md) + "\n")
    return res


def test_kernel_multipath_failover(daemon_factory: Any, run_dir: Path, tmp_path: Path) -> None:
    khost.require_harness()
    port_c, port_a, port_b = (khost.free_port() for _ in range(3))
    assert len({port_c, port_a, port_b}) == 3
    c = daemon_factory(mask="0x1").start()
    export_backend(c, port_c, 64)
    a = daemon_factory(mask="0x1").start()
    export_node(a, 1, port_a, port_c, "optimized")
    b = daemon_factory(mask="0x1").start()
    export_node(b, 2, port_b, port_c, "non_optimized")
    seen: dict[str, Any] = {}

    def connected() -> None:
        seen["ctrl_a"] = a.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN})
        seen["ctrl_b"] = b.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN})

    def move() -> None:  # (a): the operator moves the optimized path to B
        set_ana(b, port_b, "optimized")
        set_ana(a, port_a, "inaccessible")

    def restore() -> None:
        set_ana(a, port_a, "non_optimized")
        # B optimized is what its saved config must bring back in (c)
        cfg = run_dir / "node-b.json"
        cfg.write_text(json.dumps(b.rpc("save_config")))
        seen["cfg_b"] = cfg

    def kill() -> None:  # (b)
        seen["killed"] = sigkill_node(b)

    def restart() -> None:  # (c): same name, same ports, the saved config
        nb = daemon_factory(mask="0x1", extra=["--json", str(seen["cfg_b"])], name=b.name)
        # what an operator does after a crash: drop the dead instance's shared memory
        nb.cli("shm", "cleanup", "--name", b.name)
        nb.start()
        seen["b2"] = nb
        seen["listeners_b2"] = nb.rpc("nvmf_subsystem_get_listeners", {"nqn": NQN})

    run = khost.run_guest(
        "nvme-multipath.sh",
        {"PORT": port_a, "PORT_B": port_b, "NQN": NQN, "IO_MB": 8, "PHASE_S": 6},
        timeout=900,
        on_mark={
            "connected": connected,
            "move": move,
            "restore": restore,
            "kill": kill,
            "restart": restart,
        },
        log_path=Path(os.environ.get("MULTIPATH_GUEST_LOG") or tmp_path / "guest.log"),
    )
    print(run.summary())
    f = run.facts
    res = write_results(f, {"guest_seconds": round(run.seconds, 1)})
    print("multipath stalls:", json.dumps(res))
    assert not run.mark_errors, run.explain()
    run.require(
        "connect", "ana_enabled", "list_subsys", "ana_move", "ana_restore", "path_down", "path_back",
        "no_io_error", "pattern",
    )  # fmt: skip
    assert f.get("list_paths") == "2" and f.get("list_subsys") == "1", run.explain()
    assert f.get("block_devices") == "1", run.explain()
    assert (f.get("ana_a"), f.get("ana_b")) == ("optimized", "non-optimized"), run.explain()
    # the writes really went through B after the move, through A after the kill, B again after
    for k in ("moved_sectors_b", "failover_sectors_a", "back_sectors_b"):
        assert int(f.get(k) or 0) > 0, f"{k}\n{run.explain()}"
    assert len(seen.get("ctrl_a") or []) == 1 and len(seen.get("ctrl_b") or []) == 1, seen
    assert seen["ctrl_a"][0]["cntlid"] != seen["ctrl_b"][0]["cntlid"]
    states = [s["ana_state"] for s in seen["listeners_b2"][0]["ana_states"]]
    assert states == ["optimized"], f"B restarted with {seen['listeners_b2']}"
    assert res["write_errors"] == 0 and res["writes"] > 0, run.explain()
    assert res["stall_a_ms"] >= 0 and res["stall_b_ms"] >= 0, run.explain()
    assert run.rc == 0, run.explain()
