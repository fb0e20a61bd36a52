"""iSCSI harness pieces: the sans-I/O Connection of the iSCSI unit tests
(tests/transports/iscsi/conftest.py) with a deterministic CHAP challenge, and
an output checker."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fuzzlib import load_path

from blockfabric.transports.iscsi import chap, text
from blockfabric.transports.iscsi import pdu as P

kit: Any = load_path("_fz_iscsi_conftest", "transports/iscsi/conftest.py")

TARGET_OPS = frozenset(
    (P.OP_NOP_IN, P.OP_SCSI_RESP, P.OP_TMF_RESP, P.OP_LOGIN_RESP, P.OP_TEXT_RESP, P.OP_DATA_IN,
     P.OP_LOGOUT_RESP, 0x31, P.OP_ASYNC, P.OP_REJECT)
)  # fmt: skip
CHAP_USER, CHAP_SECRET, CHAP_MUSER, CHAP_MSECRET = "alice", "s3cret", "tgt", "m3cret"


def fixed_rand(n: int) -> bytes:
    return bytes((7 * i + 1) & 0xFF for i in range(n))


@contextmanager
def deterministic_chap() -> Iterator[None]:
    """CHAP challenges from `fixed_rand` (so seeds can hold a valid answer)."""
    init = chap.ChapTarget.__init__
    saved = init.__defaults__
    init.__defaults__ = (False, fixed_rand)
    try:
        yield
    finally:
        init.__defaults__ = saved


def chap_answer(secret: str = CHAP_SECRET) -> str:
    ident = fixed_rand(1)[0]
    chal = fixed_rand(chap.CHALLENGE_LEN)
    return "0x" + hashlib.md5(bytes([ident]) + secret.encode() + chal).hexdigest()


def make_state(cfg: int) -> Any:
    st = kit.make_state()
    if cfg & 1:
        st.add_auth_group(
            1,
            [
                {
                    "user": CHAP_USER,
                    "secret": CHAP_SECRET,
                    "muser": CHAP_MUSER,
                    "msecret": CHAP_MSECRET,
                }
            ],
        )
        st.set_target_auth(kit.TARGET, False, True, bool(cfg & 2), 1)
    if cfg & 4:
        st.target_nodes[kit.TARGET].header_digest = True
    return st


_states: dict[int, tuple[Any, Any]] = {}


def _env(cfg: int) -> tuple[Any, Any]:
    """The target state and its ConfigView are built once per configuration
    (logins do not change them); sessions and the device are fresh each time."""
    got = _states.get(cfg)
    if got is None:
        st = make_state(cfg)
        got = _states[cfg] = (st, kit.Env(st))
    st, env = got
    env.sessions = kit.SessionRegistry()
    env.dev = kit.FakeDevice()
    return st, env


class Conn:
    """A Connection plus a check of every PDU it sends."""

    def __init__(self, cfg: int) -> None:
        st, env = _env(cfg & 7)
        self.h = kit.Harness(st, env=env)
        self.conn = self.h.conn
        self.seen = 0

    def feed(self, data: bytes) -> None:
        self.conn.feed(data)
        self.check()

    def check(self) -> None:
        cp = self.conn.cp
        for bufs in self.h.out[self.seen :]:
            raw = b"".join(bytes(b) for b in bufs)
            assert len(raw) >= P.BHS_LEN, raw
            op = raw[0] & 0x3F
            assert op in TARGET_OPS, f"target sent opcode {op:#x}"
            ahs = raw[4] * 4
            dlen = int.from_bytes(raw[5:8], "big")
            hd = 4 if cp.header_digest else 0
            dd = 4 if cp.data_digest and dlen else 0
            want = P.BHS_LEN + ahs + hd + dlen + P.pad_len(dlen) + dd
            # a login response is sent before digests take effect
            assert len(raw) in (want, want - hd - dd, P.BHS_LEN + ahs + dlen + P.pad_len(dlen)), (
                len(raw),
                want,
            )
        self.seen = len(self.h.out)
        if len(self.h.out) > 4096:
            del self.h.out[:]
            self.seen = 0
        assert len(self.conn.tasks) <= 4096


def login_pdus(
    cfg: int, discovery: bool = False, extra: list[tuple[str, str]] | None = None
) -> bytes:
    """The initiator's side of a complete login for target state ``cfg``."""
    base = [("InitiatorName", kit.INIT)]
    if discovery:
        base.append(("SessionType", "Discovery"))
    else:
        base += [("TargetName", kit.TARGET), ("SessionType", "Normal")]
    ops = [
        ("HeaderDigest", "CRC32C" if cfg & 4 else "None"),
        ("DataDigest", "None"),
        ("MaxRecvDataSegmentLength", "262144"),
        ("ImmediateData", "Yes"),
        ("InitialR2T", "No"),
        ("FirstBurstLength", "65536"),
        ("MaxBurstLength", "262144"),
    ] + (extra or [])
    if not cfg & 1:
        return kit.login_req(base + [("AuthMethod", "None")], csg=0, nsg=1) + kit.login_req(
            ops, csg=1, nsg=3
        )
    out = kit.login_req(base + [("AuthMethod", "CHAP,None")], csg=0, nsg=1, transit=False)
    out += kit.login_req([("CHAP_A", "5")], csg=0, nsg=1, transit=False)
    resp = [("CHAP_N", CHAP_USER), ("CHAP_R", chap_answer())]
    if cfg & 2:
        resp += [("CHAP_I", "9"), ("CHAP_C", "0x" + "ab" * 16)]
    out += kit.login_req(resp, csg=0, nsg=1)
    return out + kit.login_req(ops, csg=1, nsg=3)


def scsi_cmd(
    cdb: bytes,
    edtl: int,
    itt: int,
    cmdsn: int,
    read: bool = False,
    write: bool = False,
    data: bytes = b"",
    final: bool = True,
    hd: bool = False,
) -> bytes:
    f1 = (0x80 if final else 0) | (0x40 if read else 0) | (0x20 if write else 0) | 1
    w = (edtl, cmdsn, 0) + struct.unpack(">4I", cdb.ljust(16, b"\0"))
    return P.encode_request(P.OP_SCSI_CMD, f1, 0, itt, w, data, header_digest=hd)


def ffp_pdus(hd: bool = False) -> list[bytes]:
    """A mix of full-feature-phase PDUs (commands, Data-Out, text, NOP, TMF, logout)."""
    r10, w10 = kit.read10, kit.write10
    return [
        scsi_cmd(bytes([0x12, 0, 0, 0, 96, 0]), 96, 0x10, 1, read=True, hd=hd),
        scsi_cmd(bytes(6), 0, 0x11, 2, hd=hd),
        scsi_cmd(w10(0, 1), 512, 0x12, 3, write=True, data=b"\x5a" * 512, hd=hd),
        scsi_cmd(r10(0, 2), 1024, 0x13, 4, read=True, hd=hd),
        # write with immediate data, the rest in an unsolicited Data-Out
        scsi_cmd(w10(4, 2), 1024, 0x14, 5, write=True, data=b"\x11" * 512, final=False, hd=hd),
        P.encode_request(
            P.OP_DATA_OUT,
            0x80,
            0,
            0x14,
            (0xFFFFFFFF, 0, 0, 0, 0, 512, 0),
            b"\x22" * 512,
            header_digest=hd,
        ),
        P.encode_request(
            P.OP_TEXT_REQ,
            0x80,
            0,
            0x15,
            (0xFFFFFFFF, 6, 0, 0, 0, 0, 0),
            text.encode([("SendTargets", "All")]),
            header_digest=hd,
        ),
        P.encode_request(
            P.OP_NOP_OUT,
            0x80,
            0,
            0x16,
            (0xFFFFFFFF, 7, 0, 0, 0, 0, 0),
            b"ping",
            immediate=True,
            header_digest=hd,
        ),
        P.encode_request(
            P.OP_TMF_REQ,
            0x80 | 1,
            0,
            0x17,
            (0x13, 7, 0, 0, 0, 0, 0),
            immediate=True,
            header_digest=hd,
        ),
        P.encode_request(
            P.OP_LOGOUT_REQ, 0x80, 0, 0x18, (0, 7, 0, 0, 0, 0, 0), immediate=True, header_digest=hd
        ),
    ]
