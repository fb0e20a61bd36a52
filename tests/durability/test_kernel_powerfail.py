"""ext4 in the QEMU guest (Linux 6.1, the kernel's NVMe/TCP host and
open-iscsi) across a power loss of a wcache bdev (issue 9 item 2).

Boot 1 (guest/fs-powerfail.sh PHASE=write, host userland for e2fsprogs):
mkfs.ext4 on the exported volume, mount, 24 files written and fsync()ed
(file and directory), their sha256 recorded; then unsynced O_DIRECT data.
At "KH-MARK power-loss" this test SIGKILLs the VM (the host loses power: its
page cache is gone, no unmount, no last flush), waits until the target sees
the connections gone, and power-fails the wcache (the target loses what was
not durable). Nothing writes between the two, as in a real power cut.
Boot 2 (PHASE=check): mount (journal replay), every fsync()ed file intact,
umount, e2fsck -fn clean.

The power-fail must have dropped something (the unsynced data), or the test
would prove nothing.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import dlib
import pytest

pytestmark = [pytest.mark.interop, pytest.mark.timeout(1200)]

INTEROP = Path(__file__).resolve().parents[1] / "interop"
SCRIPT = INTEROP / "guest" / "fs-powerfail.sh"
SIZE_MB = 64


def _khost() -> Any:
    import sys

    if str(INTEROP) not in sys.path:
        sys.path.insert(0, str(INTEROP))
    import khost

    return khost


def kill_my_qemu() -> int:
    """SIGKILL the QEMU processes this test process started (its descendants)."""
    import psutil

    n = 0
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name().startswith("qemu-system"):
                p.send_signal(signal.SIGKILL)
                p.wait(10)
                n += 1
        except psutil.Error:
            pass
    return n


def connections(d: Any, proto: str) -> list[Any]:
    if proto == "nvme":
        return list(d.rpc("nvmf_subsystem_get_controllers", {"nqn": dlib.NQN}))
    return list(d.rpc("iscsi_get_connections"))


def wait_gone(d: Any, proto: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while connections(d, proto):
        if time.monotonic() > end:
            raise AssertionError(f"host connections still there: {connections(d, proto)}")
        time.sleep(0.2)


def _env(proto: str, port: int, phase: str) -> dict[str, Any]:
    env: dict[str, Any] = {"PHASE": phase, "PROTO": proto, "PORT": port, "GUEST_HOSTROOT": 1}
    if proto == "nvme":
        env["NQN"] = dlib.NQN
    else:
        env["IQN"] = dlib.IQN
    return env


@pytest.mark.parametrize("proto", ["nvme", "iscsi"])
def test_ext4_survives_power_fail(daemon_factory: Any, tmp_path: Path, proto: str) -> None:
    khost = _khost()
    khost.require_harness()
    d = daemon_factory(mask="0x3").start()
    dlib.wcache_volume(d, SIZE_MB)
    port = dlib.free_port()
    if proto == "nvme":
        dlib.export_nvmf(d, port, "WC0")
    else:
        dlib.export_iscsi(d, port, {dlib.IQN_NAME: "WC0"})
    seen: dict[str, Any] = {}

    def power_loss() -> None:
        seen["killed"] = kill_my_qemu()
        wait_gone(d, proto)
        seen["dirty"] = dlib.wcache_stats(d).get("dirty_writes")
        seen["pf"] = dlib.power_fail(d)

    run1 = khost.run_guest(
        SCRIPT,
        _env(proto, port, "write"),
        timeout=600,
        on_mark={"power-loss": power_loss},
        log_path=tmp_path / "guest1.log",
    )
    print(run1.summary(), seen)
    assert not run1.mark_errors, run1.explain()
    run1.require("connect", "mkfs", "mount", "fsync_files", "unsynced_write")
    assert seen.get("killed") == 1, f"the VM was not killed: {seen}\n{run1.explain()}"
    assert run1.facts.get("write_cache") == "write back", (
        f"the guest must see a volatile write cache: {run1.facts}"
    )
    assert seen["pf"]["dropped"] > 0, f"nothing was volatile at the power loss: {seen}"
    sums = {k[4:]: v for k, v in run1.facts.items() if k.startswith("sum_")}
    assert len(sums) == 24, run1.facts
    (tmp_path / "sums.txt").write_text("".join(f"{n} {s}\n" for n, s in sorted(sums.items())))

    run2 = khost.run_guest(
        SCRIPT,
        _env(proto, port, "check"),
        files=[tmp_path / "sums.txt"],
        timeout=600,
        log_path=tmp_path / "guest2.log",
    )
    print(run2.summary())
    run2.require("connect", "mount", "files_intact", "fsck")
    assert run2.facts.get("files_ok") == str(len(sums)), run2.explain()
    assert run2.rc == 0, run2.explain()
    log = d.log()
    assert "Traceback" not in log, log[-3000:]
