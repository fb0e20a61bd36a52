"""The TLS record layer and the PSK derivation, sans-I/O (issue 11 item 2):
HKDF checked against OpenSSL's own (``openssl kdf``), the identity format,
and engine-to-engine handshakes for every key variant, wrong and unknown
keys, non-TLS input and corrupted records."""

from __future__ import annotations

import os
import shutil
import subprocess

import bftest
import pytest

from blockfabric.control.keyring import TlsPsk
from blockfabric.transports.tls import psk as P
from blockfabric.transports.tls.engine import TlsEngine, TlsError

HOST = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001"
SUB = "nqn.2016-06.io.spdk:cnode1"


def _openssl_hkdf(hash_name: str, key: bytes, info: bytes, n: int) -> bytes:
    exe = shutil.which("openssl")
    if exe is None:
        bftest.missing_tool("openssl (the command) is not installed")
    out = subprocess.run(
        [
            exe, "kdf", "-keylen", str(n), "-kdfopt", f"digest:{hash_name.upper()}",
            "-kdfopt", f"hexkey:{key.hex()}", "-kdfopt", f"hexinfo:{info.hex()}", "HKDF",
        ],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return bytes.fromhex(out.strip().replace(":", ""))


@pytest.mark.parametrize("hash_id, n", [(1, 32), (2, 48)])
def test_derivation_matches_openssl_hkdf(hash_id, n):
    psk = TlsPsk(hash_id, os.urandom(n))
    h = psk.hash_name
    assert h is not None
    # retained PSK: HKDF(PSK, info = HkdfLabel(len, "tls13 HostNQN", hostnqn))
    info = P.hkdf_label(n, "HostNQN", HOST.encode())
    assert info[:2] == n.to_bytes(2, "big") and info[3:16] == b"tls13 HostNQN"
    retained = _openssl_hkdf(h, psk.key, info, n)
    assert P.retained_psk(psk, HOST) == retained
    e = P.derive(psk, HOST, SUB)
    suite_hash = "sha256" if n == 32 else "sha384"
    assert e.identity == f"NVMe0R0{1 if n == 32 else 2} {HOST} {SUB}"
    info2 = P.hkdf_label(len(retained), "nvme-tls-psk", e.identity.encode())
    assert e.key == _openssl_hkdf(suite_hash, retained, info2, n)


def test_no_hash_key_is_its_own_retained_psk():
    psk = TlsPsk(0, os.urandom(48))
    assert P.retained_psk(psk, HOST) == psk.key
    assert P.derive(psk, HOST, SUB).suite == P.SUITE_SHA384
    assert P.derive(TlsPsk(0, os.urandom(32)), HOST, SUB).suite == P.SUITE_SHA256


def test_identity_parser():
    assert P.parse_identity(f"NVMe0R02 {HOST} {SUB}".encode()) == (P.SUITE_SHA384, HOST, SUB)
    for bad in (b"NVMe0R03 a b", b"NVMe0R01 a", b"hello a b", b"\xff\xfe"):
        with pytest.raises(P.PskError):
            P.parse_identity(bad)


def _pump(a: TlsEngine, b: TlsEngine, rounds: int = 6) -> None:
    for _ in range(rounds):
        a.handshake()
        b.feed(a.take_output())
        b.handshake()
        a.feed(b.take_output())
        if a.done and b.done:
            return


def _pair(psk: TlsPsk, served: TlsPsk | None = None) -> tuple[TlsEngine, TlsEngine]:
    mine = P.derive(psk, HOST, SUB)
    theirs = P.derive(served, HOST, SUB) if served is not None else mine
    srv = TlsEngine(True, lookup=lambda i: theirs if i.decode() == theirs.identity else None)
    cli = TlsEngine(False, entry=mine)
    return srv, cli


@pytest.mark.parametrize("hash_id, n", [(1, 32), (2, 48), (0, 32), (0, 48)])
def test_handshake_and_records(hash_id, n):
    srv, cli = _pair(TlsPsk(hash_id, os.urandom(n)))
    _pump(cli, srv)
    assert cli.done and srv.done
    assert cli.cipher == srv.cipher == (P.SUITE_SHA256 if n == 32 else P.SUITE_SHA384)
    assert srv.identity == f"NVMe0R0{1 if n == 32 else 2} {HOST} {SUB}"
    payload = [os.urandom(24), os.urandom(128 << 10), os.urandom(4)]
    assert cli.write(payload) == sum(map(len, payload))
    ct = cli.take_output()
    assert len(ct) > (128 << 10) and b"".join(payload)[:4096] not in ct
    srv.feed(ct)
    got = bytearray()
    buf = bytearray(5000)  # smaller than a record: read in pieces
    while (k := srv.read_into(memoryview(buf))) > 0:
        got += buf[:k]
    assert bytes(got) == b"".join(payload)
    assert srv.read_into(memoryview(buf)) == 0  # nothing more: wants input


def test_wrong_key_and_unknown_identity_fail():
    srv, cli = _pair(TlsPsk(1, os.urandom(32)), served=TlsPsk(1, os.urandom(32)))
    with pytest.raises(TlsError, match="binder"):
        _pump(cli, srv)
    srv = TlsEngine(True, lookup=lambda i: None)
    cli = TlsEngine(False, entry=P.derive(TlsPsk(2, os.urandom(48)), HOST, SUB))
    with pytest.raises(TlsError, match="no PSK for identity"):
        _pump(cli, srv)


def test_plain_nvme_tcp_bytes_are_not_tls():
    srv = TlsEngine(True, lookup=lambda i: None)
    icreq = bytes([0, 0, 128, 0, 128, 0, 0, 0]).ljust(128, b"\0")
    srv.feed(icreq)
    with pytest.raises(TlsError):
        srv.handshake()


def test_corrupted_record_is_an_error():
    srv, cli = _pair(TlsPsk(1, os.urandom(32)))
    _pump(cli, srv)
    cli.write([b"x" * 1000])
    ct = bytearray(cli.take_output())
    ct[-5] ^= 1  # flip a bit in the tag
    srv.feed(ct)
    with pytest.raises(TlsError):
        srv.read_into(memoryview(bytearray(2000)))


def test_engine_arguments():
    with pytest.raises(ValueError):
        TlsEngine(True)
    with pytest.raises(ValueError):
        TlsEngine(False)
