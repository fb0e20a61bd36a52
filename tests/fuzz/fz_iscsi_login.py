"""iSCSI login and text negotiation, including CHAP (one-way and mutual),
through the sans-I/O Connection; a completed login goes on into the full
feature phase with the same bytes.

Input: byte 0 = target configuration (bit 0 CHAP required, bit 1 mutual CHAP,
bit 2 HeaderDigest required); the rest is what the initiator sends. The
challenge the target sends is deterministic here, so seeds hold valid CHAP
answers. Refusals are Login Responses / Rejects / closes, never exceptions."""

from __future__ import annotations

from collections.abc import Iterable

from fuzzlib import Bytes
from iscsi_common import Conn, deterministic_chap, ffp_pdus, kit, login_pdus

from blockfabric.transports.iscsi import pdu as P
from blockfabric.transports.iscsi import text


def one_input(data: bytes) -> None:
    b = Bytes(data)
    cfg = b.u8()
    with deterministic_chap():
        c = Conn(cfg)
        c.feed(b.rest())
        c.conn.close("fuzz done")


def seeds() -> Iterable[bytes]:
    for cfg in (0, 1, 3, 4):
        yield bytes([cfg]) + login_pdus(cfg)
        yield bytes([cfg]) + login_pdus(cfg) + b"".join(ffp_pdus(bool(cfg & 4)))
    # discovery session + SendTargets
    st = P.encode_request(
        P.OP_TEXT_REQ,
        0x80,
        0,
        2,
        (0xFFFFFFFF, 1, 0, 0, 0, 0, 0),
        text.encode([("SendTargets", "All")]),
    )
    yield bytes([0]) + login_pdus(0, discovery=True) + st
    # login text continued over two PDUs (C bit)
    blob = text.encode(
        [("InitiatorName", kit.INIT), ("TargetName", kit.TARGET), ("AuthMethod", "None")]
    )
    half = len(blob) // 2
    yield (
        bytes([0])
        + P.encode_request(
            P.OP_LOGIN_REQ, 0x40 | 1, kit.ISID << 16, 1, (0, 1, 0, 0, 0, 0, 0), blob[:half]
        )
        + P.encode_request(
            P.OP_LOGIN_REQ, 0x80 | 1, kit.ISID << 16, 1, (0, 1, 0, 0, 0, 0, 0), blob[half:]
        )
    )
    # operational keys of every kind, some out of range or unknown
    yield bytes([0]) + kit.login_req(
        [("InitiatorName", kit.INIT), ("TargetName", kit.TARGET), ("MaxConnections", "4"),
         ("DefaultTime2Wait", "9999"), ("ErrorRecoveryLevel", "2"), ("DataPDUInOrder", "No"),
         ("MaxOutstandingR2T", "65535"), ("X-vendor", "y"), ("IFMarker", "Yes"), ("OFMarkInt", "1~65535")],
        csg=1, nsg=3,
    )  # fmt: skip
