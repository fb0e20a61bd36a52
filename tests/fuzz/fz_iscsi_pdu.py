"""The iSCSI PDU framer (transports/iscsi/pdu.py PduReader) and every BHS
accessor of the PDUs it returns. (What a Connection does with PDUs after a
login is fuzzed by iscsi_login, whose inputs go on into the full feature phase;
``one_input_ffp`` here drives a logged-in connection directly, for replays.)

Input: byte 0 = bits 0-1 MaxRecvDataSegmentLength (512, 8192, 65536,
262144), bit 2 HeaderDigest, bit 3 DataDigest; byte 1 = where the stream is
cut into two receives; the rest is the stream. PduError is the
documented "bad PDU" outcome; framing must not depend on how bytes arrive."""

from __future__ import annotations

from collections.abc import Iterable

from fuzzlib import Bytes
from iscsi_common import Conn, ffp_pdus, login_pdus

from blockfabric.transports.iscsi import pdu as P

DLENS = (512, 8192, 65536, 262144)
# test_fuzz_corpus.py replays the corpus through these too
REPLAY_ALSO = ("one_input_ffp",)


def _frame(cfg: int, chunks: Iterable[bytes]) -> list[tuple[object, ...]]:
    r = P.PduReader(DLENS[cfg & 3], bool(cfg & 4), bool(cfg & 8), min_size=4096)
    out: list[tuple[object, ...]] = []
    for c in chunks:
        for p in r.feed_bytes(c):
            if isinstance(p, P.PduError):
                assert len(p.bhs) in (0, P.BHS_LEN)
                out.append(("error", p.reason, p.fatal, bytes(p.bhs)))
                continue
            assert len(p.data) <= r.max_recv_dlen
            assert p.opcode in P.INITIATOR_OPS
            # every accessor works on any BHS
            _ = (p.final, p.ttt, p.cmdsn, p.exp_statsn, p.edtl, p.cdb, p.datasn, p.buffer_offset)
            _ = (p.csg, p.nsg, p.isid, p.tsih, p.cid, p.function, p.ref_task_tag)
            _ = P.lun_to_int(p.lun)
            out.append((bytes(p.bhs), bytes(p.ahs), bytes(p.data)))
    return out


def one_input(data: bytes) -> None:
    b = Bytes(data)
    cfg = b.u8()
    cut = b.u8()
    stream = b.rest()
    k = cut * len(stream) // 256
    whole = _frame(cfg, [stream])
    assert whole == _frame(cfg, [stream[:k], stream[k:]]), "framing depends on the receives"


def one_input_ffp(data: bytes) -> None:
    """The same stream fed to a logged-in connection (HeaderDigest: bit 2)."""
    b = Bytes(data)
    cfg = b.u8()
    cut = b.u8()
    stream = b.rest()
    k = cut * len(stream) // 256
    c = Conn(cfg & 4)
    c.feed(login_pdus(cfg & 4))
    assert c.conn.state == "ffp", c.conn.state
    c.feed(stream[:k])
    c.feed(stream[k:])
    c.conn.close("fuzz done")


def seeds() -> Iterable[bytes]:
    for cfg in (0x11, 0x15, 0x01, 0x0D):
        hd = bool(cfg & 4)
        pdus = ffp_pdus(hd)
        if cfg & 8:  # the framer alone: data digests too
            pdus = [
                P.encode_request(
                    P.OP_NOP_OUT,
                    0x80,
                    0,
                    1,
                    (0xFFFFFFFF, 1, 0, 0, 0, 0, 0),
                    b"abcde",
                    header_digest=True,
                    data_digest=True,
                )
            ]
        yield bytes([cfg, 0x80]) + b"".join(pdus)
        for p in pdus:
            yield bytes([cfg, 0x40]) + p
    yield bytes([0x10, 0x20]) + P.encode_request(P.OP_SNACK, 0x80, 0, 1) + bytes([0x3E]) + bytes(47)
