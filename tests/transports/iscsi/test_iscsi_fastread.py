"""The batched READ path (transports/iscsi/fastread.py) against the PDU-by-PDU
path: random mixes of PDUs, cut into random receive sizes, give the same
bytes on the wire, the same session window, StatSN and counters, and the
same bdev statistics; and the batch really is taken for plain READs."""

from __future__ import annotations

import itertools
import os
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockfabric.bdevs.malloc import MallocBdev
from blockfabric.transports.iscsi import pdu as P
from blockfabric.transports.scsi.device import ScsiDevice
from blockfabric.transports.scsi.lun import ScsiLun
from blockfabric.transports.scsi.pr import PrStore

BS = 512
NB = 256
_seq = itertools.count()


@pytest.fixture(scope="module")
def bdev() -> Any:
    b = MallocBdev.create(f"fr{os.getpid()}x{next(_seq)}", "Malloc0", NB, BS, hugepages="never")
    ch = b.open_channel(None)
    out: list[Any] = []
    ch.write(0, memoryview(bytes(range(256)) * (NB * BS // 256)), out.append)
    assert out and not out[0]
    ch.close()
    yield b
    b.destroy()


def _harness(kit: Any, bdev: Any, ua: bool) -> tuple[Any, Any]:
    h = kit.Harness()
    ch = bdev.open_channel(None)
    dev = ScsiDevice("disk1", PrStore(None), power_on_ua=True)
    dev.add_lun(ScsiLun(0, bdev, lambda: ch, dev, max_transfer_bytes=64 * BS))
    h.env.dev = dev
    h.login()
    if not ua:  # the first READ of a nexus reports the power-on unit attention
        h.cmd(kit.read10(0, 1), BS, read=True)
        h.cmd(kit.read10(0, 1), BS, read=True)
    return h, ch


def read10(lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", 0x28, flags, lba, 0, n, 0)


def read16(lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", 0x88, flags, lba, n, 0, 0)


# one PDU of the mix: (kind, lba, blocks, variant)
_pdu = st.tuples(
    st.sampled_from(
        ["r10", "r10", "r16", "r16", "r10", "big", "oor", "edtl", "rdprotect", "imm", "tur",
         "nop", "gap", "write", "lun1", "nofinal"]
    ),
    st.integers(0, NB - 1),
    st.integers(1, 8),
)  # fmt: skip


def _encode(mix: list[tuple[str, int, int]], cmdsn0: int, itt0: int) -> bytes:
    out = []
    cmdsn = cmdsn0
    for i, (kind, lba, n) in enumerate(mix):
        itt = itt0 + i
        f1 = 0x80 | 0x40 | 1
        lun = 0
        imm = False
        sn = cmdsn
        edtl = n * BS
        cdb = read10(lba, n) if kind != "r16" else read16(lba, n)
        if kind == "big":
            n = 64 + 8  # beyond the LUN's maximum transfer: the generic path refuses it
            cdb, edtl = read16(lba, n), n * BS
        elif kind == "oor":
            cdb = read16(NB - 1, n + 1)
            edtl = (n + 1) * BS
        elif kind == "edtl":
            edtl = n * BS + BS
        elif kind == "rdprotect":
            cdb = read10(lba, n, 0x20)
        elif kind == "imm":
            imm = True
        elif kind == "tur":
            cdb, edtl, f1 = bytes(6), 0, 0x80 | 1
        elif kind == "gap":
            sn = cmdsn + 1  # ahead of ExpCmdSN: waits for the missing one
        elif kind == "write":
            f1 = 0x80 | 0x20 | 1
            cdb = struct.pack(">BBIBHB", 0x2A, 0, lba, 0, n, 0)
        elif kind == "lun1":
            lun = 1
        elif kind == "nofinal":
            f1 = 0x40 | 1
        if kind == "nop":
            out.append(
                P.encode_request(
                    P.OP_NOP_OUT,
                    0x80,
                    0,
                    itt,
                    (P.RSVD_TAG, cmdsn, 0, 0, 0, 0, 0),
                    b"",
                    immediate=True,
                )  # fmt: skip
            )
            continue
        w = (edtl, sn, 0) + struct.unpack(">4I", cdb.ljust(16, b"\0"))
        out.append(
            P.encode_request(P.OP_SCSI_CMD, f1, P.int_to_lun(lun), itt, w, b"", immediate=imm)
        )
        if not imm and kind != "gap":
            cmdsn += 1
    return b"".join(out)


def _state(h: Any, ch: Any) -> tuple[Any, ...]:
    c = h.conn
    s = c.session
    return (
        c.state,
        c.statsn,
        c.pdus_in,
        c.pdus_out,
        s.exp_cmdsn,
        s.max_cmdsn,
        s.outstanding,
        s.outstanding_immediate,
        sorted(s.tasks),
        ch.stats.num_read_ops,
        ch.stats.bytes_read,
        ch.stats.io_errors,
    )


def _wire(out: list[list[Any]]) -> bytes:
    return b"".join(bytes(b) for bufs in out for b in bufs)


def _recv(h: Any, data: bytes, cuts: list[int]) -> None:
    """Deliver ``data`` as the driver does: into recv_buffer, then on_recv."""
    mv = memoryview(data)
    cuts = cuts or [len(data)]
    i = 0
    while len(mv):
        k = min(len(mv), max(1, cuts[i % len(cuts)]))
        i += 1
        buf = h.conn.reader.recv_buffer()
        k = min(k, len(buf))
        buf[:k] = mv[:k]
        mv = mv[k:]
        h.conn.on_recv(k)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    mix=st.lists(_pdu, min_size=1, max_size=40),
    cuts=st.lists(st.integers(1, 600), max_size=6),
    ua=st.booleans(),
)
def test_batched_reads_match_pdu_by_pdu(
    kit: Any, bdev: Any, mix: list[Any], cuts: list[int], ua: bool
) -> None:
    ref, ref_ch = _harness(kit, bdev, ua)
    new, new_ch = _harness(kit, bdev, ua)
    ref.conn.fast_scan = False
    assert _state(ref, ref_ch) == _state(new, new_ch)
    data = _encode(mix, ref.conn.session.exp_cmdsn, 0x1000)
    n_ref, n_new = len(ref.out), len(new.out)
    ref.conn.feed(data)
    _recv(new, data, cuts)
    assert _wire(new.out[n_new:]) == _wire(ref.out[n_ref:])
    assert _state(new, new_ch) == _state(ref, ref_ch)
    assert new.closed == ref.closed
    ref_ch.close()
    new_ch.close()


def test_plain_reads_go_as_one_batch(kit: Any, bdev: Any) -> None:
    h, ch = _harness(kit, bdev, ua=False)
    mix = [("r10" if i % 2 else "r16", (7 * i) % 200, 8) for i in range(32)]
    data = _encode(mix, h.conn.session.exp_cmdsn, 0x2000)
    n = len(h.out)
    ops = ch.stats.num_read_ops
    _recv(h, data, [])
    sends = h.out[n:]
    assert len(sends) == 1 and len(sends[0]) == 64  # 32 x (header, data): one send
    assert ch.stats.num_read_ops == ops + 32
    raw = _wire(sends)
    for i in range(32):
        p = P.Pdu(raw[i * (48 + 4096) : i * (48 + 4096) + 48])
        assert p.opcode == P.OP_DATA_IN and p.f1 == P.F_FINAL | P.F_STATUS and p.itt == 0x2000 + i
        lba = (7 * i) % 200
        body = raw[i * (48 + 4096) + 48 : (i + 1) * (48 + 4096)]
        assert body == bytes(ch.mem[lba * BS : (lba + 8) * BS])
    assert h.conn.session.outstanding == 0


def test_unit_attention_stops_the_batch(kit: Any, bdev: Any) -> None:
    h, ch = _harness(kit, bdev, ua=True)
    data = _encode([("r10", 0, 1), ("r10", 1, 1)], h.conn.session.exp_cmdsn, 0x3000)
    n = len(h.out)
    _recv(h, data, [])
    r = [kit_decode(b) for b in h.out[n:]]
    assert r[0].opcode == P.OP_SCSI_RESP and r[0].b3 == 2  # CHECK CONDITION: the UA
    assert r[1].opcode == P.OP_DATA_IN


def kit_decode(bufs: list[Any]) -> P.Pdu:
    raw = b"".join(bytes(b) for b in bufs)
    p = P.Pdu(raw[:48])
    p.data = raw[48 : 48 + p.dlen]
    return p


def test_removed_channel_takes_the_general_path(kit: Any, bdev: Any) -> None:
    h, ch = _harness(kit, bdev, ua=False)
    ch.removed = True
    data = _encode([("r10", 0, 1)], h.conn.session.exp_cmdsn, 0x4000)
    n = len(h.out)
    _recv(h, data, [])
    r = kit_decode(h.out[n])
    assert r.opcode == P.OP_SCSI_RESP and r.b3 == 2  # the general path's sense data
