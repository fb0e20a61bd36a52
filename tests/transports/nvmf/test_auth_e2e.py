"""DH-HMAC-CHAP between our host (transports/nvmf_host Controller) and our
target (the in-process target of conftest.py, 2 reactors) over 127.0.0.1
(issue 11 item 3 / 4): each digest, null + two ffdhe groups, uni- and
bidirectional; wrong and missing secrets refused with the right reason;
rotation with nvmf_subsystem_set_keys while a host stays connected; no
command runs before authentication."""

from __future__ import annotations

import itertools
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from blockfabric.control import keyring_methods as _km  # noqa: F401  (registers the RPCs)
from blockfabric.control.keyring import format_interchange
from blockfabric.control.registry import RpcError
from blockfabric.transports.nvmf import auth_msg as M
from blockfabric.transports.nvmf import spec
from blockfabric.transports.nvmf.auth_host import AuthFailed
from blockfabric.transports.nvmf_host.auth import HostAuthConfig
from blockfabric.transports.nvmf_host.controller import Controller
from blockfabric.transports.nvmf_host.queue import NvmeStatusError

pytestmark = pytest.mark.timeout(300)


def _key(hh: int, n: int) -> str:
    return format_interchange("DHHC-1", hh, os.urandom(n))


@pytest.fixture
def authtarget(h: Any, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A running target whose subsystem only admits HOSTNQN, and a key maker."""
    rpc = h.FakeRpc(nreactors=2)
    rpc.start()
    try:
        key = h.setup_target(rpc)
        rpc.rpc("nvmf_subsystem_allow_any_host", {"nqn": h.SUBNQN, "allow_any_host": False})
        host, _, port = key.rpartition(":")
        n = itertools.count()

        def add_key(text: str) -> str:
            name = f"key{next(n)}"
            p = tmp_path / name
            p.write_text(text)
            os.chmod(p, 0o600)
            rpc.rpc("keyring_file_add_key", {"name": name, "path": str(p)})
            return name

        yield rpc, (host, int(port)), add_key
    finally:
        rpc.stop()


def _ctrl(h: Any, addr: tuple[str, int], cfg: HostAuthConfig | None, nr_io: int = 1) -> Controller:
    return Controller(
        addr[0], addr[1], h.SUBNQN, hostnqn=h.HOSTNQN, hostid=h.HOSTID, nr_io_queues=nr_io,
        timeout=30.0, dhchap=cfg,
    )  # fmt: skip


def _io_roundtrip(c: Controller) -> None:
    data = os.urandom(4096)
    c.write(1, 8, data, 512)
    assert c.read(1, 8, 8, 512) == data


@pytest.mark.parametrize(
    "digest,dhgroup,bidi",
    list(itertools.product(["sha256", "sha384", "sha512"], ["null", "ffdhe2048", "ffdhe4096"], [False, True])),
)  # fmt: skip
def test_matrix(h: Any, authtarget: Any, digest: str, dhgroup: str, bidi: bool) -> None:
    rpc, addr, add_key = authtarget
    hk, ck = _key(1, 32), _key(3, 64)
    params: dict[str, Any] = {"nqn": h.SUBNQN, "host": h.HOSTNQN, "dhchap_key": add_key(hk)}
    if bidi:
        params["dhchap_ctrlr_key"] = add_key(ck)
    rpc.rpc("nvmf_subsystem_add_host", params)
    rpc.rpc("nvmf_set_config", {"dhchap_digests": [digest], "dhchap_dhgroups": [dhgroup]})
    cfg = HostAuthConfig.from_strings(hk, ck if bidi else None)
    with _ctrl(h, addr, cfg, nr_io=2) as c:
        c.connect()
        # the admin queue and both I/O queues authenticated, with what the target chose
        assert c.auth_result == {0: (digest, dhgroup), 1: (digest, dhgroup), 2: (digest, dhgroup)}
        _io_roundtrip(c)
        qps = rpc.rpc("nvmf_subsystem_get_qpairs", {"nqn": h.SUBNQN})
        auths = [q.get("auth") for q in qps]
        assert auths == [{"state": "completed", "digest": digest, "dhgroup": dhgroup}] * 3, qps


def test_wrong_secret_refused(h: Any, authtarget: Any) -> None:
    rpc, addr, add_key = authtarget
    rpc.rpc(
        "nvmf_subsystem_add_host",
        {"nqn": h.SUBNQN, "host": h.HOSTNQN, "dhchap_key": add_key(_key(1, 32))},
    )
    c = _ctrl(h, addr, HostAuthConfig.from_strings(_key(1, 32)))
    with pytest.raises(AuthFailed) as ei:
        c.connect()
    assert ei.value.rce == M.RCE_FAILED and ei.value.by_controller
    assert rpc.nvmf.ctrlrs == {} or h.wait_for(lambda: not rpc.nvmf.ctrlrs, 10)


def test_wrong_controller_secret_refused_by_host(h: Any, authtarget: Any) -> None:
    rpc, addr, add_key = authtarget
    hk = _key(2, 48)
    rpc.rpc(
        "nvmf_subsystem_add_host",
        {"nqn": h.SUBNQN, "host": h.HOSTNQN, "dhchap_key": add_key(hk), "dhchap_ctrlr_key": add_key(_key(0, 32))},
    )  # fmt: skip
    c = _ctrl(h, addr, HostAuthConfig.from_strings(hk, _key(0, 32)))
    with pytest.raises(AuthFailed) as ei:
        c.connect()
    assert not ei.value.by_controller and ei.value.rce == M.RCE_FAILED


def test_no_secret_refused(h: Any, authtarget: Any) -> None:
    rpc, addr, add_key = authtarget
    rpc.rpc(
        "nvmf_subsystem_add_host",
        {"nqn": h.SUBNQN, "host": h.HOSTNQN, "dhchap_key": add_key(_key(1, 32))},
    )
    with pytest.raises(AuthFailed, match="requires DH-HMAC-CHAP"):
        _ctrl(h, addr, None).connect()


def test_digest_not_offered_refused(h: Any, authtarget: Any) -> None:
    rpc, addr, add_key = authtarget
    hk = _key(1, 32)
    rpc.rpc(
        "nvmf_subsystem_add_host", {"nqn": h.SUBNQN, "host": h.HOSTNQN, "dhchap_key": add_key(hk)}
    )
    rpc.rpc("nvmf_set_config", {"dhchap_digests": ["sha512"]})
    with pytest.raises(AuthFailed) as ei:
        _ctrl(h, addr, HostAuthConfig.from_strings(hk, digests=["sha256"])).connect()
    assert ei.value.rce == M.RCE_HASH_UNUSABLE


def test_commands_before_authentication_refused(h: Any, authtarget: Any) -> None:
    rpc, addr, add_key = authtarget
    hk = _key(1, 32)
    rpc.rpc(
        "nvmf_subsystem_add_host", {"nqn": h.SUBNQN, "host": h.HOSTNQN, "dhchap_key": add_key(hk)}
    )
    a = h.Client(addr)
    a.icreq()
    cqe = a.connect(kato=30000)
    assert cqe.status == 0 and cqe.result & (1 << 17), "Connect must ask for authentication (ATR)"
    cntlid = cqe.result & 0xFFFF
    auth_req = (spec.SCT_COMMAND_SPECIFIC, spec.SC_AUTH_REQUIRED)
    assert spec.split_status(a.prop_get(spec.PROP_CAP, size8=True).status)[:2] == auth_req
    assert (
        spec.split_status(a.prop_set(spec.PROP_CC, 1 | (6 << 16) | (4 << 20)).status)[:2]
        == auth_req
    )
    cqe, _ = a.cmd(spec.ADMIN_IDENTIFY, cdws=(spec.CNS_CTRL,), read_len=4096)
    assert spec.split_status(cqe.status)[:2] == auth_req
    cqe, _ = a.cmd(spec.ADMIN_KEEP_ALIVE)
    assert spec.split_status(cqe.status)[:2] == auth_req
    assert cntlid
    # an I/O queue of an authenticated, enabled controller: Connect works, Read
    # and Write do not until that queue authenticated too
    c = _ctrl(h, addr, HostAuthConfig.from_strings(hk), nr_io=0)
    c.connect()
    b = h.Client(addr)
    b.icreq()
    cqe = b.connect(qid=1, cntlid=c.cntlid, sqsize=31)
    assert cqe.status == 0 and cqe.result & (1 << 17)
    cqe, _ = b.cmd(spec.IO_READ, nsid=1, cdws=(0, 0, 0), read_len=512)
    assert spec.split_status(cqe.status)[:2] == auth_req
    cqe, _ = b.cmd(spec.IO_WRITE, nsid=1, cdws=(0, 0, 0), data=bytes(512))
    assert spec.split_status(cqe.status)[:2] == auth_req
    b.close()
    c.close()
    # an Authentication Send with a bad SECP is an invalid field, not a transaction
    neg = M.encode_negotiate(1, [1], [0])
    cqe, _ = a.cmd(
        spec.FABRICS_OPCODE,
        nsid=spec.FCTYPE_AUTH_SEND,
        cdws=(0x01 << 8 | 0x01 << 16 | 0xEA << 24, len(neg)),
        data=neg,
    )
    assert spec.split_status(cqe.status)[:2] == (0, spec.SC_INVALID_FIELD)
    # TL larger than the data: invalid field
    cqe, _ = a.cmd(
        spec.FABRICS_OPCODE,
        nsid=spec.FCTYPE_AUTH_SEND,
        cdws=(0x01 << 8 | 0x01 << 16 | 0xE9 << 24, len(neg) + 8),
        data=neg,
    )
    assert spec.split_status(cqe.status)[:2] == (0, spec.SC_INVALID_FIELD)
    a.close()


def test_rotation_while_connected(h: Any, authtarget: Any) -> None:
    rpc, addr, add_key = authtarget
    old, new = _key(1, 32), _key(2, 48)
    kold, knew = add_key(old), add_key(new)
    rpc.rpc("nvmf_subsystem_add_host", {"nqn": h.SUBNQN, "host": h.HOSTNQN, "dhchap_key": kold})
    with _ctrl(h, addr, HostAuthConfig.from_strings(old), nr_io=1) as c:
        c.connect()
        _io_roundtrip(c)
        rpc.rpc("nvmf_subsystem_set_keys", {"nqn": h.SUBNQN, "host": h.HOSTNQN, "dhchap_key": knew})
        # the host stays connected and keeps working with its authenticated queues
        _io_roundtrip(c)
        assert len(rpc.nvmf.ctrlrs) == 1
        # the next re-authentication with the old key fails and revokes the admin queue ...
        with pytest.raises(AuthFailed) as ei:
            c.authenticate()
        assert ei.value.rce == M.RCE_FAILED
        with pytest.raises(NvmeStatusError, match="Authentication Required"):
            c.identify_controller()
        # ... one with the new key succeeds on the same connection
        c.dhchap = HostAuthConfig.from_strings(new)
        assert c.authenticate() == ("sha512", "ffdhe8192")
        assert c.identify_controller().sn
        _io_roundtrip(c)
        # a re-authentication of the I/O queue too
        assert c.authenticate(c.io[0]) == ("sha512", "ffdhe8192")
        _io_roundtrip(c)
    # a new association needs the new key
    with pytest.raises(AuthFailed):
        _ctrl(h, addr, HostAuthConfig.from_strings(old)).connect()
    with _ctrl(h, addr, HostAuthConfig.from_strings(new)) as c:
        c.connect()
        _io_roundtrip(c)


def test_rpc_validation_and_save_config(h: Any, authtarget: Any) -> None:
    rpc, _addr, add_key = authtarget
    k = add_key(_key(1, 32))
    with pytest.raises(RpcError, match="needs a host key"):
        rpc.rpc(
            "nvmf_subsystem_add_host", {"nqn": h.SUBNQN, "host": h.HOSTNQN, "dhchap_ctrlr_key": k}
        )
    with pytest.raises(RpcError):
        rpc.rpc(
            "nvmf_subsystem_add_host",
            {"nqn": h.SUBNQN, "host": h.HOSTNQN, "dhchap_key": "nosuchkey"},
        )
    with pytest.raises(RpcError, match="unknown 'md5'"):
        rpc.rpc("nvmf_set_config", {"dhchap_digests": ["md5"]})
    with pytest.raises(RpcError, match="unknown 'ffdhe1024'"):
        rpc.rpc("nvmf_set_config", {"dhchap_dhgroups": ["ffdhe1024"]})
    assert rpc.nvmf.subsystems[h.SUBNQN]["hosts"] == []
    rpc.rpc("nvmf_subsystem_add_host", {"nqn": h.SUBNQN, "host": h.HOSTNQN, "dhchap_key": k})
    # the key is in use: the keyring refuses to remove it
    with pytest.raises(RpcError):
        rpc.rpc("keyring_file_remove_key", {"name": k})
    cfg = rpc.nvmf.save_config()
    hosts = [c for c in cfg if c["method"] == "nvmf_subsystem_add_host"]
    assert hosts == [
        {
            "method": "nvmf_subsystem_add_host",
            "params": {"nqn": h.SUBNQN, "host": h.HOSTNQN, "dhchap_key": k},
        }
    ]
    text = repr(cfg) + repr(rpc.rpc("nvmf_get_subsystems"))
    assert "DHHC-1" not in text, "key material must not appear in save_config or RPC output"
    rpc.rpc("nvmf_subsystem_remove_host", {"nqn": h.SUBNQN, "host": h.HOSTNQN})
    rpc.rpc("keyring_file_remove_key", {"name": k})  # released with the host
    with pytest.raises(RpcError, match="not allowed"):
        rpc.rpc("nvmf_subsystem_set_keys", {"nqn": h.SUBNQN, "host": h.HOSTNQN, "dhchap_key": k})
    _ = struct  # (keeps the import list stable for the raw-capsule helpers above)


def test_unauthenticated_queue_times_out(h: Any, authtarget: Any, monkeypatch: Any) -> None:
    """A queue that never authenticates is closed after the timeout (KATO,
    else 120 s: shortened here); an authenticated one stays."""
    from blockfabric.transports.nvmf import auth

    monkeypatch.setattr(auth, "DEFAULT_TIMEOUT_S", 0.5)
    rpc, addr, add_key = authtarget
    hk = _key(1, 32)
    rpc.rpc(
        "nvmf_subsystem_add_host", {"nqn": h.SUBNQN, "host": h.HOSTNQN, "dhchap_key": add_key(hk)}
    )
    a = h.Client(addr)
    a.icreq()
    cqe = a.connect(kato=0)
    assert cqe.status == 0
    with _ctrl(h, addr, HostAuthConfig.from_strings(hk)) as c:
        c.connect()
        a.sock.settimeout(10)
        assert a.sock.recv(1) == b"", "the unauthenticated queue must be closed"
        time.sleep(0.8)
        _io_roundtrip(c)  # the authenticated association is untouched
    a.close()
