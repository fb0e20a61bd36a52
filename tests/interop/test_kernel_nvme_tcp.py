"""The Linux 6.1 NVMe/TCP host (nvme-tcp + nvme-cli 2.3 in QEMU) against blockfabric.

Boot 1 (guest/nvme-interop.sh): discover, connect, nvme list, id-ctrl/id-ns,
64 MiB O_DIRECT pattern at 4 KiB and 128 KiB, namespace 2 added by RPC while
connected appears (AEN) and goes when removed, disconnect.  Boot 2: the same
connect with header and data digests (-g -G) and the data path.  The harness
check runs boot 1 against the kernel nvmet target inside the guest.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import khost
import pytest
from bfsetup import bf_nvmf_subsystem, daemon_clean, malloc

pytestmark = [pytest.mark.interop, pytest.mark.timeout(900)]

NQN = "nqn.2016-06.io.blockfabric:cnode1"
SERIAL = "BF0001"
NS1_MB, NS2_MB = 64, 32
MAIN_CHECKS = [
    "discover", "connect", "pattern_4k", "pattern_128k",
    "aen_add", "ns2_pattern", "aen_remove", "post_aen_io", "disconnect",
]  # fmt: skip


def _host_identity() -> dict[str, str]:
    hid = str(uuid.uuid4())
    return {"HOSTID": hid, "HOSTNQN": f"nqn.2014-08.org.nvmexpress:uuid:{hid}"}


def _check_facts(run: khost.GuestRun, nqn: str, port: int) -> None:
    f = run.facts
    why = run.explain()
    assert f.get("disc_trsvcid") == str(port), f"discovery entry trsvcid\n{why}"
    assert f.get("ctrl_state") == "live" and f.get("ctrl_transport") == "tcp", why
    assert f.get("ns1_bytes") == str(NS1_MB << 20) and f.get("ns1_lbs") == "512", why
    assert f.get("list_rc") == "0", why
    line = f.get("list_line", "")
    assert line.startswith("/dev/nvme") and "/ 67.11 MB" in line and "512 B + 0 B" in line, (
        f"nvme list line {line!r}\n{why}"
    )
    assert f.get("idctrl_rc") == "0" and f.get("idns_rc") == "0", why
    assert f.get("idctrl_subnqn") == nqn, why
    assert f.get("idctrl_sn", "").strip() == SERIAL, f"serial number\n{why}"
    assert f.get("idctrl_mn", "").strip(), f"empty model number\n{why}"
    assert f.get("idctrl_fr", "").strip(), f"empty firmware revision\n{why}"
    assert int(f.get("idctrl_nn", "0"), 0) >= 2, f"nn must allow a 2nd namespace\n{why}"
    assert int(f.get("idctrl_ver", "0"), 0) >= 0x10300, f"VS below 1.3\n{why}"
    assert int(f.get("idctrl_oaes", "0"), 0) & 0x100, (
        f"OAES lacks namespace attribute notices\n{why}"
    )
    assert int(f.get("idctrl_ioccsz", "0"), 0) >= 4, why
    blocks = (NS1_MB << 20) // 512
    assert int(f.get("idns_nsze", "-1"), 0) == blocks, why
    assert int(f.get("idns_ncap", "-1"), 0) == blocks, why
    assert f.get("idns_flbas") == "0", why
    lbaf0 = f.get("idns_lbaf0", "")
    assert "lbads:9" in lbaf0 and "in use" in lbaf0, f"lbaf0 {lbaf0!r}\n{why}"


def test_kernel_nvme_tcp_peer_nvmet(tmp_path: Any) -> None:
    """Harness check: guest/nvme-interop.sh against the kernel nvmet target inside the guest."""
    nqn = "nqn.2024-01.io.interop:nvmet-peer"
    run = khost.run_guest(
        "nvme-interop.sh",
        {"PEER": "nvmet", "PORT": 4420, "NQN": nqn, "IO_MB": NS1_MB},
        timeout=300,
        log_path=tmp_path / "guest.log",
    )
    print(run.summary())
    run.require(*MAIN_CHECKS)
    f = run.facts
    assert f.get("idctrl_subnqn") == nqn and f.get("ns1_bytes") == str(NS1_MB << 20), run.explain()
    assert f.get("ns2_bytes") == str(NS1_MB << 20), run.explain()  # brd disks are all one size
    assert run.rc == 0, run.explain()


def _bf_nvmf(daemon_factory: Any) -> tuple[Any, int]:
    khost.require_harness()
    port = khost.free_port()
    d = daemon_factory(mask="0x3").start()
    malloc(d, "Malloc0", NS1_MB)
    malloc(d, "Malloc1", NS2_MB)
    bf_nvmf_subsystem(d, port, NQN, "Malloc0", SERIAL)
    return d, port


def _wait_no_controllers(d: Any, timeout: float = 15.0) -> list[Any]:
    end = time.monotonic() + timeout
    while True:
        ctrls = d.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN})
        if not ctrls or time.monotonic() > end:
            return ctrls
        time.sleep(0.5)


def test_kernel_nvme_tcp_blockfabric(daemon_factory: Any, tmp_path: Any) -> None:
    d, port = _bf_nvmf(daemon_factory)
    ident = _host_identity()
    seen: dict[str, Any] = {}

    def connected() -> None:
        seen["controllers"] = d.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN})

    def add_ns() -> None:
        seen["add"] = d.rpc(
            "nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc1", "nsid": 2}}
        )

    def remove_ns() -> None:
        seen["remove"] = d.rpc("nvmf_subsystem_remove_ns", {"nqn": NQN, "nsid": 2})

    run = khost.run_guest(
        "nvme-interop.sh",
        {"PORT": port, "NQN": NQN, "IO_MB": NS1_MB, **ident},
        timeout=480,
        on_mark={"connected": connected, "add-ns": add_ns, "remove-ns": remove_ns},
        log_path=tmp_path / "guest.log",
    )
    print(run.summary())
    after = _wait_no_controllers(d)
    daemon_clean(d)
    assert not run.mark_errors, run.explain()
    run.require(*MAIN_CHECKS)
    _check_facts(run, NQN, port)
    sub = next(s for s in d.rpc("nvmf_get_subsystems") if s["nqn"] == NQN)
    assert run.facts.get("idctrl_mn", "").strip() == sub["model_number"], run.explain()
    assert run.facts.get("ns2_bytes") == str(NS2_MB << 20), run.explain()
    ctrls = seen.get("controllers")
    assert isinstance(ctrls, list) and len(ctrls) == 1, f"controllers while connected: {ctrls}"
    assert ctrls[0].get("hostnqn") == ident["HOSTNQN"], f"controller hostnqn: {ctrls[0]}"
    assert seen.get("add") == 2, f"nvmf_subsystem_add_ns returned {seen.get('add')!r}"
    assert after == [], f"controllers left after nvme disconnect: {after}"
    assert run.rc == 0, run.explain()


def test_kernel_nvme_tcp_digests_blockfabric(daemon_factory: Any, tmp_path: Any) -> None:
    d, port = _bf_nvmf(daemon_factory)
    run = khost.run_guest(
        "nvme-interop.sh",
        {
            "PORT": port,
            "NQN": NQN,
            "IO_MB": NS1_MB,
            # CRC32C is emulated instruction by instruction under TCG: 4 KiB gets 16 MiB
            "BLOCK_SIZES": "128k 4k:16",
            "NVME_CONNECT_OPTS": "-g -G",
            "DO_AEN": 0,
            **_host_identity(),
        },
        timeout=480,
        log_path=tmp_path / "guest.log",
    )
    print(run.summary())
    after = _wait_no_controllers(d)
    daemon_clean(d)
    run.require("discover", "connect", "pattern_128k", "pattern_4k", "disconnect")
    assert "-g -G" in run.output, "connect options not applied"
    assert after == [], f"controllers left after nvme disconnect: {after}"
    assert run.rc == 0, run.explain()
