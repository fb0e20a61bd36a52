"""Controller and connection tracepoints (nvmf group) and the NVMe/TCP
request phases of admin commands, on the in-process target: connect,
keep-alive expiry, controller destroy, disconnect (issue 13 item 1)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from blockfabric.shm import trace as tr
from blockfabric.tools import trace_cmd as tc
from blockfabric.transports.nvmf import spec


@pytest.fixture
def traced() -> Any:
    seg = tr.create_segment(f"nvtrace{os.getpid()}", 1, 1 << 14, tr.G_NVMF | tr.G_NVMF_TCP)
    assert not tr.TRACE.attached
    tr.TRACE.attach(seg, 0)  # this process's tracer: what the hooks test and write
    try:
        yield seg
    finally:
        tr.TRACE.detach()
        seg.unlink()


def test_keep_alive_expiry_is_traced(h: Any, traced: Any) -> None:
    rpc = h.FakeRpc(nreactors=1)
    rpc.start()
    try:
        key = h.setup_target(rpc, kas=1)
        host, _, port = key.rpartition(":")
        addr = (host, int(port))
        a = h.Client(addr)
        cntlid = a.admin_setup(kato=300)
        io = h.Client(addr)
        io.icreq()
        assert io.connect(qid=1, cntlid=cntlid).status == 0
        assert a.cmd(spec.ADMIN_KEEP_ALIVE)[0].status == 0
        assert a.is_closed(timeout=3.0) and io.is_closed(timeout=3.0)  # KATO 300 ms
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            recs = tr.snapshot(traced.buf).records
            if any(r.tpoint == tr.TP_QP_DISCONNECT and r.a0 == 1 for r in recs):
                break
            time.sleep(0.05)
        a.close()
        io.close()
    finally:
        rpc.stop()
    recs = tr.snapshot(traced.buf).records
    names = [r.name for r in recs if r.group == "nvmf"]
    for want in ("QPAIR_CONNECT", "CTRLR_CREATE", "KEEP_ALIVE_EXPIRED", "CTRLR_DESTROY"):
        assert want in names, names
    assert names.index("CTRLR_CREATE") < names.index("KEEP_ALIVE_EXPIRED")
    assert names.index("KEEP_ALIVE_EXPIRED") < names.index("CTRLR_DESTROY")
    kato = next(r for r in recs if r.tpoint == tr.TP_KATO_EXPIRED)
    assert (kato.obj, kato.a1) == (cntlid, 300)
    conns = [r for r in recs if r.tpoint == tr.TP_QP_CONNECT]
    assert sorted(r.a0 for r in conns) == [0, 1] and {r.a1 for r in conns} == {cntlid}
    assert sorted(r.a0 for r in recs if r.tpoint == tr.TP_QP_DISCONNECT) == [0, 1]
    # the admin commands (Connect, Keep Alive, ...) are requests with phases
    reqs = [q for q in tc.requests(recs) if q.complete]
    ka = [q for q in reqs if q.opc == spec.ADMIN_KEEP_ALIVE]
    assert ka and ka[0].order == ["PDU_RECV", "REQ_NEW", "BDEV_DONE", "RESP_SENT"]
