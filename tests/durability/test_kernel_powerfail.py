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
would prove nothing. The same cycle with the wcache's ``ignore_fua`` test
double (FUA and flushes not honoured) must lose the fsync()ed files (on these
runs the whole file system: nothing had reached the medium), so the test can
fail.
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


def _power_cycle(
    daemon_factory: Any, tmp_path: Path, proto: str, ignore_fua: bool
) -> tuple[Any, Any, dict[str, Any], dict[str, str]]:
    """Boot 1 (write, VM killed, power fail), boot 2 (check): both runs."""
    khost = _khost()
    khost.require_harness()
    d = daemon_factory(mask="0x3").start()
    dlib.wcache_volume(d, SIZE_MB, ignore_fua=ignore_fua)
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
    log = d.log()
    assert "Traceback" not in log, log[-3000:]
    return run1, run2, seen, sums


@pytest.mark.parametrize("proto", ["nvme", "iscsi"])
def test_ext4_survives_power_fail(daemon_factory: Any, tmp_path: Path, proto: str) -> None:
    _run1, run2, _seen, sums = _power_cycle(daemon_factory, tmp_path, proto, False)
    run2.require("connect", "mount", "files_intact", "fsck")
    assert run2.facts.get("files_ok") == str(len(sums)), run2.explain()
    assert run2.rc == 0, run2.explain()


def test_ext4_with_fua_ignored_loses_data(daemon_factory: Any, tmp_path: Path) -> None:
    """The same cycle against a cache that ignores FUA and flushes (the
    wcache's test double): the fsync()ed files do not survive (the file
    system is gone, damaged or missing files), so the test above can fail."""
    _run1, run2, seen, sums = _power_cycle(daemon_factory, tmp_path, "nvme", True)
    run2.require("connect")
    intact = (
        run2.results.get("mount", (False, ""))[0]
        and run2.results.get("files_intact", (False, ""))[0]
        and run2.results.get("fsck", (False, ""))[0]
    )
    print(f"ignore_fua: dropped {seen['pf']}, files ok {run2.facts.get('files_ok')}/{len(sums)}")
    assert not intact, f"nothing was lost although FUA and flushes were ignored\n{run2.explain()}"
