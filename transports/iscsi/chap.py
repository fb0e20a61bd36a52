"""CHAP authentication for iSCSI logins (RFC 1994 as profiled by RFC 7143
section 12.1.3): CHAP_A=5 (MD5) only, one-way and mutual."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass

CHAP_MD5 = "5"
CHALLENGE_LEN = 16
MAX_CHALLENGE_LEN = 1024


class AuthError(Exception):
    """Authentication failed: the login answers status 0x0201."""


@dataclass(frozen=True)
class ChapSecret:
    user: str
    secret: str
    muser: str = ""
    msecret: str = ""


def decode_binary(v: str) -> bytes:
    """RFC 7143 binary-value: 0x/0X hex or 0b/0B base64."""
    if len(v) > 2 and v[:2] in ("0x", "0X"):
        h = v[2:]
        if len(h) % 2:
            h = "0" + h
        try:
            return bytes.fromhex(h)
        except ValueError as e:
            raise AuthError(f"bad hex value {v[:32]!r}") from e
    if len(v) > 2 and v[:2] in ("0b", "0B"):
        try:
            return base64.b64decode(v[2:], validate=True)
        except (binascii.Error, ValueError) as e:
            raise AuthError(f"bad base64 value {v[:32]!r}") from e
    raise AuthError(f"binary value must start with 0x or 0b: {v[:32]!r}")


def encode_hex(b: bytes) -> str:
    return "0x" + b.hex()


def chap_response(ident: int, secret: bytes, challenge: bytes) -> bytes:
    return hashlib.md5(bytes([ident]) + secret + challenge).digest()


class ChapTarget:
    """Target side of one CHAP exchange.

    ``lookup(name)`` finds the secret for the CHAP_N the initiator sends (None
    when unknown). ``mutual`` makes mutual CHAP mandatory. ``step()`` takes the
    keys of one login request and returns the keys to answer; ``done`` becomes
    True when the initiator is authenticated.
    """

    def __init__(
        self,
        lookup: Callable[[str], ChapSecret | None],
        mutual: bool = False,
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.lookup = lookup
        self.mutual = mutual
        self.rand = rand
        self.state = "wait_a"
        self.ident = 0
        self.challenge = b""
        self.done = False
        self.user = ""

    def step(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        if self.state == "wait_a":
            a = keys.get("CHAP_A")
            if a is None:
                return []  # AuthMethod negotiated, CHAP starts in the next PDU
            if CHAP_MD5 not in [x.strip() for x in a.split(",")]:
                raise AuthError("initiator does not offer CHAP_A=5 (MD5)")
            self.ident = self.rand(1)[0]
            self.challenge = self.rand(CHALLENGE_LEN)
            self.state = "wait_r"
            return [
                ("CHAP_A", CHAP_MD5),
                ("CHAP_I", str(self.ident)),
                ("CHAP_C", encode_hex(self.challenge)),
            ]
        if self.state == "wait_r":
            name = keys.get("CHAP_N")
            resp = keys.get("CHAP_R")
            if name is None or resp is None:
                raise AuthError("CHAP_N and CHAP_R expected")
            sec = self.lookup(name)
            if sec is None:
                raise AuthError(f"no CHAP secret for user {name!r}")
            got = decode_binary(resp)
            want = chap_response(self.ident, sec.secret.encode(), self.challenge)
            if not hmac.compare_digest(got, want):
                raise AuthError(f"CHAP response of {name!r} does not match")
            self.user = name
            out: list[tuple[str, str]] = []
            ci, cc = keys.get("CHAP_I"), keys.get("CHAP_C")
            if ci is None and cc is None:
                if self.mutual:
                    raise AuthError("mutual CHAP required but the initiator sent no challenge")
            else:
                if ci is None or cc is None:
                    raise AuthError("mutual CHAP needs both CHAP_I and CHAP_C")
                if not ci.isdigit() or int(ci) > 255:
                    raise AuthError(f"bad CHAP_I {ci!r}")
                ichal = decode_binary(cc)
                if not 1 <= len(ichal) <= MAX_CHALLENGE_LEN:
                    raise AuthError("bad CHAP_C length")
                if ichal == self.challenge:
                    # a reflection attack: our own challenge sent back to us
                    raise AuthError("initiator reused the target's challenge")
                if not sec.muser or not sec.msecret:
                    raise AuthError("mutual CHAP requested but no mutual secret is configured")
                r = chap_response(int(ci), sec.msecret.encode(), ichal)
                out = [("CHAP_N", sec.muser), ("CHAP_R", encode_hex(r))]
            self.state = "done"
            self.done = True
            return out
        raise AuthError("CHAP already completed")
