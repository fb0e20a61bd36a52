"""CHAP (MD5) target side: one-way and mutual, encodings, failures."""

from __future__ import annotations

import base64

import pytest

from blockfabric.transports.iscsi.chap import AuthError, ChapSecret, ChapTarget, decode_binary

SECRETS = {"alice": ChapSecret("alice", "secret", "tgt", "msecret")}
# MD5(id=1 || "secret" || 00..0f), computed once as a regression vector
VEC_1 = "740e86463bda3a4d7017d6e0fba0699d"
# MD5(id=7 || "msecret" || 100..119)
VEC_M = "2fa42fac8fb47bb3729547f7512a67a3"


def _rand(n: int) -> bytes:
    return bytes([1]) if n == 1 else bytes(range(n))


def _chap(mutual: bool = False) -> ChapTarget:
    c = ChapTarget(SECRETS.get, mutual=mutual, rand=_rand)
    out = c.step({"CHAP_A": "7,5"})
    assert out == [("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x" + bytes(range(16)).hex())]
    return c


def test_one_way_hex() -> None:
    c = _chap()
    assert c.step({"CHAP_N": "alice", "CHAP_R": "0x" + VEC_1}) == []
    assert c.done and c.user == "alice"


def test_one_way_base64_and_upper_prefix() -> None:
    c = _chap()
    c.step({"CHAP_N": "alice", "CHAP_R": "0b" + base64.b64encode(bytes.fromhex(VEC_1)).decode()})
    assert c.done
    c = _chap()
    c.step({"CHAP_N": "alice", "CHAP_R": "0X" + VEC_1.upper()})
    assert c.done


def test_wrong_response_and_unknown_user() -> None:
    with pytest.raises(AuthError):
        _chap().step({"CHAP_N": "alice", "CHAP_R": "0x" + "00" * 16})
    with pytest.raises(AuthError):
        _chap().step({"CHAP_N": "bob", "CHAP_R": "0x" + VEC_1})
    with pytest.raises(AuthError):
        _chap().step({"CHAP_N": "alice", "CHAP_R": VEC_1})  # no 0x


def test_md5_not_offered() -> None:
    with pytest.raises(AuthError):
        ChapTarget(SECRETS.get).step({"CHAP_A": "6,7"})


def test_mutual() -> None:
    c = _chap(mutual=True)
    out = c.step(
        {
            "CHAP_N": "alice",
            "CHAP_R": "0x" + VEC_1,
            "CHAP_I": "7",
            "CHAP_C": "0x" + bytes(range(100, 120)).hex(),
        }
    )
    assert out == [("CHAP_N", "tgt"), ("CHAP_R", "0x" + VEC_M)]


def test_mutual_required_but_missing() -> None:
    with pytest.raises(AuthError, match="mutual"):
        _chap(mutual=True).step({"CHAP_N": "alice", "CHAP_R": "0x" + VEC_1})


def test_mutual_reflected_challenge_refused() -> None:
    with pytest.raises(AuthError, match="reused"):
        _chap().step(
            {
                "CHAP_N": "alice",
                "CHAP_R": "0x" + VEC_1,
                "CHAP_I": "1",
                "CHAP_C": "0x" + bytes(range(16)).hex(),
            }
        )


def test_mutual_bad_identifier() -> None:
    with pytest.raises(AuthError):
        _chap().step(
            {"CHAP_N": "alice", "CHAP_R": "0x" + VEC_1, "CHAP_I": "300", "CHAP_C": "0x0102"}
        )


def test_real_random_challenge_is_16_bytes() -> None:
    c = ChapTarget(SECRETS.get)
    out = dict(c.step({"CHAP_A": "5"}))
    assert len(decode_binary(out["CHAP_C"])) >= 16
    assert 0 <= int(out["CHAP_I"]) <= 255
