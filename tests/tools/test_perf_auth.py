"""blockfabric perf --dhchap-key / --dhchap-ctrlr-key (spdk_nvme_perf's
names; issue 11 item 4): every worker's I/O queue and the admin queue
authenticate to a blockfabric daemon that requires DH-HMAC-CHAP; without the
key, or with a wrong one, perf exits 1 with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from blockfabric.control.keyring import format_interchange

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
NQN = "nqn.2016-06.io.blockfabric:perfauth"
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:2f0a3c1e-9d4b-4e55-8a17-3b6c0d9e7f21"


def _keyfile(tmp: Path, name: str, text: str) -> str:
    p = tmp / name
    p.write_text(text + "\n")
    os.chmod(p, 0o600)
    return str(p)


def _perf(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    trid = f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN} hostnqn:{HOSTNQN}"
    return subprocess.run(
        [sys.executable, "-m", "blockfabric.tools.cli", "perf", "-r", trid, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_perf_dhchap(daemon_factory: Any, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bdevs"))
    from test_bdev_nvme import export

    hk = format_interchange("DHHC-1", 1, os.urandom(32))
    ck = format_interchange("DHHC-1", 0, os.urandom(48))
    t = daemon_factory(mask="0x1").start()
    t.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 16384, "block_size": 512})
    port = export(t, NQN, "Malloc0")
    t.rpc("nvmf_subsystem_allow_any_host", {"nqn": NQN, "allow_any_host": False})
    t.rpc("keyring_file_add_key", {"name": "hk", "path": _keyfile(tmp_path, "t-hk", hk)})
    t.rpc("keyring_file_add_key", {"name": "ck", "path": _keyfile(tmp_path, "t-ck", ck)})
    t.rpc(
        "nvmf_subsystem_add_host",
        {"nqn": NQN, "host": HOSTNQN, "dhchap_key": "hk", "dhchap_ctrlr_key": "ck"},
    )
    out = tmp_path / "r.json"
    common = ["-q", "4", "-o", "4096", "-w", "randwrite", "-t", "1", "--verify", "-P", "2"]
    p = _perf(
        port, *common, "--json", str(out),
        "--dhchap-key", _keyfile(tmp_path, "h-hk", hk),
        "--dhchap-ctrlr-key", _keyfile(tmp_path, "h-ck", ck),
        "--dhchap-dhgroups", "ffdhe2048",
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(out.read_text())
    assert doc["total"]["miscompares"] == 0 and doc["total"]["errors"] == 0
    assert all(w["ios"] > 0 for w in doc["workers"])
    p = _perf(port, *common)
    assert p.returncode == 1 and "requires DH-HMAC-CHAP" in p.stderr, p.stderr
    p = _perf(
        port,
        *common,
        "--dhchap-key",
        _keyfile(tmp_path, "bad", format_interchange("DHHC-1", 1, os.urandom(32))),
    )
    assert p.returncode == 1 and "refused by the controller: authentication failed" in p.stderr, (
        p.stderr
    )
    loose = tmp_path / "loose"
    loose.write_text(hk)
    os.chmod(loose, 0o644)
    p = _perf(port, *common, "--dhchap-key", str(loose))
    assert p.returncode == 2 and "0600" in p.stderr, p.stderr
    assert "Traceback" not in t.log()
