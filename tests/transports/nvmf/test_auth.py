"""DH-HMAC-CHAP (issue 11 item 3): the codec, the cryptography and the two
sans-I/O state machines (controller: transports/nvmf/auth.py, host:
transports/nvmf/auth_host.py) run against each other in memory, plus the
RFC 7919 primes against OpenSSL's own named groups."""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockfabric.control.keyring import DhchapSecret, format_interchange, parse_dhchap_secret
from blockfabric.transports.nvmf import auth_msg as M
from blockfabric.transports.nvmf.auth import TargetAuth, dhgroup_ids, digest_ids
from blockfabric.transports.nvmf.auth_crypto import (
    DHGROUP_IDS,
    DhKey,
    augmented_challenge,
    chap_response,
    ffdhe_prime,
    transform_secret,
)
from blockfabric.transports.nvmf.auth_host import AuthFailed, HostAuth

HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:0c8e1d6a-3f5e-4c1b-9d0a-7b2e5f4a1c3d"
SUBNQN = "nqn.2016-06.io.spdk:cnode1"


def secret(hh: int = 1, n: int = 32, seed: int = 1) -> DhchapSecret:
    return DhchapSecret(hh, bytes((seed * 7 + i) & 0xFF for i in range(n)))


class Seq:
    n = 100

    def __call__(self) -> int:
        self.n += 1
        return self.n


def target_for(
    key: DhchapSecret | None,
    ckey: DhchapSecret | None = None,
    digests: list[str] | None = None,
    dhgroups: list[str] | None = None,
) -> TargetAuth:
    return TargetAuth(
        HOSTNQN,
        SUBNQN,
        lambda: (key, ckey),
        digest_ids(digests or ["sha256", "sha384", "sha512"]),
        dhgroup_ids(dhgroups or list(DHGROUP_IDS)),
        Seq(),
    )


def run(t: TargetAuth, h: HostAuth) -> None:
    """Drive a transaction like the queue layer does (Send / Receive)."""
    step = h.start()
    while step is not None:
        kind, arg = step
        if kind == "send":
            assert isinstance(arg, bytes)
            t.send(arg)
            step = h.feed(None)
        else:
            assert isinstance(arg, int)
            step = h.feed(t.recv(arg))


@pytest.mark.parametrize(
    "digest,dhgroup,bidi",
    list(
        itertools.product(
            ["sha256", "sha384", "sha512"], ["null", "ffdhe2048", "ffdhe3072"], [False, True]
        )
    ),
)
def test_matrix_in_memory(digest: str, dhgroup: str, bidi: bool) -> None:
    key, ckey = secret(1, 32, 1), secret(2, 48, 2)
    t = target_for(key, ckey, [digest], [dhgroup])
    h = HostAuth(HOSTNQN, SUBNQN, key, ckey if bidi else None, tid=7)
    run(t, h)
    assert h.done and t.authenticated
    assert (h.digest, h.dhgroup_name) == (digest, dhgroup)
    assert t.describe() == {"state": "completed", "digest": digest, "dhgroup": dhgroup}


def test_strongest_common_choice() -> None:
    key = secret()
    t = target_for(key)
    h = HostAuth(HOSTNQN, SUBNQN, key, digests=["sha256", "sha384"], dhgroups=["null", "ffdhe2048"])
    run(t, h)
    assert (h.digest, h.dhgroup_name) == ("sha384", "ffdhe2048")


@pytest.mark.parametrize("dhgroup", ["null", "ffdhe2048"])
def test_wrong_secret_failure1_failed(dhgroup: str) -> None:
    t = target_for(secret(seed=1), dhgroups=[dhgroup])
    h = HostAuth(HOSTNQN, SUBNQN, secret(seed=9))
    with pytest.raises(AuthFailed) as ei:
        run(t, h)
    assert ei.value.rce == M.RCE_FAILED and ei.value.by_controller
    assert not t.authenticated


def test_wrong_host_nqn_in_transform() -> None:
    # the same secret, transformed with another NQN, is another key
    key = secret(hh=3, n=64)
    t = target_for(key)
    h = HostAuth(HOSTNQN + "x", SUBNQN, key)
    with pytest.raises(AuthFailed):
        run(t, h)


def test_wrong_controller_secret_host_refuses() -> None:
    key = secret()
    t = target_for(key, secret(2, 48, 5))
    h = HostAuth(HOSTNQN, SUBNQN, key, secret(2, 48, 6))
    with pytest.raises(AuthFailed) as ei:
        run(t, h)
    assert not ei.value.by_controller and ei.value.rce == M.RCE_FAILED
    assert not t.authenticated


def test_bidirectional_without_controller_key_refused() -> None:
    key = secret()
    t = target_for(key, None)
    h = HostAuth(HOSTNQN, SUBNQN, key, secret(2, 48, 5))
    with pytest.raises(AuthFailed) as ei:
        run(t, h)
    assert ei.value.rce == M.RCE_FAILED


def test_no_common_hash_or_group() -> None:
    key = secret()
    with pytest.raises(AuthFailed) as ei:
        run(target_for(key, digests=["sha512"]), HostAuth(HOSTNQN, SUBNQN, key, digests=["sha256"]))
    assert ei.value.rce == M.RCE_HASH_UNUSABLE
    with pytest.raises(AuthFailed) as ei:
        run(
            target_for(key, dhgroups=["ffdhe8192"]),
            HostAuth(HOSTNQN, SUBNQN, key, dhgroups=["null"]),
        )
    assert ei.value.rce == M.RCE_DHGROUP_UNUSABLE


def test_reauth_and_rotation() -> None:
    keys = {"k": secret(seed=1)}
    t = TargetAuth(
        HOSTNQN,
        SUBNQN,
        lambda: (keys["k"], None),
        digest_ids(["sha256"]),
        dhgroup_ids(["null"]),
        Seq(),
    )
    run(t, HostAuth(HOSTNQN, SUBNQN, secret(seed=1), tid=1))
    assert t.authenticated
    keys["k"] = secret(seed=2)  # rotation: the next transaction uses the new key
    with pytest.raises(AuthFailed):
        run(t, HostAuth(HOSTNQN, SUBNQN, secret(seed=1), tid=2))
    assert not t.authenticated  # a failed re-authentication revokes
    run(t, HostAuth(HOSTNQN, SUBNQN, secret(seed=2), tid=3))
    assert t.authenticated and t.transactions == 2


def test_out_of_order_and_garbage() -> None:
    t = target_for(secret())
    # a Reply before any Negotiate: the next Receive says Failure1 / incorrect message
    t.send(M.encode_reply(M.Reply(0, bytes(32), None, 0, b"")))
    out = t.recv(4096)
    assert out[1] == M.MSG_FAILURE1 and out[7] == M.RCE_INCORRECT_MESSAGE
    for junk in (
        b"",
        b"\x00",
        bytes(8),
        b"\x00\x00\x00\x00\x05\x00\x00\x07" + bytes(64),
        os.urandom(200),
    ):
        t = target_for(secret())
        t.send(junk)
        out = t.recv(4096)
        assert out[1] == M.MSG_FAILURE1 and out[7] in (
            M.RCE_INCORRECT_PAYLOAD,
            M.RCE_INCORRECT_MESSAGE,
            M.RCE_NOT_USABLE,
        )
    # a short AUTH_Failure2 while waiting for Success2 (6 of its 8 bytes)
    key = secret()
    t = target_for(key, secret(2, 48))
    h = HostAuth(HOSTNQN, SUBNQN, key, secret(2, 48))
    step = h.start()
    while step is not None and h.state != "success1":
        kind, arg = step
        if kind == "send":
            assert isinstance(arg, bytes)
            t.send(arg)
            step = h.feed(None)
        else:
            assert isinstance(arg, int)
            step = h.feed(t.recv(arg))
    t.recv(4096)  # Success1 with the controller's response: now it waits for Success2
    assert t.state == "success2"
    t.send(M.encode_failure(M.MSG_FAILURE2, h.tid, 1)[:6])
    out = t.recv(4096)
    assert out[1] == M.MSG_FAILURE1 and out[7] == M.RCE_INCORRECT_PAYLOAD
    # a Receive too small for the challenge: Failure1 incorrect payload
    t = target_for(secret())
    t.send(M.encode_negotiate(1, [1], [0]))
    out = t.recv(20)
    assert out[1] == M.MSG_FAILURE1 and out[7] == M.RCE_INCORRECT_PAYLOAD


def test_reply_with_bad_dh_value() -> None:
    key = secret()
    t = target_for(key, dhgroups=["ffdhe2048"])
    for dhv in (b"\x00" * 256, b"\x01" * 255, (ffdhe_prime(1) - 1).to_bytes(256, "big"), b""):
        t.send(M.encode_negotiate(1, [1], [1]))
        c = M.decode_challenge(t.recv(4096))
        assert c.dhgroup == 1 and len(c.dhv) == 256
        t.send(M.encode_reply(M.Reply(1, bytes(32), None, 0, dhv)))
        out = t.recv(4096)
        assert out[1] == M.MSG_FAILURE1 and out[7] == M.RCE_INCORRECT_PAYLOAD


def test_codec_layouts() -> None:
    n = M.encode_negotiate(0x1234, [1, 2, 3], [0, 1, 2, 3, 4, 5])
    assert len(n) == 8 + 64 and n[:8] == bytes([0, 0, 0, 0, 0x34, 0x12, 0, 1])
    assert (
        n[8:12] == bytes([1, 0, 3, 6])
        and n[12:15] == bytes([1, 2, 3])
        and n[42:48] == bytes(range(6))
    )
    c = M.encode_challenge(M.Challenge(5, 3, 1, 0xAABBCCDD, b"\x11" * 64, b"\x22" * 256))
    assert (
        c[:16] == bytes([1, 1, 0, 0, 5, 0, 64, 0, 3, 1, 0, 1, 0xDD, 0xCC, 0xBB, 0xAA])
        and len(c) == 16 + 64 + 256
    )
    r = M.encode_reply(M.Reply(5, b"\x33" * 32, b"\x44" * 32, 9, b""))
    assert r[:16] == bytes([1, 2, 0, 0, 5, 0, 32, 0, 1, 0, 0, 0, 9, 0, 0, 0]) and len(r) == 16 + 64
    assert len(M.encode_success1(5, 48, None)) == 16 and M.encode_success1(5, 48, None)[6] == 48
    assert M.encode_failure(M.MSG_FAILURE1, 5, 1) == bytes([0, 0xF1, 0, 0, 5, 0, 1, 1])
    assert len(M.encode_success2(5)) == 16


def test_transform_and_response_definitions() -> None:
    """The transformed secret and the response as the specification defines
    them, written out independently of auth_crypto's helpers."""
    import hashlib
    import hmac

    s = parse_dhchap_secret(format_interchange("DHHC-1", 2, bytes(range(48))))
    tk = transform_secret(s, HOSTNQN)
    assert (
        tk
        == hmac.new(
            bytes(range(48)), HOSTNQN.encode() + b"NVMe-over-Fabrics", hashlib.sha384
        ).digest()
    )
    assert transform_secret(DhchapSecret(0, b"k" * 32), HOSTNQN) == b"k" * 32
    c = bytes(range(48))
    want = hmac.new(
        tk,
        c
        + (7).to_bytes(4, "little")
        + (3).to_bytes(2, "little")
        + b"\0"
        + b"HostHost"
        + HOSTNQN.encode()
        + b"\0"
        + SUBNQN.encode(),
        hashlib.sha384,
    ).digest()
    assert chap_response(s, 2, c, 7, 3, 0, b"HostHost", HOSTNQN, SUBNQN) == want
    z = b"\x05" * 256
    aug = hmac.new(hashlib.sha384(z).digest(), c, hashlib.sha384).digest()
    assert augmented_challenge(2, c, z) == aug


def test_dh_shared_secret_agrees() -> None:
    for g in (1, 2):
        a, b = DhKey(g), DhKey(g)
        assert a.shared(b.public) == b.shared(a.public)
        assert len(a.public) == len(a.shared(b.public)) == {1: 256, 2: 384}[g]


def test_rfc7919_primes_match_openssl() -> None:
    """The primes computed from RFC 7919's definition are OpenSSL's named groups."""
    name = ctypes.util.find_library("crypto")
    if name is None:
        pytest.fail("libcrypto not found (OpenSSL is a dependency of `cryptography`)")
    lib = ctypes.CDLL(name)
    lib.DH_new_by_nid.restype = ctypes.c_void_p
    lib.DH_get0_p.restype = ctypes.c_void_p
    lib.DH_get0_p.argtypes = [ctypes.c_void_p]
    lib.DH_free.argtypes = [ctypes.c_void_p]
    lib.BN_bn2hex.restype = ctypes.c_void_p
    lib.BN_bn2hex.argtypes = [ctypes.c_void_p]
    lib.OBJ_sn2nid.argtypes = [ctypes.c_char_p]
    lib.CRYPTO_free.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    for gid, bits in ((1, 2048), (2, 3072), (3, 4096), (4, 6144), (5, 8192)):
        dh = lib.DH_new_by_nid(lib.OBJ_sn2nid(f"ffdhe{bits}".encode()))
        assert dh
        hx = lib.BN_bn2hex(lib.DH_get0_p(dh))
        p = int(ctypes.string_at(hx).decode(), 16)
        lib.CRYPTO_free(hx, b"", 0)
        lib.DH_free(dh)
        assert p == ffdhe_prime(gid) and p.bit_length() == bits


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=4), st.integers(0, 5000))
def test_target_never_crashes(payloads: list[bytes], al: int) -> None:
    """Any sequence of Authentication Send payloads, then a Receive: the
    controller answers a well-formed message (or Failure1), never raises."""
    t = target_for(secret(), secret(2, 48), dhgroups=["null"])
    for p in payloads:
        t.send(p)
        out = t.recv(max(al, 8))
        assert len(out) >= 8 and out[0] in (M.AUTH_TYPE_COMMON, M.AUTH_TYPE_DHCHAP)
    assert not t.authenticated


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_host_never_crashes(junk: bytes) -> None:
    """A host fed any controller message fails cleanly (AuthFailed) or goes on."""
    h = HostAuth(HOSTNQN, SUBNQN, secret(), secret(2, 48), dhgroups=["null"])
    h.start()
    h.feed(None)
    try:
        step = h.feed(junk)
        if step is not None and step[0] == "send":
            h.feed(None)
    except AuthFailed:
        pass
