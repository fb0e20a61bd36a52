"""The Read/Write fast path of the target queue pair must be invisible: the
same command stream gives byte-identical output with and without it."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockfabric.transports.nvmf import pdu as P
from blockfabric.transports.nvmf import spec
from blockfabric.transports.nvmf.driver import DRIVER
from blockfabric.transports.nvmf.tcp import TcpQpair

BLOCKS = 64  # a small bdev, so random LBAs also fall outside it


def _j(bufs: list[Any]) -> bytes:
    return b"".join(bytes(b) for b in bufs)


def _capsule(
    opcode: int, cid: int, nsid: int, cdws: tuple[int, ...], data: bytes | None, extra: int = 0
) -> bytes:
    """``extra``: bytes added to the transport SGL length of a read (may be < 0)."""
    if data is not None:
        dptr = spec.pack_sgl(0, len(data), spec.SGL_TYPE_INCAPSULE)
    else:
        n = 512 * ((cdws[2] & 0xFFFF) + 1) + extra
        dptr = spec.pack_sgl(0, n, spec.SGL_TYPE_TRANSPORT)
    sqe = spec.pack_sqe(opcode, cid, nsid, tuple(cdws) + (0,) * (6 - len(cdws)), dptr)  # type: ignore[arg-type]
    return _j(P.encode_capsule_cmd(sqe, data))


class Io:
    """An admin + I/O queue pair on a fresh fake target; ``burst`` feeds raw
    bytes to the I/O queue and returns everything it sent back."""

    def __init__(self, h: Any, cattr: int = 0) -> None:
        self.rpc = h.FakeRpc(nreactors=1)
        key = h.setup_target(self.rpc, bdev_blocks=BLOCKS)
        self.storage = self.rpc.bdevs["Malloc0"].storage
        self.target = DRIVER.target(self.rpc.reactors[0])
        admin = self._qp(key)
        admin.feed(P.encode_icreq())
        out = self._connect(h, admin, 0, 0xFFFF, 0)
        cntlid = spec.unpack_cqe(out[-24:], 8).result
        # Property Set CC.EN (fctype travels in the NSID bytes of the SQE)
        cc = spec.pack_sqe(0x7F, 2, spec.FCTYPE_PROPERTY_SET, (0, spec.PROP_CC, 0x460001, 0, 0, 0))
        admin.feed(_j(P.encode_capsule_cmd(cc)))
        self.rpc.pump()
        self.qp = self._qp(key)
        self.qp.feed(P.encode_icreq())
        out = self._connect(h, self.qp, 1, cntlid, cattr)
        assert spec.unpack_cqe(out[-24:], 8).status == 0
        # open the channel through the general path (first I/O)
        self.burst(_capsule(spec.IO_READ, 0, 1, (0, 0, 0), None))

    def _qp(self, key: str) -> TcpQpair:
        return TcpQpair(self.target, key, "127.0.0.1:1")

    def _connect(self, h: Any, qp: TcpQpair, qid: int, cntlid: int, cattr: int) -> bytes:
        d = bytearray(1024)
        d[0:16] = h.HOSTID
        struct.pack_into("<H", d, 16, cntlid)
        d[256 : 256 + len(h.SUBNQN)] = h.SUBNQN.encode()
        d[512 : 512 + len(h.HOSTNQN)] = h.HOSTNQN.encode()
        cdws = (qid << 16, 15 | (cattr << 16), 0)
        raw = _capsule(0x7F, 100, spec.FCTYPE_CONNECT, cdws, bytes(d))
        out = qp.feed(raw)
        self.rpc.pump()
        return _j(out + qp.take_output())

    def burst(self, raw: bytes) -> bytes:
        out = self.qp.feed(raw)
        self.rpc.pump()
        return _j(out + self.qp.take_output())

    def close(self) -> None:
        self.rpc.stop()


def _cmds(spec_list: list[tuple[Any, ...]]) -> bytes:
    raw = b""
    for kind, cid, slba, nlb, *extra in spec_list:
        if kind == "r":
            raw += _capsule(spec.IO_READ, cid, 1, (slba, 0, nlb - 1), None, *extra)
        else:
            data = bytes([(cid * 7 + i) & 0xFF for i in range(256)]) * (2 * nlb)
            fua = 1 << 30 if extra and extra[0] > 0 else 0  # FUA (CDW12 bit 30)
            raw += _capsule(spec.IO_WRITE, cid, 1, (slba, 0, (nlb - 1) | fua), data)
    return raw


def _run(
    h: Any, raw: bytes, fast: bool, monkeypatch: Any, cattr: int = 0, wt: bool = False
) -> tuple[bytes, bytes, int, list[tuple[int, bool]]]:
    io = Io(h, cattr)
    io.qp.write_through = wt  # Volatile Write Cache off on the controller
    try:
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(TcpQpair, "fast_ok", property(lambda self: False))
            before = io.target.stats["completed_nvme_io"]
            out = io.burst(raw)
            fua = io.rpc.bdevs["Malloc0"].fua_log
            return out, bytes(io.storage), io.target.stats["completed_nvme_io"] - before, fua
    finally:
        io.close()


# slba may be out of range; a read's SGL may be shorter or longer than its data
_cmd = st.tuples(
    st.sampled_from("rw"),
    st.integers(0, BLOCKS + 4),
    st.integers(1, 8),
    st.sampled_from([0, 0, -512, 512]),
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cmds=st.lists(_cmd, min_size=1, max_size=12),
    cattr=st.sampled_from([0, 4]),
    wt=st.booleans(),
)
def test_fast_path_output_identical(h, monkeypatch, cmds, cattr, wt) -> None:  # type: ignore[no-untyped-def]
    raw = _cmds([(k, i + 1, slba, nlb, x) for i, (k, slba, nlb, x) in enumerate(cmds)])
    fast = _run(h, raw, True, monkeypatch, cattr, wt)
    slow = _run(h, raw, False, monkeypatch, cattr, wt)
    assert fast == slow
    if wt:  # write-through: every write reached the channel as FUA
        assert all(f for _off, f in fast[3])


def test_burst_reads_writes_and_errors(h, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    raw = _cmds([("w", 1, 4, 2), ("r", 2, 4, 2), ("r", 3, BLOCKS, 1), ("r", 4, 0, 1)])
    out, storage, n, _fua = _run(h, raw, True, monkeypatch)
    pdus = P.PduReader(P.HOST)
    pdus.ic_done = True
    got = pdus.feed(out)
    # write resp; C2HData + resp; LBA out of range resp; C2HData + resp
    assert [p.type for p in got] == [5, 7, 5, 5, 7, 5]
    cqes = [spec.unpack_cqe(p.hdr, 8) for p in got if p.type == P.CAPSULE_RESP]
    assert [c.cid for c in cqes] == [1, 2, 3, 4]
    assert [c.sqhd for c in cqes] == [2, 3, 4, 5]  # one SQE consumed per command (+1 opening read)
    assert spec.split_status(cqes[2].status)[:2] == (0, spec.SC_LBA_OUT_OF_RANGE)
    written = bytes([(1 * 7 + i) & 0xFF for i in range(256)]) * 4
    assert storage[4 * 512 : 6 * 512] == written
    assert bytes(got[1].data) == written  # type: ignore[arg-type]
    assert n == 4


def test_success_flag_without_sq_flow_control(h, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    out, _s, _n, _f = _run(h, _cmds([("r", 1, 0, 1), ("r", 2, 1, 1)]), True, monkeypatch, cattr=4)
    r = P.PduReader(P.HOST)
    r.ic_done = True
    got = r.feed(out)
    assert [p.type for p in got] == [P.C2H_DATA, P.C2H_DATA]
    assert all(p.flags == P.FLAG_DATA_LAST | P.FLAG_DATA_SUCCESS for p in got)


@pytest.mark.parametrize("split", [1, 7, 100])
def test_fast_path_partial_pdus(h, monkeypatch, split) -> None:  # type: ignore[no-untyped-def]
    """Capsules cut at arbitrary points still give the same answers."""
    raw = _cmds([("w", 1, 0, 1), ("r", 2, 0, 1), ("r", 3, 2, 3)])
    io = Io(h)
    try:
        out = b"".join(io.burst(raw[i : i + split]) for i in range(0, len(raw), split))
    finally:
        io.close()
    assert out == _run(h, raw, False, monkeypatch)[0]


def test_read_above_max_io_size_is_refused(h, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """MDTS is advertised from max_io_size; a host that ignores it gets Data
    SGL Length Invalid from the fast path too, not the data."""
    import copy

    io = Io(h)
    io.qp.opts = copy.copy(io.qp.opts)
    io.qp.opts.max_io_size = 4096
    out = io.burst(_capsule(spec.IO_READ, 5, 1, (0, 0, 15), None))  # 16 blocks = 8 KiB
    cqe = spec.unpack_cqe(out[-16:], 0)
    assert cqe.cid == 5 and cqe.status == spec.ST_DATA_SGL_LENGTH_INVALID
    out = io.burst(_capsule(spec.IO_READ, 6, 1, (0, 0, 7), None))  # 4 KiB: fine
    assert out[0] == P.C2H_DATA and len(out) >= 4096


def _run_each(
    h: Any, caps: list[bytes], fast: bool, monkeypatch: Any, split: int, cattr: int = 0
) -> tuple[list[bytes], bytes, int]:
    """Per-command submission, as the Linux and SPDK hosts send: each capsule
    on its own (cut into ``split``-byte pieces when split > 0), its output
    taken before the next one arrives."""
    io = Io(h, cattr)
    try:
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(TcpQpair, "fast_ok", property(lambda self: False))
            before = io.target.stats["completed_nvme_io"]
            outs = []
            for cap in caps:
                step = split or len(cap)
                outs.append(b"".join(io.burst(cap[i : i + step]) for i in range(0, len(cap), step)))
            return outs, bytes(io.storage), io.target.stats["completed_nvme_io"] - before
    finally:
        io.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cmds=st.lists(_cmd, min_size=1, max_size=8),
    split=st.sampled_from([0, 0, 1, 9, 72]),
    cattr=st.sampled_from([0, 4]),
    dup=st.booleans(),
)
def test_fast_path_per_command_identical(h, monkeypatch, cmds, split, cattr, dup) -> None:  # type: ignore[no-untyped-def]
    """Every command fed alone (the receive buffer empties after each one:
    the fast path's early return) gives the same bytes, the same status per
    command and the same medium as the general path, also for out-of-range
    LBAs, SGL lengths that do not match, partial capsules and one CID for
    every command (legal: each completed before the next)."""
    caps = [
        _cmds([(k, 1 if dup else i + 1, slba, nlb, x)]) for i, (k, slba, nlb, x) in enumerate(cmds)
    ]
    fast = _run_each(h, caps, True, monkeypatch, split, cattr)
    slow = _run_each(h, caps, False, monkeypatch, split, cattr)
    assert fast == slow
    assert all(fast[0]), "every command got an answer before the next one was sent"
