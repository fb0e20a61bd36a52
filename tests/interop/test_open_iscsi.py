"""open-iscsi (Linux 6.1 iscsi_tcp in QEMU) against blockfabric and, as the harness check, tgtd.

One guest boot per target runs guest/iscsi-interop.sh: sendtargets discovery,
login without CHAP + 64 MiB O_DIRECT pattern at 4 KiB and 1 MiB, wrong CHAP
secret refused, one-way CHAP, mutual CHAP, CRC32C header+data digests
negotiated + pattern, logout after each.
"""

from __future__ import annotations

from typing import Any

import khost
import pytest
from bfsetup import BF_BASE, bf_iscsi_targets, daemon_clean
from peers import Tgtd, TgtTarget

pytestmark = [pytest.mark.interop, pytest.mark.timeout(900)]

CHAP_USER, CHAP_PASS = "bfuser", "s3cretsecret12"
MCHAP_USER, MCHAP_PASS = "bftarget", "m3cretsecret12"
IO_MB = 64
EXPECTED = [
    "discovery",
    "plain_login", "plain_pattern_4k", "plain_pattern_1M", "plain_logout",
    "chap_bad_secret", "chap_login", "chap_pattern_1M", "chap_logout",
    "mutual_login", "mutual_pattern_1M", "mutual_logout",
    "digest_login", "digest_pattern_1M", "digest_pattern_4k", "digest_logout",
]  # fmt: skip


def _guest_env(port: int, iqns: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "PORT": port,
        "IQN_OPEN": iqns[0],
        "IQN_CHAP": iqns[1],
        "IQN_MUTUAL": iqns[2],
        "CHAP_USER": CHAP_USER,
        "CHAP_PASS": CHAP_PASS,
        "MCHAP_USER": MCHAP_USER,
        "MCHAP_PASS": MCHAP_PASS,
        "IO_MB": IO_MB,
        "DIGEST_IO_MB": IO_MB,
    }


def _check(run: khost.GuestRun, size_bytes: int) -> None:
    print(run.summary())
    run.require(*EXPECTED)
    assert run.facts.get("plain_bytes") == str(size_bytes), run.explain()
    # the defaults (None) must be negotiated without digests, the node update with both
    assert run.facts.get("plain_header_digest") == "None", run.explain()
    assert run.facts.get("digest_header_digest") == "CRC32C", run.explain()
    assert run.facts.get("digest_data_digest") == "CRC32C", run.explain()
    assert run.rc == 0, run.explain()


def test_open_iscsi_peer_tgt(tmp_path: Any) -> None:
    """Harness check: the same guest script against Debian tgtd (CHAP, mutual CHAP, digests)."""
    khost.require_harness()
    khost.require_tools("tgtd", "tgtadm")
    port = khost.free_port()
    iqns = tuple(f"iqn.2024-01.io.interop:tgt-{port}-{n}" for n in ("open", "chap", "mutual"))
    targets = [
        TgtTarget(iqns[0], IO_MB),
        TgtTarget(iqns[1], 16, CHAP_USER, CHAP_PASS),
        TgtTarget(iqns[2], 16, CHAP_USER, CHAP_PASS, MCHAP_USER, MCHAP_PASS),
    ]
    with Tgtd(port, targets):
        run = khost.run_guest(
            "iscsi-interop.sh", _guest_env(port, iqns), timeout=420, log_path=tmp_path / "guest.log"
        )
    _check(run, IO_MB << 20)


def test_open_iscsi_blockfabric(daemon_factory: Any, tmp_path: Any) -> None:
    khost.require_harness()
    port = khost.free_port()
    d = daemon_factory(mask="0x3").start()
    bf_iscsi_targets(d, port, IO_MB, CHAP_USER, CHAP_PASS, MCHAP_USER, MCHAP_PASS)
    iqns = (f"{BF_BASE}:disk1", f"{BF_BASE}:disk2", f"{BF_BASE}:disk3")
    run = khost.run_guest(
        "iscsi-interop.sh", _guest_env(port, iqns), timeout=600, log_path=tmp_path / "guest.log"
    )
    conns_after = d.rpc("iscsi_get_connections")
    daemon_clean(d)
    _check(run, IO_MB << 20)
    assert conns_after == [], f"connections left after every logout: {conns_after}"
