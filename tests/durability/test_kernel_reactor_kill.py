"""The kernel hosts in the QEMU guest across a reactor kill (issue 9 items
5b and 5c): guest/reactor-kill-io.sh writes a 48 MiB O_DIRECT pattern with
dd; at "KH-MARK kill" this test SIGKILLs a reactor of the 2-reactor target
serving the guest (the supervisor restarts it). NVMe/TCP: the kernel
reconnects (ctrl_loss_tmo / reconnect_delay given to nvme connect); iSCSI:
open-iscsi recovers the session (replacement_timeout). dd must complete and
the pattern must read back byte for byte.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import dlib
import pytest

pytestmark = [pytest.mark.interop, pytest.mark.timeout(900)]

INTEROP = Path(__file__).resolve().parents[1] / "interop"
SCRIPT = INTEROP / "guest" / "reactor-kill-io.sh"
SIZE_MB = 64


def _khost() -> Any:
    if str(INTEROP) not in sys.path:
        sys.path.insert(0, str(INTEROP))
    import khost

    return khost


def _victim(d: Any, proto: str) -> int:
    """The reactor holding the guest's connection (iSCSI: its node's home;
    NVMe/TCP: the one with the admin queue, or any with one of its queues)."""
    if proto == "iscsi":
        conns = d.rpc("iscsi_get_connections")
        assert conns, "no iSCSI connection while the guest writes"
        return int(conns[0]["lcore_id"])
    return dlib.nvme_admin_reactor(d)  # killing it takes the controller down


@pytest.mark.parametrize("proto", ["nvme", "iscsi"])
def test_kernel_host_survives_reactor_kill(daemon_factory: Any, tmp_path: Path, proto: str) -> None:
    khost = _khost()
    khost.require_harness()
    d = daemon_factory(mask="0x3", extra=["--max-restarts", "10"]).start()
    d.rpc(
        "bdev_malloc_create",
        {"name": "Malloc0", "num_blocks": (SIZE_MB << 20) // 512, "block_size": 512},
    )
    port = dlib.free_port()
    env: dict[str, Any] = {"PROTO": proto, "PORT": port, "IO_MB": 48}
    if proto == "nvme":
        dlib.export_nvmf(d, port, "Malloc0")
        env.update(NQN=dlib.NQN, CTRL_LOSS_TMO=120, RECONNECT_DELAY=1)
    else:
        dlib.export_iscsi(d, port, {dlib.IQN_NAME: "Malloc0"})
        env.update(IQN=dlib.IQN, REPLACEMENT_TIMEOUT=120)
    seen: dict[str, Any] = {}

    def kill() -> None:
        rid = _victim(d, proto)
        t0 = time.monotonic()
        seen["kill"] = dlib.kill_reactor(d, rid)
        seen["victim"] = rid
        seen["restart_s"] = time.monotonic() - t0

    run = khost.run_guest(
        SCRIPT, env, timeout=600, on_mark={"kill": kill}, log_path=tmp_path / "guest.log"
    )
    print(run.summary(), seen)
    assert not run.mark_errors, run.explain()
    assert "kill" in seen, run.explain()
    run.require("connect", "dd_write", "reconnected", "pattern")
    assert run.facts.get("dd_running_at_kill") == "1", f"dd ended before the kill\n{run.explain()}"
    assert run.rc == 0, run.explain()
    st = {r["id"]: r for r in dlib.reactors(d)}
    assert st[seen["victim"]].get("restarts", 1) >= 1, st
    log = d.log()
    assert "Traceback" not in log, log[-3000:]
