"""The READ(10)/READ(16) fast path in Connection: same bytes on the wire as
the generic path, and every case it must not take (unit attention, reservation,
RDPROTECT, out of range, EDTL mismatch, asynchronous completion, abort)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockfabric.bdevs.base import Bdev, IoChannel, IoStatus
from blockfabric.transports.iscsi import pdu as P
from blockfabric.transports.scsi.device import ScsiDevice
from blockfabric.transports.scsi.lun import ScsiLun
from blockfabric.transports.scsi.pr import PrStore

BS = 512
NB = 256


class Chan(IoChannel):
    def __init__(self, bdev: Bdev) -> None:
        super().__init__(bdev)
        self.mem = bytearray(bytes(range(256)) * (NB * BS // 256))
        self.deferred = False
        self.pending: list[Any] = []
        self.reads = 0
        self.fail: IoStatus | None = None

    def _do_read(self, off: int, n: int, cb: Any, into: Any = None) -> None:
        self.reads += 1
        st = self.fail or IoStatus.SUCCESS
        data = None if self.fail else memoryview(self.mem)[off * BS : (off + n) * BS]
        if self.deferred:
            self.pending.append(lambda: cb(st, data))
        else:
            cb(st, data)


def _env(kit: Any) -> tuple[Any, Chan, ScsiDevice]:
    h = kit.Harness()
    bdev = Bdev(
        name="Malloc0",
        block_size=BS,
        num_blocks=NB,
        uuid="12345678-1234-5678-9abc-def012345678",
        product_name="Malloc disk",
    )
    ch = Chan(bdev)
    dev = ScsiDevice("disk1", PrStore(None), power_on_ua=True)
    dev.add_lun(ScsiLun(0, bdev, lambda: ch, dev))
    h.env.dev = dev
    h.login()
    return h, ch, dev


def read16(lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", 0x88, flags, lba, n, 0, 0)


def _first_read_clears_ua(h: Any, kit: Any) -> None:
    r = h.cmd(kit.read10(0, 1), BS, read=True)
    assert r[0].opcode == P.OP_SCSI_RESP and r[0].b3 == 2  # power-on UA
    r = h.cmd(kit.read10(0, 1), BS, read=True)
    assert r[0].opcode == P.OP_DATA_IN


def test_fast_read_bytes_match_generic(kit: Any) -> None:
    h, ch, dev = _env(kit)
    _first_read_clears_ua(h, kit)
    assert dev.fast_lun(0, h.conn.session.nexus) is not None
    for cdb in (kit.read10(5, 8), read16(5, 8)):
        statsn = h.conn.statsn
        r = h.cmd(cdb, 8 * BS, read=True, itt=0x31)
        assert len(r) == 1
        p = r[0]
        assert p.opcode == P.OP_DATA_IN and p.f1 == P.F_FINAL | P.F_STATUS
        assert p.b3 == 0 and p.itt == 0x31 and p.ttt == P.RSVD_TAG
        assert p.w24 == statsn and h.conn.statsn == statsn + 1
        assert p.w28 == h.conn.session.exp_cmdsn and p.w36 == 0 and p.w40 == 0
        assert p.w44 == 0 and bytes(p.data) == bytes(ch.mem[5 * BS : 13 * BS])
        assert 0x31 not in h.conn.tasks


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lba=st.integers(0, NB + 2),
    n=st.integers(0, 9),
    sixteen=st.booleans(),
    edtl_delta=st.sampled_from([0, 0, -BS, BS]),
    flags=st.sampled_from([0, 0, 0x08, 0x20]),
)
def test_fast_and_generic_agree(
    kit: Any, lba: int, n: int, sixteen: bool, edtl_delta: int, flags: int
) -> None:
    """Property: whatever the CDB, the answer equals the generic path's (run
    with the fast path switched off via a reservation-free clone)."""
    outs = []
    for fast in (True, False):
        h, ch, dev = _env(kit)
        _first_read_clears_ua(h, kit)
        if not fast:
            dev.fast_lun = lambda *a: None  # type: ignore[method-assign]
        cdb = (
            read16(lba, n, flags)
            if sixteen
            else kit.read10(lba, n)[:1] + bytes([flags]) + kit.read10(lba, n)[2:]
        )
        edtl = max(0, n * BS + edtl_delta)
        r = h.cmd(cdb, edtl, read=True, itt=0x44)
        outs.append([(p.opcode, p.f1, p.b3, p.w36, p.w40, p.w44, bytes(p.data)) for p in r])
    assert outs[0] == outs[1]


def test_unit_attention_takes_generic_path(kit: Any) -> None:
    h, ch, dev = _env(kit)
    _first_read_clears_ua(h, kit)
    dev.establish_ua(0, None, (0x2A, 0x01))
    assert dev.fast_lun(0, h.conn.session.nexus) is None
    r = h.cmd(kit.read10(0, 1), BS, read=True)
    assert r[0].opcode == P.OP_SCSI_RESP and r[0].b3 == 2
    assert bytes(r[0].data)[2 + 12 : 2 + 14] == b"\x2a\x01"


def test_reservation_takes_generic_path(kit: Any) -> None:
    h, ch, dev = _env(kit)
    _first_read_clears_ua(h, kit)
    # another nexus holds an SPC-2 reservation: our READ must conflict
    dev.pr_store.legacy_reserve(0, ("other,i,0x1", h.conn.session.target_port))
    assert dev.fast_lun(0, h.conn.session.nexus) is None
    r = h.cmd(kit.read10(0, 1), BS, read=True)
    assert r[0].opcode == P.OP_SCSI_RESP and r[0].b3 == 0x18


def test_async_completion_and_abort(kit: Any) -> None:
    h, ch, dev = _env(kit)
    _first_read_clears_ua(h, kit)
    ch.deferred = True
    assert h.cmd(kit.read10(2, 1), BS, read=True, itt=0x50) == []
    assert h.cmd(kit.read10(3, 1), BS, read=True, itt=0x51) == []
    assert 0x50 in h.conn.session.tasks and 0x51 in h.conn.tasks
    # a duplicate ITT while the read is outstanding is rejected
    r = h.cmd(kit.read10(2, 1), BS, read=True, itt=0x50)
    assert r[0].opcode == P.OP_REJECT
    # ABORT TASK 0x51: "function complete" only once its read has finished
    # (RFC 7143 11.5); its late completion sends no data
    w = (0x51, h.cmdsn, 0, 0, 0, 0, 0)
    r = h.feed(P.encode_request(P.OP_TMF_REQ, 0x81, 0, 0x99, w, immediate=True))
    assert r == []
    n = len(h.out)
    first, second = ch.pending
    second()
    assert len(h.out) == n + 1
    r0 = kit.decode(h.out[-1])
    assert r0.opcode == P.OP_TMF_RESP and r0.b2 == 0 and r0.itt == 0x99
    first()
    p = kit.decode(h.out[-1])
    assert (
        p.opcode == P.OP_DATA_IN
        and p.itt == 0x50
        and bytes(p.data) == bytes(ch.mem[2 * BS : 3 * BS])
    )
    assert not h.conn.tasks


@pytest.mark.parametrize("deferred", [False, True])
def test_read_error_maps_to_sense(kit: Any, deferred: bool) -> None:
    h, ch, dev = _env(kit)
    _first_read_clears_ua(h, kit)
    ch.deferred = deferred
    ch.fail = IoStatus.FAILED
    r = h.cmd(kit.read10(0, 1), BS, read=True, itt=0x60)
    if deferred:
        ch.pending.pop()()
        r = [kit.decode(h.out[-1])]
    assert r[0].opcode == P.OP_SCSI_RESP and r[0].b3 == 2
    sense = bytes(r[0].data)[2:]
    assert sense[2] & 0xF == 0x03 and sense[12] == 0x11  # MEDIUM ERROR, unrecovered read


def test_large_read_split_over_data_in(kit: Any) -> None:
    h, ch, dev = _env(kit)
    _first_read_clears_ua(h, kit)
    h.conn.set_max_xmit_dlen(1024)
    r = h.cmd(kit.read10(0, 5), 5 * BS, read=True, itt=0x70)
    assert [p.opcode for p in r] == [P.OP_DATA_IN] * 3
    assert [p.w36 for p in r] == [0, 1, 2] and [p.w40 for p in r] == [0, 1024, 2048]
    assert r[-1].f1 & P.F_STATUS and not r[0].f1 & P.F_STATUS
    assert b"".join(bytes(p.data) for p in r) == bytes(ch.mem[: 5 * BS])
