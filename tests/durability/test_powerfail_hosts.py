"""Power failure with our own hosts (issue 9 item 2): a wcache bdev (a
volatile write-cache model) in front of a malloc bdev on a 2-reactor target,
exported over NVMe/TCP (host library, 2 I/O queues: one per reactor) and
iSCSI (raw initiator).

Sequence, one region of 64 blocks per kind of write, written in 8 pieces:
  B plain writes, then an acknowledged flush (on the other NVMe queue)
  A writes with FUA
  C plain writes, nothing after them
  power_fail                      -> A and B survive, C is lost (no reorder)
  write cache off (VWC=0 / WCE=0), D plain writes
  power_fail                      -> D survives (write-through)
  write cache on again, E plain writes
  power_fail                      -> E is lost
With ``ignore_fua`` (the wcache's test double that treats FUA and flushes as
plain cached writes) the same sequence loses A and B: the test can fail.
With ``reorder`` a random subset of the dropped writes reaches the medium
first, in random order: what must survive still does.
"""

from __future__ import annotations

import os
from typing import Any

import dlib
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

REGION = 64  # blocks
PIECE = 8  # blocks per write
LBA = {"A": 0, "B": 1024, "C": 2048, "D": 3072, "E": 4096}


def _write_region(h: Any, name: str, fua: bool = False) -> bytes:
    data = os.urandom(REGION * h.bs)
    step = PIECE * h.bs
    for i in range(REGION // PIECE):
        h.write(LBA[name] + i * PIECE, data[i * step : (i + 1) * step], fua=fua)
    return data


def _lost_blocks(h: Any, name: str, want: bytes) -> int:
    got = h.read(LBA[name], REGION)
    bs = h.bs
    return sum(got[i * bs : (i + 1) * bs] != want[i * bs : (i + 1) * bs] for i in range(REGION))


def _host(proto: str, d: Any, port: int) -> Any:
    if proto == "nvme":
        dlib.export_nvmf(d, port, "WC0")
        return dlib.NvmeHost(port)
    dlib.export_iscsi(d, port, {dlib.IQN_NAME: "WC0"})
    return dlib.IscsiHost(port)


def _sequence(d: Any, h: Any, reorder: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    b = _write_region(h, "B")
    h.flush()
    a = _write_region(h, "A", fua=True)
    c = _write_region(h, "C")
    out["dirty_before"] = dlib.wcache_stats(d)["dirty_writes"]
    out["pf1"] = dlib.power_fail(d, reorder=reorder, seed=7)
    out["lost"] = {n: _lost_blocks(h, n, v) for n, v in (("A", a), ("B", b), ("C", c))}
    h.set_write_cache(False)
    dd = _write_region(h, "D")
    out["pf2"] = dlib.power_fail(d, reorder=reorder, seed=8)
    out["lost"]["D"] = _lost_blocks(h, "D", dd)
    h.set_write_cache(True)
    e = _write_region(h, "E")
    out["pf3"] = dlib.power_fail(d, reorder=reorder, seed=9)
    out["lost"]["E"] = _lost_blocks(h, "E", e)
    return out


@pytest.mark.parametrize("reorder", [False, True], ids=["in-order", "reorder"])
@pytest.mark.parametrize("proto", ["nvme", "iscsi"])
def test_power_fail_keeps_what_was_made_durable(
    daemon_factory: Any, proto: str, reorder: bool
) -> None:
    d = daemon_factory(mask="0x3").start()
    dlib.wcache_volume(d, 16)
    port = dlib.free_port()
    h = _host(proto, d, port)
    try:
        if proto == "nvme":
            assert h.vwc_present, "Identify Controller must report a volatile write cache"
        else:
            assert h.caching_page()[2] & 0x04, "WCE must be on by default"
        r = _sequence(d, h, reorder)
    finally:
        h.close()
    print(f"{proto} reorder={reorder}: {r}")
    lost = r["lost"]
    assert lost["A"] == 0, f"FUA writes lost: {r}"
    assert lost["B"] == 0, f"flushed writes lost: {r}"
    assert lost["D"] == 0, f"write-through writes lost: {r}"
    # the cache really was volatile: the unprotected writes were dropped
    assert r["dirty_before"] >= REGION // PIECE, r
    assert r["pf1"]["dropped"] >= 1 and r["pf3"]["dropped"] >= 1, r
    if not reorder:
        assert lost["C"] == REGION and lost["E"] == REGION, r
        assert r["pf2"]["dropped"] == 0, r
    log = d.log()
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("proto", ["nvme", "iscsi"])
def test_power_fail_with_fua_ignored_loses_data(daemon_factory: Any, proto: str) -> None:
    """The same sequence against a cache that ignores FUA and flushes: the
    FUA and the flushed writes are lost, so the test above can fail."""
    d = daemon_factory(mask="0x3").start()
    dlib.wcache_volume(d, 16, ignore_fua=True)
    port = dlib.free_port()
    h = _host(proto, d, port)
    try:
        b = _write_region(h, "B")
        h.flush()
        a = _write_region(h, "A", fua=True)
        dlib.power_fail(d)
        lost = {"A": _lost_blocks(h, "A", a), "B": _lost_blocks(h, "B", b)}
    finally:
        h.close()
    print(f"{proto} ignore_fua: lost {lost}")
    assert lost["A"] == REGION and lost["B"] == REGION, lost
