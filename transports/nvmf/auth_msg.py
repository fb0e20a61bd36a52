"""DH-HMAC-CHAP message codec (NVMe base specification 2.0, 5.3 / 8.13.5):
the payloads of Authentication Send / Receive (fabrics command types 05h /
06h, SECP E9h, SPSP0 = SPSP1 = 01h). Encoders build bytes; decoders take
bytes and raise `AuthPayloadError` (the INCORRECT_PAYLOAD reason) for a
malformed message, never index past the buffer.

Layouts (little-endian), every message starting with AUTH_Type, AUTH_ID,
2 reserved bytes, T_ID (u16):

* AUTH_Negotiate (type 00h, id 00h): +6 SC_C, +7 NAPD, then NAPD protocol
  descriptors of 64 bytes: AUTHID (01h DH-HMAC-CHAP), rsvd, HALEN, DHLEN,
  30 hash ids, 30 DH group ids.
* _Challenge (01h/01h): +6 HL, +7 rsvd, +8 HASHID, +9 DHGID, +10 DHVLEN
  (u16), +12 SEQNUM (u32), +16 C1 (HL bytes), DH value (DHVLEN bytes).
* _Reply (01h/02h): +6 HL, +7 rsvd, +8 CVALID, +9 rsvd, +10 DHVLEN, +12
  SEQNUM, +16 R1 (HL), C2 (HL, zero unless CVALID), DH value (DHVLEN).
* _Success1 (01h/03h): +6 HL, +7 rsvd, +8 RVALID, 7 rsvd, +16 R2 (HL, only
  with RVALID).
* _Success2 (01h/04h): 10 reserved bytes (16 in all).
* AUTH_Failure1 / 2 (type 00h, id F1h / F0h): +6 reason code (01h
  failure), +7 reason code explanation.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SECP_NVME = 0xE9
SPSP0 = 0x01
SPSP1 = 0x01

AUTH_TYPE_COMMON = 0x00
AUTH_TYPE_DHCHAP = 0x01

MSG_NEGOTIATE = 0x00
MSG_CHALLENGE = 0x01
MSG_REPLY = 0x02
MSG_SUCCESS1 = 0x03
MSG_SUCCESS2 = 0x04
MSG_FAILURE2 = 0xF0
MSG_FAILURE1 = 0xF1

AUTHID_DHCHAP = 0x01
MAX_IDS = 30  # hash ids / DH group ids per descriptor
DESCRIPTOR_SIZE = 64
HEADER_SIZE = 16  # challenge, reply, success1, success2
NEGOTIATE_HEADER = 8
FAILURE_SIZE = 8
# a message bigger than this is refused before anything is allocated: the
# largest legal one is a reply with SHA-512 and ffdhe8192 (16 + 128 + 1024)
MAX_MESSAGE = 4096

# reason code / explanations of AUTH_Failure1 / AUTH_Failure2
RC_FAILURE = 0x01
RCE_FAILED = 0x01
RCE_NOT_USABLE = 0x02
RCE_CONCAT_MISMATCH = 0x03
RCE_HASH_UNUSABLE = 0x04
RCE_DHGROUP_UNUSABLE = 0x05
RCE_INCORRECT_PAYLOAD = 0x06
RCE_INCORRECT_MESSAGE = 0x07

REASONS = {
    RCE_FAILED: "authentication failed",
    RCE_NOT_USABLE: "authentication protocol not usable",
    RCE_CONCAT_MISMATCH: "secure channel concatenation mismatch",
    RCE_HASH_UNUSABLE: "hash function not usable",
    RCE_DHGROUP_UNUSABLE: "DH group not usable",
    RCE_INCORRECT_PAYLOAD: "incorrect payload",
    RCE_INCORRECT_MESSAGE: "incorrect protocol message",
}


class AuthPayloadError(ValueError):
    """A malformed authentication message; ``rce`` is the failure reason."""

    def __init__(self, msg: str, rce: int = RCE_INCORRECT_PAYLOAD) -> None:
        super().__init__(msg)
        self.rce = rce


def header(buf: bytes | memoryview) -> tuple[int, int, int]:
    """(AUTH_Type, AUTH_ID, T_ID) of any message."""
    if len(buf) < 6:
        raise AuthPayloadError(f"message of {len(buf)} bytes")
    t, i, _r, tid = struct.unpack_from("<BBHH", buf, 0)
    return t, i, tid


# ------------------------------------------------------------------ negotiate
@dataclass
class Negotiate:
    tid: int
    sc_c: int = 0
    # the DH-HMAC-CHAP descriptor's lists (None: the host sent none)
    hashes: list[int] | None = field(default_factory=list)
    dhgroups: list[int] = field(default_factory=list)


def encode_negotiate(tid: int, hashes: list[int], dhgroups: list[int], sc_c: int = 0) -> bytes:
    if len(hashes) > MAX_IDS or len(dhgroups) > MAX_IDS:
        raise ValueError("too many ids")
    d = bytearray(DESCRIPTOR_SIZE)
    d[0] = AUTHID_DHCHAP
    d[2] = len(hashes)
    d[3] = len(dhgroups)
    d[4 : 4 + len(hashes)] = bytes(hashes)
    d[34 : 34 + len(dhgroups)] = bytes(dhgroups)
    return struct.pack("<BBHHBB", AUTH_TYPE_COMMON, MSG_NEGOTIATE, 0, tid, sc_c, 1) + bytes(d)


def decode_negotiate(buf: bytes | memoryview) -> Negotiate:
    if len(buf) < NEGOTIATE_HEADER:
        raise AuthPayloadError("AUTH_Negotiate shorter than its header")
    _t, _i, _r, tid, sc_c, napd = struct.unpack_from("<BBHHBB", buf, 0)
    if napd == 0 or len(buf) != NEGOTIATE_HEADER + napd * DESCRIPTOR_SIZE:
        raise AuthPayloadError(f"AUTH_Negotiate of {len(buf)} bytes with NAPD {napd}")
    out = Negotiate(tid, sc_c, None, [])
    for k in range(napd):
        o = NEGOTIATE_HEADER + k * DESCRIPTOR_SIZE
        if buf[o] != AUTHID_DHCHAP:
            continue
        halen, dhlen = buf[o + 2], buf[o + 3]
        if halen > MAX_IDS or dhlen > MAX_IDS:
            raise AuthPayloadError(f"HALEN {halen} / DHLEN {dhlen} above {MAX_IDS}")
        out.hashes = list(bytes(buf[o + 4 : o + 4 + halen]))
        out.dhgroups = list(bytes(buf[o + 34 : o + 34 + dhlen]))
        break
    return out


# ------------------------------------------------------------------ challenge
@dataclass
class Challenge:
    tid: int
    hash_id: int
    dhgroup: int
    seqnum: int
    cval: bytes
    dhv: bytes


def encode_challenge(c: Challenge) -> bytes:
    return (
        struct.pack(
            "<BBHHBxBBHI",
            AUTH_TYPE_DHCHAP,
            MSG_CHALLENGE,
            0,
            c.tid,
            len(c.cval),
            c.hash_id,
            c.dhgroup,
            len(c.dhv),
            c.seqnum,
        )
        + c.cval
        + c.dhv
    )


def decode_challenge(buf: bytes | memoryview) -> Challenge:
    if len(buf) < HEADER_SIZE:
        raise AuthPayloadError("DH-HMAC-CHAP_Challenge shorter than its header")
    _t, _i, _r, tid, hl, hid, dhg, dhvlen, seq = struct.unpack_from("<BBHHBxBBHI", buf, 0)
    if len(buf) < HEADER_SIZE + hl + dhvlen:
        raise AuthPayloadError(
            f"DH-HMAC-CHAP_Challenge of {len(buf)} bytes, HL {hl} DHVLEN {dhvlen}"
        )
    o = HEADER_SIZE
    return Challenge(
        tid, hid, dhg, seq, bytes(buf[o : o + hl]), bytes(buf[o + hl : o + hl + dhvlen])
    )


# ---------------------------------------------------------------------- reply
@dataclass
class Reply:
    tid: int
    response: bytes
    c2: bytes | None  # the host's challenge to the controller (CVALID)
    seqnum: int
    dhv: bytes


def encode_reply(r: Reply) -> bytes:
    hl = len(r.response)
    c2 = r.c2 if r.c2 is not None else bytes(hl)
    if len(c2) != hl:
        raise ValueError("C2 must be as long as the response")
    return (
        struct.pack(
            "<BBHHBxBxHI",
            AUTH_TYPE_DHCHAP,
            MSG_REPLY,
            0,
            r.tid,
            hl,
            1 if r.c2 is not None else 0,
            len(r.dhv),
            r.seqnum,
        )
        + r.response
        + c2
        + r.dhv
    )


def decode_reply(buf: bytes | memoryview, hl_expected: int) -> Reply:
    if len(buf) < HEADER_SIZE:
        raise AuthPayloadError("DH-HMAC-CHAP_Reply shorter than its header")
    _t, _i, _r, tid, hl, cvalid, dhvlen, seq = struct.unpack_from("<BBHHBxBxHI", buf, 0)
    if hl != hl_expected:
        raise AuthPayloadError(f"HL {hl}, the hash needs {hl_expected}")
    if len(buf) != HEADER_SIZE + 2 * hl + dhvlen:
        raise AuthPayloadError(f"DH-HMAC-CHAP_Reply of {len(buf)} bytes, HL {hl} DHVLEN {dhvlen}")
    if cvalid not in (0, 1):
        raise AuthPayloadError(f"CVALID {cvalid}")
    if cvalid and seq == 0:
        raise AuthPayloadError("CVALID with sequence number 0")
    o = HEADER_SIZE
    return Reply(
        tid,
        bytes(buf[o : o + hl]),
        bytes(buf[o + hl : o + 2 * hl]) if cvalid else None,
        seq,
        bytes(buf[o + 2 * hl : o + 2 * hl + dhvlen]),
    )


# ------------------------------------------------------------ success / failure
def encode_success1(tid: int, hl: int, rval: bytes | None) -> bytes:
    # the Linux host expects HL set even without RVALID (SPDK does the same)
    head = struct.pack(
        "<BBHHBxB7x", AUTH_TYPE_DHCHAP, MSG_SUCCESS1, 0, tid, hl, 1 if rval is not None else 0
    )
    return head + (rval or b"")


def decode_success1(buf: bytes | memoryview) -> tuple[int, int, bytes | None]:
    """(T_ID, HL, R2 or None)."""
    if len(buf) < HEADER_SIZE:
        raise AuthPayloadError("DH-HMAC-CHAP_Success1 shorter than its header")
    _t, _i, _r, tid, hl, rvalid = struct.unpack_from("<BBHHBxB", buf, 0)
    if not rvalid:
        return tid, hl, None
    if len(buf) < HEADER_SIZE + hl:
        raise AuthPayloadError("DH-HMAC-CHAP_Success1 shorter than HL")
    return tid, hl, bytes(buf[HEADER_SIZE : HEADER_SIZE + hl])


def encode_success2(tid: int) -> bytes:
    return struct.pack("<BBHH10x", AUTH_TYPE_DHCHAP, MSG_SUCCESS2, 0, tid)


def encode_failure(msg_id: int, tid: int, rce: int, rc: int = RC_FAILURE) -> bytes:
    return struct.pack("<BBHHBB", AUTH_TYPE_COMMON, msg_id, 0, tid, rc, rce)


def decode_failure(buf: bytes | memoryview) -> tuple[int, int, int]:
    """(T_ID, reason code, explanation)."""
    if len(buf) < FAILURE_SIZE:
        raise AuthPayloadError("AUTH_Failure shorter than 8 bytes")
    _t, _i, _r, tid, rc, rce = struct.unpack_from("<BBHHBB", buf, 0)
    return tid, rc, rce


def reason_name(rce: int) -> str:
    return REASONS.get(rce, f"reason {rce:#x}")
