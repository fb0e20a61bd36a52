"""NVMe reservations with the Linux 6.1 host (nvme-cli 2.3 in QEMU) against
blockfabric (issue 12 items 2 and 4): from the guest `nvme resv-register`,
`resv-acquire` (Write Exclusive), `resv-report` (EDS), `resv-release` and
unregister; a second host identity (our host library on the host side, with
its own host NQN and host ID) sees the guest as the holder, gets a
Reservation Conflict on its write while reads pass, registers itself (the
guest sees two registrants), and writes once the guest released. The target
runs 2 reactors. One guest boot.
"""

from __future__ import annotations

import uuid
from typing import Any

import khost
import pytest
from bfsetup import bf_nvmf_subsystem, daemon_clean, malloc
from bftest import missing_tool

from blockfabric.transports.nvmf_host.controller import Controller
from blockfabric.transports.nvmf_host.queue import NvmeStatusError

pytestmark = [pytest.mark.interop, pytest.mark.timeout(900)]

NQN = "nqn.2016-06.io.blockfabric:resv"
KEY = 0xAB
KEY2 = 0xCD


def _status(fn: Any) -> int:
    try:
        fn()
    except NvmeStatusError as e:
        return int(e.sc) | (e.sct << 8)
    return 0


def test_kernel_nvme_resv_blockfabric(daemon_factory: Any, tmp_path: Any) -> None:
    if khost.harness_dir() is None:
        missing_tool("the kernel-host harness (../shared/interop/kernel-host) is missing")
    khost.require_harness()
    port = khost.free_port()
    d = daemon_factory(mask="0x3").start()
    malloc(d, "Malloc0", 32)
    bf_nvmf_subsystem(d, port, NQN, "Malloc0", "BFRESV01")
    gid = uuid.uuid4()
    ident = {"HOSTID": str(gid), "HOSTNQN": f"nqn.2014-08.org.nvmexpress:uuid:{gid}"}
    hid2 = uuid.uuid4()
    seen: dict[str, Any] = {}
    second: list[Controller] = []

    def second_host() -> None:
        c = Controller(
            "127.0.0.1",
            port,
            NQN,
            hostnqn=f"nqn.2014-08.org.nvmexpress:uuid:{hid2}",
            hostid=hid2.bytes,
            nr_io_queues=2,
            timeout=30,
        )
        second.append(c.connect())
        rep = c.resv_report(1)
        seen["report"] = (rep.rtype, [(h, hold, k) for _c, hold, h, k in rep.regs])
        seen["write"] = [_status(lambda q=q: c.write(1, 8, bytes(512), 512, q=q)) for q in (0, 1)]
        seen["read"] = [_status(lambda q=q: c.read(1, 8, 1, 512, q=q)) for q in (0, 1)]
        c.resv_register(1, 0, nrkey=KEY2)

    def released() -> None:
        c = second[0]
        seen["write_after_release"] = _status(lambda: c.write(1, 8, bytes(512), 512))
        c.resv_register(1, 1, crkey=KEY2)  # unregister: the guest's final report shows 0

    run = khost.run_guest(
        "nvme-resv.sh",
        {"PORT": port, "NQN": NQN, "KEY": hex(KEY), **ident},
        timeout=480,
        on_mark={"second-host": second_host, "released": released},
        log_path=tmp_path / "guest.log",
    )
    print(run.summary())
    for c in second:
        c.close()
    daemon_clean(d)
    assert not run.mark_errors, run.explain()
    run.require(
        "connect", "resv_register", "resv_acquire", "resv_report", "holder_write",
        "second_registered", "holder_write_after", "resv_release", "resv_unregister",
        "disconnect",
    )  # fmt: skip
    f = run.facts
    why = run.explain()
    assert int(f.get("oncs", "0"), 0) & 0x20, f"ONCS lacks Reservations\n{why}"
    assert int(f.get("rescap", "0"), 0) & 0x7E == 0x7E, f"RESCAP {f.get('rescap')}\n{why}"
    assert f.get("report_rtype") == "1" and f.get("report_regctl") == "1", why
    assert f.get("released_rtype") == "0", why
    # the second identity: the guest holds Write Exclusive with its key
    assert seen.get("report") == (1, [(gid.bytes, True, KEY)]), seen
    assert seen.get("write") == [0x83, 0x83], f"second host's writes: {seen}"
    assert seen.get("read") == [0, 0], f"second host's reads (Write Exclusive): {seen}"
    assert seen.get("write_after_release") == 0, seen
    assert run.rc == 0, why
