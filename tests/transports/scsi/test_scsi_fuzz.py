from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scsi_testlib import I1, I2, Env

from blockfabric.transports.scsi import PrStore, ScsiDevice
from blockfabric.transports.scsi.cdb import parse_rw
from blockfabric.transports.scsi.mode import ModePages
from blockfabric.transports.scsi.sense import SenseError

KNOWN = [
    0x00,
    0x03,
    0x08,
    0x0A,
    0x12,
    0x15,
    0x16,
    0x17,
    0x1A,
    0x1B,
    0x25,
    0x28,
    0x2A,
    0x2E,
    0x2F,
    0x34,
    0x35,
    0x41,
    0x42,
    0x55,
    0x56,
    0x57,
    0x5A,
    0x5E,
    0x5F,
    0x88,
    0x89,
    0x8A,
    0x8E,
    0x8F,
    0x90,
    0x91,
    0x93,
    0x9E,
    0xA0,
    0xA3,
    0xA8,
    0xAA,
    0xAE,
    0xAF,
]


@st.composite
def cdbs(draw):
    op = draw(st.one_of(st.sampled_from(KNOWN), st.integers(0, 255)))
    rest = draw(st.binary(min_size=15, max_size=15))
    small = draw(st.booleans())
    if small:  # keep lengths small so the fuzzer exercises the data paths quickly
        rest = bytearray(rest)
        for i in (3, 4, 5, 6, 7, 8, 9, 10, 11):
            rest[i] &= 0x03
    return bytes([op]) + bytes(rest)


@settings(
    max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cdb=cdbs(),
    data=st.one_of(st.none(), st.binary(max_size=2048)),
    lun=st.sampled_from([0, 0, 0, 3]),
    second=st.booleans(),
)
def test_execute_never_raises(tmp_path_factory, cdb, data, lun, second) -> None:
    env = Env(tmp_path_factory.mktemp("f"))
    t = env.run(cdb, data=data, lun=lun, nexus=I2 if second else I1)
    assert t.status in (0, 2, 8, 0x18)
    if t.status == 2:
        assert len(t.sense) == 18 and t.sense[0] & 0x7F == 0x70 and t.sense[2] & 0xF
        assert t.sense[2] != 4, t  # internal failure = a bug in a handler
    else:
        assert t.sense == b""


@given(st.binary(min_size=16, max_size=16))
def test_parse_rw_total(cdb: bytes) -> None:
    try:
        lba, n, _ = parse_rw(cdb)
    except SenseError:
        return
    assert lba >= 0 and n >= 0


@given(st.binary(max_size=80), st.integers(0, 255))
def test_mode_select_parser(param: bytes, plen: int) -> None:
    m = ModePages()
    try:
        m.select(bytes([0x15, 0x10, 0, 0, plen, 0]), param, 512)
    except SenseError as e:
        assert e.key == 5


@given(st.binary(min_size=24, max_size=24), st.integers(0, 7), st.integers(0, 255))
def test_pr_out_fuzz(param: bytes, sa: int, scope_type: int) -> None:
    s = PrStore(None)
    d = ScsiDevice("x", s, power_on_ua=False)
    cdb = bytes([0x5F, sa, scope_type, 0, 0, 0, 0, 0, 24, 0])
    r = s.pr_out(0, I1, cdb, param)
    d.apply_pr_result(r)
    assert r.status in (0, 2, 0x18)
