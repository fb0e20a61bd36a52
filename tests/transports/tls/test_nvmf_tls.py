"""NVMe/TCP over TLS 1.3 against a real daemon (issue 11 items 2 and 4): the
handshake matrix with blockfabric's host (right key with both hash variants
and both suites, wrong key, no key, plain TCP on a secure listener, TLS to a
plain listener, identity/NQN binding), key material kept out of RPC
answers, save_config and the log."""

from __future__ import annotations

import json
import os
import time

import pytest
from tls_fixtures import HOST0, HOST256, HOST384, NOKEY, SUB

from blockfabric.control.keyring import TlsPsk
from blockfabric.transports.nvmf_host.controller import Controller
from blockfabric.transports.nvmf_host.queue import NvmeStatusError, TransportError
from blockfabric.transports.nvmf_host.tls_sock import TlsHandshakeError
from blockfabric.transports.tls.psk import derive

pytestmark = pytest.mark.e2e


def _wait(cond, timeout=20.0):
    """Poll ``cond`` (the daemon logs and tears down asynchronously)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def _ctrl(t, host, psk, port=None, **kw):
    return Controller("127.0.0.1", port or t.secure, SUB, hostnqn=host, psk=psk, timeout=15.0, **kw)


@pytest.mark.parametrize(
    "host, suite",
    [
        (HOST256, "TLS_AES_128_GCM_SHA256"),  # NVMeTLSkey-1:01: (SHA-256), 32 bytes
        (HOST384, "TLS_AES_256_GCM_SHA384"),  # NVMeTLSkey-1:02: (SHA-384), 48 bytes
        (HOST0, "TLS_AES_256_GCM_SHA384"),  # NVMeTLSkey-1:00: (no retained hash)
    ],
)
def test_right_key_io(tls_target, host, suite):
    with _ctrl(tls_target, host, tls_target.keys[host], nr_io_queues=1).connect() as c:
        assert c.admin.sock.cipher == suite
        assert c.io[0].sock.cipher == suite
        for lba, n in ((0, 8), (100, 256)):  # 4 KiB and 128 KiB: several records
            data = os.urandom(n * 512)
            c.write(1, lba, data, 512)
            assert c.read(1, lba, n, 512) == data
    assert _wait(  # disconnected on close
        lambda: all(
            x["hostnqn"] != host
            for x in tls_target.d.rpc("nvmf_subsystem_get_controllers", {"nqn": SUB})
        )
    )


def test_wrong_key_refused_in_handshake(tls_target):
    wrong = TlsPsk(1, os.urandom(32))
    with pytest.raises(TlsHandshakeError, match="TLS handshake failed"):
        _ctrl(tls_target, HOST256, wrong).connect()


def test_host_without_key_refused(tls_target):
    # NOKEY is an allowed host, but has no PSK: its identity is unknown
    with pytest.raises(TlsHandshakeError):
        _ctrl(tls_target, NOKEY, TlsPsk(1, os.urandom(32))).connect()
    # an unknown host with a key of its own fares no better
    with pytest.raises(TlsHandshakeError):
        _ctrl(tls_target, "nqn.2014-08.org.x:stranger", TlsPsk(2, os.urandom(48))).connect()


def test_plain_tcp_on_secure_listener_refused(tls_target):
    with pytest.raises((TransportError, OSError)):
        _ctrl(tls_target, HOST256, None).connect()
    assert _wait(lambda: "TLS refused" in tls_target.d.log())


def test_tls_to_plain_listener_fails(tls_target):
    with pytest.raises((TlsHandshakeError, TransportError, OSError)):
        _ctrl(tls_target, HOST256, tls_target.keys[HOST256], port=tls_target.plain).connect()


def test_host_with_psk_refused_over_plain_tcp(tls_target):
    # the plain listener of the same subsystem: a host that has a PSK there
    # must use TLS (or its key protects nothing)
    with pytest.raises(NvmeStatusError):
        _ctrl(tls_target, HOST256, None, port=tls_target.plain).connect()
    # a host without a PSK may connect in the clear there
    with _ctrl(tls_target, NOKEY, None, port=tls_target.plain).connect() as c:
        assert c.cntlid


def test_connect_must_match_the_identity(tls_target):
    # a TLS session for HOST256 that then claims to be HOST384 in Connect
    c = _ctrl(tls_target, HOST384, None)
    c.tls = derive(tls_target.keys[HOST256], HOST256, SUB)
    with pytest.raises(NvmeStatusError):
        c.connect()
    assert _wait(lambda: "connects with the TLS PSK of" in tls_target.d.log())


def test_no_key_material_in_rpc_save_config_or_log(tls_target):
    d = tls_target.d
    subs = d.rpc("nvmf_get_subsystems", {"nqn": SUB})[0]
    assert {"nqn": HOST256, "psk": tls_target.names[HOST256]} in subs["hosts"]
    keys = d.rpc("keyring_get_keys")
    assert {k["name"] for k in keys} >= set(tls_target.names.values())
    assert all(k["refcnt"] == 1 for k in keys)
    saved = d.rpc("save_config")
    kr = next(s for s in saved["subsystems"] if s["subsystem"] == "keyring")["config"]
    assert {e["params"]["name"] for e in kr} == set(tls_target.names.values())
    nv = next(s for s in saved["subsystems"] if s["subsystem"] == "nvmf")["config"]
    hosts = [e["params"] for e in nv if e["method"] == "nvmf_subsystem_add_host"]
    assert {"nqn": SUB, "host": HOST384, "psk": tls_target.names[HOST384]} in hosts
    lis = [e["params"] for e in nv if e["method"] == "nvmf_subsystem_add_listener"]
    assert sorted(x["secure_channel"] for x in lis) == [False, True]
    blob = json.dumps([subs, keys, saved]) + d.log()
    for host, psk in tls_target.keys.items():
        derived = derive(psk, host, SUB).key
        for secret in (psk.key, derived):
            assert secret.hex() not in blob and secret.hex().upper() not in blob
        assert psk.interchange().split(":")[2] not in blob
    # a key in use cannot be removed
    err = d.cli(
        "rpc", "-s", d.rpc_addr, "keyring_file_remove_key", tls_target.names[HOST256], check=False
    )
    assert err.returncode != 0 and "in use" in (err.stdout + err.stderr)


def test_secure_listener_rules(tls_target):
    d = tls_target.d
    from blockfabric.control.client import RpcClientError as RpcError

    d.rpc("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:any", "allow_any_host": True})
    la = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "0"}
    with pytest.raises(RpcError, match="allows any host"):
        d.rpc(
            "nvmf_subsystem_add_listener",
            {"nqn": "nqn.2016-06.io.spdk:any", "listen_address": la, "secure_channel": True},
        )
    # one address is TLS or plain for every subsystem
    la2 = {**la, "trsvcid": str(tls_target.secure)}
    with pytest.raises(RpcError, match="is a secure channel"):
        d.rpc(
            "nvmf_subsystem_add_listener", {"nqn": "nqn.2016-06.io.spdk:any", "listen_address": la2}
        )
    with pytest.raises(RpcError, match="does not exist"):
        d.rpc(
            "nvmf_subsystem_add_host", {"nqn": SUB, "host": "nqn.2014-08.org.x:h9", "psk": "nope"}
        )
    d.rpc("nvmf_delete_subsystem", {"nqn": "nqn.2016-06.io.spdk:any"})
    # and the other way round: no allow_any_host once a listener is secure
    with pytest.raises(RpcError, match="secure-channel listener"):
        d.rpc("nvmf_subsystem_allow_any_host", {"nqn": SUB, "allow_any_host": True})
    assert d.rpc("nvmf_get_subsystems", {"nqn": SUB})[0]["allow_any_host"] is False


def test_bdev_nvme_attach_controller_over_tls(tls_target, daemon_factory, run_dir):
    """A blockfabric imports the secured namespace (--psk KEYNAME) and serves it
    on: I/O through the initiator's reactor goes over TLS to the target."""
    from tls_fixtures import free_port, key_file

    ini = daemon_factory().start()
    path = key_file(run_dir, "host.key", tls_target.keys[HOST384])
    ini.cli("rpc", "-s", ini.rpc_addr, "keyring_file_add_key", "hk", path)
    wrong = key_file(run_dir, "wrong.key", TlsPsk(2, os.urandom(48)))
    ini.rpc("keyring_file_add_key", {"name": "wrong", "path": wrong})
    base = {
        "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
        "trsvcid": str(tls_target.secure), "subnqn": SUB, "hostnqn": HOST384,
    }  # fmt: skip
    from blockfabric.control.client import RpcClientError

    with pytest.raises(RpcClientError, match="TLS handshake failed"):
        ini.rpc("bdev_nvme_attach_controller", {"name": "Bad", **base, "psk": "wrong"})
    with pytest.raises(RpcClientError, match="does not exist"):
        ini.rpc("bdev_nvme_attach_controller", {"name": "Bad", **base, "psk": "nokey"})
    out = ini.cli(
        "rpc", "-s", ini.rpc_addr, "bdev_nvme_attach_controller", "-b", "Tls", "-t", "tcp",
        "-a", "127.0.0.1", "-s", str(tls_target.secure), "-f", "ipv4", "-n", SUB,
        "-q", HOST384, "--psk", "hk",
    ).stdout  # fmt: skip
    assert "Tlsn1" in out
    # serve it on in the clear from the initiator and drive I/O through it
    port = free_port()
    ini.rpc("nvmf_create_transport", {"trtype": "TCP"})
    ini.rpc("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:re", "allow_any_host": True})
    ini.rpc(
        "nvmf_subsystem_add_ns",
        {"nqn": "nqn.2016-06.io.spdk:re", "namespace": {"bdev_name": "Tlsn1"}},
    )
    la = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    ini.rpc("nvmf_subsystem_add_listener", {"nqn": "nqn.2016-06.io.spdk:re", "listen_address": la})
    with Controller(
        "127.0.0.1", port, "nqn.2016-06.io.spdk:re", nr_io_queues=1, timeout=15
    ).connect() as c:
        for lba, n in ((8, 8), (512, 256)):
            data = os.urandom(n * 512)
            c.write(1, lba, data, 512)
            assert c.read(1, lba, n, 512) == data
    saved = json.dumps(ini.rpc("save_config"))
    assert '"psk": "hk"' in saved and tls_target.keys[HOST384].key.hex() not in saved
    assert tls_target.keys[HOST384].interchange().split(":")[2] not in saved + ini.log()
    assert ini.rpc("keyring_get_keys", {"name": "hk"})[0]["refcnt"] == 1
    ini.rpc("bdev_nvme_detach_controller", {"name": "Tls"})
    assert ini.rpc("keyring_get_keys", {"name": "hk"})[0]["refcnt"] == 0


@pytest.mark.parametrize("host", [HOST256, HOST384])
def test_perf_psk_path(tls_target, run_dir, host):
    """blockfabric perf --psk-path (spdk_nvme_perf's option): a verified
    write/read run over TLS, workers in their own processes."""
    import subprocess
    import sys

    from tls_fixtures import key_file

    path = key_file(run_dir, "perf.key", tls_target.keys[host])
    out = run_dir / "perf.json"
    trid = (
        f"trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:{tls_target.secure} "
        f"subnqn:{SUB} hostnqn:{host}"
    )
    args = ["-r", trid, "-q", "8", "-o", "65536", "-w", "randrw", "-M", "50", "-t", "2"]
    p = subprocess.run(
        [sys.executable, "-m", "blockfabric.tools.cli", "perf", *args, "--verify",
         "--psk-path", path, "--json", str(out), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(out.read_text())
    assert doc["tls"] is True
    assert doc["total"]["ios"] > 0 and doc["total"]["errors"] == 0
    assert doc["total"]["miscompares"] == 0
    # without the key, the same run cannot connect
    p = subprocess.run(
        [sys.executable, "-m", "blockfabric.tools.cli", "perf", *args, "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode != 0


def test_discovery_marks_the_secure_listener(tls_target):
    from blockfabric.transports.nvmf import spec as S

    with Controller(
        "127.0.0.1", tls_target.plain, S.NVME_DISC_SUBSYS_NAME, hostnqn=NOKEY, timeout=15
    ).connect() as c:
        _gen, entries = c.discovery_log()
    mine = {int(e.trsvcid): e for e in entries if e.subnqn == SUB}
    assert mine[tls_target.secure].treq & 0x3 == S.TREQ_SECURE_REQUIRED
    assert mine[tls_target.plain].treq & 0x3 == 0


def test_garbage_and_silence_on_secure_listener_are_closed(tls_target):
    """Bytes that are not TLS get the connection closed at once; a client that
    says nothing is closed by the connect timeout (ICReq + Connect, 10 s)."""
    import socket

    with socket.create_connection(("127.0.0.1", tls_target.secure), timeout=30) as s:
        try:
            s.sendall(os.urandom(1 << 16))
        except OSError:
            pass  # closed while sending: fine
        got = b""
        try:
            while chunk := s.recv(65536):  # perhaps an alert, then the close
                got += chunk
                assert len(got) < 4096
        except ConnectionResetError:
            pass
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", tls_target.secure), timeout=30) as s:
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
    assert time.monotonic() - t0 < 25
    # the target still serves a good host afterwards
    with _ctrl(tls_target, HOST384, tls_target.keys[HOST384]).connect() as c:
        assert c.cntlid


def test_save_config_restart_reloads_keys(daemon_factory, run_dir):
    """save_config holds key names and paths; a target started from it reads
    the key files again and serves TLS with them."""
    from tls_fixtures import free_port, key_file

    psk = TlsPsk(2, os.urandom(48))
    d = daemon_factory().start()
    d.rpc("keyring_file_add_key", {"name": "k", "path": key_file(run_dir, "r.key", psk)})
    d.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 2048, "block_size": 512})
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": SUB})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": SUB, "namespace": {"bdev_name": "Malloc0"}})
    port = free_port()
    la = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    d.rpc("nvmf_subsystem_add_listener", {"nqn": SUB, "listen_address": la, "secure_channel": True})
    d.rpc("nvmf_subsystem_add_host", {"nqn": SUB, "host": HOST384, "psk": "k"})
    cfg = run_dir / "saved.json"
    cfg.write_text(json.dumps(d.rpc("save_config")))
    d.stop()
    assert psk.key.hex() not in cfg.read_text()
    d2 = daemon_factory(extra=["--json", str(cfg)]).start()
    assert d2.rpc("keyring_get_keys")[0]["name"] == "k"
    with Controller("127.0.0.1", port, SUB, hostnqn=HOST384, psk=psk, timeout=15).connect() as c:
        assert c.admin.sock.cipher == "TLS_AES_256_GCM_SHA384"
    with pytest.raises(TlsHandshakeError):
        Controller(
            "127.0.0.1", port, SUB, hostnqn=HOST384, psk=TlsPsk(2, os.urandom(48)), timeout=15
        ).connect()
