"""TLS PSK identity and derivation, as the NVMe/TCP transport specification
(1.0c, 3.6.1.3 and 3.6.1.4) defines them and SPDK and Linux compute them.

From a configured PSK (the key of an ``NVMeTLSkey-1:HH:...:`` file):

* retained PSK: with HH 00 the configured PSK itself; with 01/02
  ``HKDF-Expand-Label(HKDF-Extract(0, PSK), "HostNQN", NQNh, L)`` with the
  hash HH names (SHA-256/SHA-384) and L its digest length;
* the cipher suite follows the configured PSK's length: 32 bytes
  TLS_AES_128_GCM_SHA256, 48 bytes TLS_AES_256_GCM_SHA384;
* PSK identity ``"NVMe0R<hh> <NQNh> <NQNc>"`` with hh 01 for the SHA-256
  suite, 02 for the SHA-384 one;
* TLS PSK: ``HKDF-Expand-Label(HKDF-Extract(0, retained), "nvme-tls-psk",
  identity, L)`` with the suite's hash.

HKDF-Expand-Label is RFC 8446's (label prefixed with "tls13 "); the HKDF
salt is empty. Pure functions over bytes: hashlib/hmac only.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

from ...control.keyring import TlsPsk

SUITE_SHA256 = "TLS_AES_128_GCM_SHA256"
SUITE_SHA384 = "TLS_AES_256_GCM_SHA384"
SUITES = (SUITE_SHA256, SUITE_SHA384)
# suite -> (hashlib name, digest length, identity hash field, TLS cipher id)
_SUITE = {
    SUITE_SHA256: ("sha256", 32, 1, b"\x13\x01"),
    SUITE_SHA384: ("sha384", 48, 2, b"\x13\x02"),
}
IDENTITY_PREFIX = "NVMe0R"


class PskError(ValueError):
    pass


def hkdf_extract(hash_name: str, salt: bytes, ikm: bytes) -> bytes:
    if not salt:
        salt = b"\0" * hashlib.new(hash_name).digest_size
    return hmac.new(salt, ikm, hash_name).digest()


def hkdf_expand(hash_name: str, prk: bytes, info: bytes, length: int) -> bytes:
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hash_name).digest()
        out += t
        i += 1
    return out[:length]


def hkdf_label(length: int, label: str, context: bytes) -> bytes:
    """RFC 8446 HkdfLabel: uint16 length, opaque label<7..255> ("tls13 " +
    label), opaque context<0..255>."""
    lab = b"tls13 " + label.encode()
    if len(lab) > 255 or len(context) > 255:
        raise PskError("HKDF label or context longer than 255 bytes")
    return struct.pack("!HB", length, len(lab)) + lab + bytes([len(context)]) + context


def expand_label(hash_name: str, secret: bytes, label: str, context: bytes, length: int) -> bytes:
    """HKDF(extract with empty salt, then expand) with an RFC 8446 label, as
    SPDK's nvme_tcp_derive_*_psk and Linux's nvme_auth do it. The length
    field of the label is the length of the input key (SPDK, Linux)."""
    prk = hkdf_extract(hash_name, b"", secret)
    return hkdf_expand(hash_name, prk, hkdf_label(len(secret), label, context), length)


def suite_for(psk: TlsPsk) -> str:
    if len(psk.key) == 32:
        return SUITE_SHA256
    if len(psk.key) == 48:
        return SUITE_SHA384
    raise PskError(f"a configured PSK is 32 or 48 bytes, not {len(psk.key)}")


def retained_psk(psk: TlsPsk, hostnqn: str) -> bytes:
    if psk.hash_name is None:
        return psk.key
    digest = hashlib.new(psk.hash_name).digest_size
    return expand_label(psk.hash_name, psk.key, "HostNQN", hostnqn.encode(), digest)


def psk_identity(suite: str, hostnqn: str, subnqn: str) -> str:
    return f"{IDENTITY_PREFIX}{_SUITE[suite][2]:02} {hostnqn} {subnqn}"


def parse_identity(identity: bytes) -> tuple[str, str, str]:
    """``NVMe0Rhh HOSTNQN SUBNQN`` -> (suite, hostnqn, subnqn); PskError otherwise."""
    try:
        text = identity.decode("utf-8")
    except UnicodeDecodeError:
        raise PskError("PSK identity is not UTF-8") from None
    parts = text.split(" ")
    if len(parts) != 3 or not parts[0].startswith(IDENTITY_PREFIX):
        raise PskError(f"not an NVMe/TCP PSK identity: {text[:64]!r}")
    hh = parts[0][len(IDENTITY_PREFIX) :]
    for suite, (_, _, code, _) in _SUITE.items():
        if hh == f"{code:02}":
            return suite, parts[1], parts[2]
    raise PskError(f"PSK identity hash {hh!r} is not 01 or 02")


def tls_psk(retained: bytes, identity: str, suite: str) -> bytes:
    hash_name, length, _, _ = _SUITE[suite]
    return expand_label(hash_name, retained, "nvme-tls-psk", identity.encode(), length)


def cipher_id(suite: str) -> bytes:
    return _SUITE[suite][3]


@dataclass(frozen=True)
class PskEntry:
    """What a TLS handshake needs for one (host, subsystem): the identity, the
    suite and the TLS PSK (the derived key, never the configured one)."""

    identity: str
    suite: str
    key: bytes = field(repr=False)


def derive(psk: TlsPsk, hostnqn: str, subnqn: str) -> PskEntry:
    """The TLS PSK and identity for ``hostnqn`` talking to ``subnqn``."""
    suite = suite_for(psk)
    ident = psk_identity(suite, hostnqn, subnqn)
    return PskEntry(ident, suite, tls_psk(retained_psk(psk, hostnqn), ident, suite))
