"""OpenSSL's own ``openssl s_client`` (a TLS implementation nobody here wrote)
completes a TLS 1.3 PSK handshake with a secure listener given the derived
PSK and identity, then carries an ICReq and gets the ICResp (issue 11 item
5); with a wrong PSK the target refuses it."""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
import time

import bftest
import pytest
from tls_fixtures import HOST256, HOST384, SUB

from blockfabric.control.keyring import TlsPsk
from blockfabric.transports.tls.psk import PskEntry, derive

pytestmark = [pytest.mark.e2e, pytest.mark.interop]

# ICReq: type 0, flags 0, hlen 128, pdo 0, plen 128; PFV 0, HPDA 0, no digests, MAXR2T 0
ICREQ = struct.pack("<BBBBIHBBI", 0, 0, 128, 0, 128, 0, 0, 0, 0).ljust(128, b"\0")
ICRESP_HDR = struct.pack("<BBBBI", 1, 0, 128, 0, 128)


def _session_pem(path: str, key: bytes, suite: str) -> None:
    """A PEM SSL_SESSION carrying the PSK and its suite, for s_client's
    -psk_session: its -psk always binds the PSK to SHA-256, so the SHA-384
    suite needs the session form (apps/s_client.c psk_use_session_cb)."""
    from blockfabric.transports.tls import engine, openssl

    lb = openssl.lib()
    lb.PEM_write_bio_SSL_SESSION.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lb.BIO_new_file.restype = ctypes.c_void_p
    lb.BIO_new_file.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    ssl = lb.SSL_new(engine._ctx(False))
    sess = engine._session(ssl, PskEntry("x", suite, key))
    bio = lb.BIO_new_file(path.encode(), b"w")
    assert sess and bio and lb.PEM_write_bio_SSL_SESSION(bio, sess) == 1
    lb.BIO_free(bio)
    lb.SSL_SESSION_free(sess)
    lb.SSL_free(ssl)


def _s_client(
    port: int, identity: str, key: bytes, suite: str, tmp: str
) -> tuple[int, bytes, bytes]:
    exe = shutil.which("openssl")
    if exe is None:
        bftest.missing_tool("openssl (the command) is not installed")
    if suite == "TLS_AES_128_GCM_SHA256":
        psk = ["-psk", key.hex()]
    else:
        pem = os.path.join(tmp, "psk-session.pem")
        _session_pem(pem, key, suite)
        psk = ["-psk_session", pem]
    p = subprocess.Popen(
        [
            exe, "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
            "-psk_identity", identity, *psk, "-ciphersuites", suite,
            "-ign_eof", "-msg",
        ],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert p.stdin is not None
    try:
        time.sleep(2.0)  # the handshake; then the ICReq as application data
        p.stdin.write(ICREQ)
        p.stdin.flush()
        time.sleep(3.0)  # generous: the CI machine is loaded
    except BrokenPipeError:
        pass  # s_client already gave up (refused handshake)
    finally:
        p.terminate()
        try:
            out, err = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
    return p.returncode, out, err


@pytest.mark.parametrize(
    "host, suite",
    [(HOST256, "TLS_AES_128_GCM_SHA256"), (HOST384, "TLS_AES_256_GCM_SHA384")],
)
def test_s_client_handshake_and_icreq(tls_target, host, suite, tmp_path):
    e = derive(tls_target.keys[host], host, SUB)
    assert e.suite == suite
    _rc, out, err = _s_client(tls_target.secure, e.identity, e.key, suite, str(tmp_path))
    text = out.decode("latin-1")
    assert "TLSv1.3" in text and suite in text, (text[-2000:], err[-2000:])
    assert ICRESP_HDR in out, text[-2000:]  # the ICResp came back through TLS


def test_s_client_wrong_psk_refused(tls_target, tmp_path):
    e = derive(TlsPsk(1, os.urandom(32)), HOST256, SUB)
    _rc, out, err = _s_client(tls_target.secure, e.identity, e.key, e.suite, str(tmp_path))
    assert ICRESP_HDR not in out
    assert b"alert" in (out + err).lower() or b"error" in (out + err).lower()
