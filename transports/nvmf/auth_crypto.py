"""DH-HMAC-CHAP cryptography (NVMe base specification 2.0, 8.13.5): hash
functions by identifier, the transformed secret, the augmented challenge,
the response / controller response HMACs, and the finite-field DH groups of
RFC 7919 through `cryptography` (OpenSSL).

Pure functions on bytes; no I/O. The RFC 7919 primes are not typed in: they
are computed from the RFC's own definition (p = 2^b - 2^(b-64) +
{[2^(b-130) e] + X} * 2^64 - 1 with the RFC's X per group), and
tests/transports/nvmf/test_auth.py checks them against OpenSSL's named groups.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import warnings
from functools import cache

from ...control.keyring import DhchapSecret

# hash identifiers (HashID list of the DH-HMAC-CHAP protocol descriptor)
HASH_SHA256 = 0x01
HASH_SHA384 = 0x02
HASH_SHA512 = 0x03
HASHES: dict[int, str] = {HASH_SHA256: "sha256", HASH_SHA384: "sha384", HASH_SHA512: "sha512"}
HASH_IDS: dict[str, int] = {v: k for k, v in HASHES.items()}

# Diffie-Hellman group identifiers
DH_NULL = 0x00
DHGROUPS: dict[int, str] = {
    0x00: "null",
    0x01: "ffdhe2048",
    0x02: "ffdhe3072",
    0x03: "ffdhe4096",
    0x04: "ffdhe6144",
    0x05: "ffdhe8192",
}
DHGROUP_IDS: dict[str, int] = {v: k for k, v in DHGROUPS.items()}

# RFC 7919 appendix A: the X of each group
_RFC7919_X = {2048: 560316, 3072: 2625351, 4096: 5736041, 6144: 15705020, 8192: 10965728}
_DH_BITS = {1: 2048, 2: 3072, 3: 4096, 4: 6144, 5: 8192}


def hash_len(hash_id: int) -> int:
    name = HASHES.get(hash_id)
    if name is None:
        raise ValueError(f"unknown DH-HMAC-CHAP hash id {hash_id:#x}")
    return hashlib.new(name).digest_size


def _floor_e_scaled(k: int) -> int:
    """floor(2^k * e), exactly (integer series sum 1/n!)."""
    prec = k + 64
    acc, term, n = 0, 1 << prec, 0
    while term:
        acc += term
        n += 1
        term //= n
    return acc >> (prec - k)


@cache
def ffdhe_prime(dhgroup: int) -> int:
    """The prime p of an RFC 7919 group (generator 2)."""
    b = _DH_BITS.get(dhgroup)
    if b is None:
        raise ValueError(f"unknown DH group id {dhgroup:#x}")
    return 2**b - 2 ** (b - 64) + (_floor_e_scaled(b - 130) + _RFC7919_X[b]) * 2**64 - 1


def dh_value_len(dhgroup: int) -> int:
    return 0 if dhgroup == DH_NULL else _DH_BITS[dhgroup] // 8


def transform_secret(secret: DhchapSecret, nqn: str) -> bytes:
    """The transformed secret (8.13.5.7): HMAC(hash HH, key, NQN ||
    "NVMe-over-Fabrics"); with HH 0 the key itself."""
    if secret.hash_id == 0:
        return secret.secret
    name = HASHES.get(secret.hash_id)
    if name is None:
        raise ValueError(f"unknown secret transformation hash {secret.hash_id:#x}")
    return hmac.new(secret.secret, nqn.encode() + b"NVMe-over-Fabrics", name).digest()


def augmented_challenge(hash_id: int, challenge: bytes, session_key: bytes) -> bytes:
    """Ca = HMAC(H(g^xy mod p), C) (8.13.5.5); without DH the challenge itself."""
    if not session_key:
        return challenge
    name = HASHES[hash_id]
    return hmac.new(hashlib.new(name, session_key).digest(), challenge, name).digest()


def chap_response(
    secret: DhchapSecret,
    hash_id: int,
    challenge: bytes,
    seqnum: int,
    tid: int,
    scc: int,
    label: bytes,
    nqn1: str,
    nqn2: str,
    session_key: bytes = b"",
) -> bytes:
    """R = HMAC(Kx, Ca || S || T_ID || SC_C || label || NQN1 || 00h || NQN2):
    the host's response (label "HostHost", NQN1 the host's, the secret
    transformed with the host NQN) or the controller's (label "Controller",
    NQN1 the subsystem's, its secret transformed with the subsystem NQN)."""
    name = HASHES[hash_id]
    key = transform_secret(secret, nqn1)
    ca = augmented_challenge(hash_id, challenge, session_key)
    m = hmac.new(key, ca, name)
    m.update(seqnum.to_bytes(4, "little"))
    m.update(tid.to_bytes(2, "little"))
    m.update(bytes((scc,)))
    m.update(label)
    m.update(nqn1.encode())
    m.update(b"\0")
    m.update(nqn2.encode())
    return m.digest()


def random_bytes(n: int) -> bytes:
    return secrets.token_bytes(n)


class DhKey:
    """An ephemeral DH key of an RFC 7919 group (`cryptography`, OpenSSL)."""

    def __init__(self, dhgroup: int) -> None:
        from cryptography.hazmat.primitives.asymmetric import dh

        self.dhgroup = dhgroup
        self.p = ffdhe_prime(dhgroup)
        self.size = dh_value_len(dhgroup)
        with warnings.catch_warnings():
            # cryptography >= 46 marks finite-field DH deprecated; NVMe's
            # DH-HMAC-CHAP defines only these groups
            warnings.simplefilter("ignore")
            self._params = dh.DHParameterNumbers(self.p, 2).parameters()
            self._key = self._params.generate_private_key()
        y = self._key.public_key().public_numbers().y
        self.public = y.to_bytes(self.size, "big")

    def shared(self, peer: bytes) -> bytes:
        """g^xy mod p, big-endian, padded to the group size. Raises ValueError
        for a peer value of the wrong size or outside 2..p-2."""
        from cryptography.hazmat.primitives.asymmetric import dh

        if len(peer) != self.size:
            raise ValueError(f"DH value of {len(peer)} bytes, the group needs {self.size}")
        y = int.from_bytes(peer, "big")
        if not 1 < y < self.p - 1:
            raise ValueError("DH value out of range")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pub = dh.DHPublicNumbers(y, self._params.parameter_numbers()).public_key()
            z = self._key.exchange(pub)
        return z.rjust(self.size, b"\0")
