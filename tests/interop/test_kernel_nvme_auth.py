"""The Linux 6.12 NVMe/TCP host (Debian bookworm-backports kernel, nvme-cli
2.3 in QEMU) authenticates to blockfabric with DH-HMAC-CHAP (issue 11 item 5).

One boot (the harness's nvme-auth-host.sh over the guest's hostfwd to our
127.0.0.1 listener): c) a wrong host secret and no secret at all are refused
by the authentication (kernel log "qid 0: authentication failed" / "qid 0:
no key", no controller left), a) the host secret (unidirectional): connect,
pattern I/O, disconnect, b) host + controller secret (bidirectional, the
kernel checks our controller response: "qid 0: controller authenticated").
Keys come from the host's `nvme gen-dhchap-key` and load through the keyring.
The target offers only SHA-384 and ffdhe2048 (nvmf_set_config), so the
kernel's log line proves the DH exchange and the transformed keys both ends
computed: "authenticated with hash hmac(sha384) dhgroup ffdhe2048".
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import khost
import pytest
from bfsetup import bf_nvmf_subsystem, daemon_clean, malloc

pytestmark = [pytest.mark.interop, pytest.mark.timeout(900)]

NQN = "nqn.2016-06.io.blockfabric:auth1"
SUITE = "bookworm-backports"


def _gen_key(hmac_id: int, length: int, nqn: str) -> str:
    p = subprocess.run(
        ["nvme", "gen-dhchap-key", f"--hmac={hmac_id}", f"--key-length={length}", f"--nqn={nqn}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stderr
    key = p.stdout.strip()
    assert key.startswith(f"DHHC-1:{hmac_id:02x}:"), key
    return key


def _key_file(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text + "\n")
    os.chmod(path, 0o600)
    return str(path)


def test_kernel_nvme_auth_blockfabric(daemon_factory: Any, tmp_path: Any) -> None:
    khost.require_harness()
    khost.require_tools("nvme")
    hid = str(uuid.uuid4())
    hostnqn = f"nqn.2014-08.org.nvmexpress:uuid:{hid}"
    host_key = _gen_key(1, 32, hostnqn)  # SHA-256-transformed with the host NQN
    ctrl_key = _gen_key(2, 48, NQN)  # SHA-384-transformed with the subsystem NQN
    port = khost.free_port()
    d = daemon_factory(mask="0x3").start()
    malloc(d, "Malloc0", 32)
    bf_nvmf_subsystem(d, port, NQN, "Malloc0")
    d.rpc("nvmf_subsystem_allow_any_host", {"nqn": NQN, "allow_any_host": False})
    d.rpc("keyring_file_add_key", {"name": "hk", "path": _key_file(tmp_path, "hk", host_key)})
    d.rpc("keyring_file_add_key", {"name": "ck", "path": _key_file(tmp_path, "ck", ctrl_key)})
    d.rpc("nvmf_set_config", {"dhchap_digests": ["sha384"], "dhchap_dhgroups": ["ffdhe2048"]})
    d.rpc(
        "nvmf_subsystem_add_host",
        {"nqn": NQN, "host": hostnqn, "dhchap_key": "hk", "dhchap_ctrlr_key": "ck"},
    )
    hosts = d.rpc("nvmf_get_subsystems", {"nqn": NQN})[0]["hosts"]
    assert hosts == [{"nqn": hostnqn, "dhchap_key": "hk", "dhchap_ctrlr_key": "ck"}]
    run = khost.run_guest(
        Path(khost.require_harness()) / "nvme-auth-host.sh",
        {
            "KH_KERNEL_SUITE": SUITE,
            "PORT": port,
            "NQN": NQN,
            "HOSTNQN": hostnqn,
            "HOSTID": hid,
            "IO_MB": 8,
            "DHCHAP_SECRET": host_key,
            "DHCHAP_CTRL_SECRET": ctrl_key,
            "DHCHAP_DHGROUP": "ffdhe2048",
        },
        timeout=600,
        log_path=tmp_path / "guest.log",
    )
    print(run.tail(60))
    left = d.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN})
    daemon_clean(d)
    out = run.output
    assert run.rc == 0, run.explain()
    for step in (
        "c) wrong host secret refused",
        "c) no secret refused",
        "a) unidirectional",
        "b) bidirectional",
    ):
        assert f"[guest] PASS: {step}" in out, f"{step}\n{run.explain()}"
    assert "authenticated with hash hmac(sha384) dhgroup ffdhe2048" in out, run.explain()
    assert "controller authenticated" in out, run.explain()
    assert left == [], f"controllers left after the guest disconnected: {left}"


def test_kernel_nvme_auth_rotation_blockfabric(daemon_factory: Any, tmp_path: Any) -> None:
    """First the kernel host refuses our controller when it expects another
    controller secret (it checks our response). Then nvmf_subsystem_set_keys
    while the 6.12 host is connected: the live controller re-authenticates
    every queue with the new secret (the kernel's sysfs dhchap_secret), I/O
    goes on, no queue fails."""
    khost.require_harness()
    khost.require_tools("nvme")
    hid = str(uuid.uuid4())
    hostnqn = f"nqn.2014-08.org.nvmexpress:uuid:{hid}"
    old, new = _gen_key(1, 32, hostnqn), _gen_key(3, 64, hostnqn)
    port = khost.free_port()
    d = daemon_factory(mask="0x3").start()
    malloc(d, "Malloc0", 32)
    bf_nvmf_subsystem(d, port, NQN, "Malloc0")
    d.rpc("nvmf_subsystem_allow_any_host", {"nqn": NQN, "allow_any_host": False})
    d.rpc("keyring_file_add_key", {"name": "old", "path": _key_file(tmp_path, "old", old)})
    d.rpc("keyring_file_add_key", {"name": "new", "path": _key_file(tmp_path, "new", new)})
    d.rpc("nvmf_set_config", {"dhchap_digests": ["sha256"], "dhchap_dhgroups": ["ffdhe2048"]})
    d.rpc(
        "keyring_file_add_key",
        {"name": "ck", "path": _key_file(tmp_path, "ck", _gen_key(2, 48, NQN))},
    )
    d.rpc(
        "nvmf_subsystem_add_host",
        {"nqn": NQN, "host": hostnqn, "dhchap_key": "old", "dhchap_ctrlr_key": "ck"},
    )
    seen: dict[str, Any] = {}

    def rotate() -> None:
        seen["before"] = d.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN})
        d.rpc(
            "nvmf_subsystem_set_keys",
            {"nqn": NQN, "host": hostnqn, "dhchap_key": "new", "dhchap_ctrlr_key": "ck"},
        )

    run = khost.run_guest(
        "nvme-auth-rotate.sh",
        {
            "KH_KERNEL_SUITE": SUITE,
            "PORT": port,
            "NQN": NQN,
            "HOSTNQN": hostnqn,
            "HOSTID": hid,
            "DHCHAP_SECRET": old,
            "DHCHAP_NEW_SECRET": new,
            "DHCHAP_WRONG_CTRL_SECRET": _gen_key(2, 48, NQN),
            "DHCHAP_DHGROUP": "ffdhe2048",
        },
        timeout=600,
        on_mark={"rotate": rotate},
        log_path=tmp_path / "guest.log",
    )
    print(run.summary())
    log = d.log()
    daemon_clean(d)
    assert not run.mark_errors, run.explain()
    run.require(
        "wrong_ctrl_refused", "connect", "pattern_before", "reauth", "pattern_after", "disconnect"
    )
    assert run.facts.get("ctrl_state") == "live", run.explain()
    # no authentication failed after the refused connect (the re-authentication included)
    assert run.facts.get("auth_failed") == "0", run.explain()
    before = seen["before"]
    assert len(before) >= 2 and all(q["auth"]["state"] == "completed" for q in before), before
    assert "DH-HMAC-CHAP failed" not in log, log[-3000:]
