"""bdev_nvme_attach_controller --dhchap-key / --dhchap-ctrlr-key (issue 11
item 4): a blockfabric daemon imports a namespace from a second blockfabric
daemon that requires DH-HMAC-CHAP, with the admin queue (supervisor) and the
I/O queues (reactors) each authenticated; a wrong key is refused; the
target's keys rotate (nvmf_subsystem_set_keys) while the importer stays
connected and keeps doing I/O. Two real daemons over 127.0.0.1."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from blockfabric.control.keyring import format_interchange
from blockfabric.transports.nvmf_host.auth import HostAuthConfig
from blockfabric.transports.nvmf_host.controller import Controller

sys.path.insert(0, os.path.dirname(__file__))
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
NQN = "nqn.2016-06.io.blockfabric:secure"
NQN2 = "nqn.2016-06.io.blockfabric:reexport"
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:6c1e3a70-0b7e-4bb4-9c77-1d2f7a3c2b10"


def export(d: Any, nqn: str, bdev: str) -> int:
    from test_bdev_nvme import export as _export  # noqa: PLC0415  (same folder)

    return int(_export(d, nqn, bdev))


def _keyfile(tmp: Path, name: str, text: str) -> str:
    p = tmp / name
    p.write_text(text + "\n")
    os.chmod(p, 0o600)
    return str(p)


def _attach(d: Any, port: int, name: str, key: str | None, ckey: str | None = None) -> Any:
    p: dict[str, Any] = {
        "name": name, "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
        "trsvcid": str(port), "subnqn": NQN, "hostnqn": HOSTNQN,
    }  # fmt: skip
    if key:
        p["dhchap_key"] = key
    if ckey:
        p["dhchap_ctrlr_key"] = ckey
    return d.rpc("bdev_nvme_attach_controller", p)


def _wait_auth_qpairs(t: Any, n: int, timeout: float = 20.0) -> list[Any]:
    end = time.monotonic() + timeout
    while True:
        qps = t.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN})
        done = [q for q in qps if q.get("auth", {}).get("state") == "completed"]
        if len(done) >= n or time.monotonic() > end:
            return qps
        time.sleep(0.3)


def test_import_from_secured_target(daemon_factory: Any, tmp_path: Path) -> None:
    hk = format_interchange("DHHC-1", 1, os.urandom(32))
    ck = format_interchange("DHHC-1", 2, os.urandom(48))
    hk2 = format_interchange("DHHC-1", 3, os.urandom(64))
    t = daemon_factory(mask="0x3", name=f"authT{os.getpid()}").start()
    hd = daemon_factory(mask="0x3", name=f"authH{os.getpid()}").start()
    t.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 8192, "block_size": 512})
    port = export(t, NQN, "Malloc0")
    t.rpc("nvmf_subsystem_allow_any_host", {"nqn": NQN, "allow_any_host": False})
    for d in (t, hd):
        d.rpc(
            "keyring_file_add_key", {"name": "hk", "path": _keyfile(tmp_path, f"{d.name}-hk", hk)}
        )
        d.rpc(
            "keyring_file_add_key", {"name": "ck", "path": _keyfile(tmp_path, f"{d.name}-ck", ck)}
        )
    hd.rpc("keyring_file_add_key", {"name": "bad", "path": _keyfile(tmp_path, "bad", hk2)})
    t.rpc("keyring_file_add_key", {"name": "hk2", "path": _keyfile(tmp_path, "t-hk2", hk2)})
    t.rpc("nvmf_set_config", {"dhchap_dhgroups": ["null", "ffdhe3072"]})
    t.rpc(
        "nvmf_subsystem_add_host",
        {"nqn": NQN, "host": HOSTNQN, "dhchap_key": "hk", "dhchap_ctrlr_key": "ck"},
    )
    # refused: no key, a wrong key
    with pytest.raises(Exception, match="DH-HMAC-CHAP"):
        _attach(hd, port, "Nvme9", None)
    with pytest.raises(Exception, match="DH-HMAC-CHAP"):
        _attach(hd, port, "Nvme9", "bad")
    # accepted, bidirectional: the admin queue and the reactors' I/O queues
    assert _attach(hd, port, "Nvme0", "hk", "ck") == ["Nvme0n1"]
    port2 = export(hd, NQN2, "Nvme0n1")
    data = os.urandom(64 * 1024)
    with Controller("127.0.0.1", port2, NQN2, nr_io_queues=2) as c:
        c.connect()
        c.write(1, 16, data, 512)
        assert c.read(1, 16, 128, 512) == data
        qps = _wait_auth_qpairs(t, 2)
        assert {q["auth"]["digest"] for q in qps} == {"sha512"}, qps
        assert {q["auth"]["dhgroup"] for q in qps} == {"ffdhe3072"}, qps
        assert all(q["auth"]["state"] == "completed" for q in qps), qps
        assert 0 in {q["qid"] for q in qps} and len(qps) >= 2, qps
        # rotation on the target while the importer is connected: its queues
        # stay, its I/O goes on; a new association needs the new key
        t.rpc("nvmf_subsystem_set_keys", {"nqn": NQN, "host": HOSTNQN, "dhchap_key": "hk2"})
        c.write(1, 300, data, 512)
        assert c.read(1, 300, 128, 512) == data
        assert len(t.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN})) == len(qps)
    with pytest.raises(Exception, match="refused"):
        Controller(
            "127.0.0.1", port, NQN, hostnqn=HOSTNQN, dhchap=HostAuthConfig.from_strings(hk)
        ).connect()
    with Controller(
        "127.0.0.1", port, NQN, hostnqn=HOSTNQN, dhchap=HostAuthConfig.from_strings(hk2)
    ) as c2:
        c2.connect()
        assert c2.read(1, 16, 128, 512) == data
    cfg = hd.rpc("save_config")
    text = repr(cfg) + repr(hd.rpc("bdev_get_bdevs")) + repr(hd.rpc("bdev_nvme_get_controllers"))
    assert "DHHC-1" not in text and "dhchap_ctrlr_key" in repr(cfg)
    assert "Traceback" not in t.log() and "Traceback" not in hd.log()
