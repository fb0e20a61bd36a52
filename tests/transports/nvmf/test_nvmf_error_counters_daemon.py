"""The NVMe/TCP error counters behind the Prometheus metrics (issue 13): a
header digest error, a data digest error, an H2CTermReq and a keep-alive
expiry, each provoked against a real daemon, are counted once in
nvmf_get_stats (and so in /metrics)."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from blockfabric.transports.nvmf import pdu as P
from blockfabric.transports.nvmf import spec

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

NQN = "nqn.2016-06.io.blockfabric:errors"
HOST = "nqn.2014-08.org.nvmexpress:uuid:44444444-0000-0000-0000-00000000000a"
KEYS = ("c2h_term_reqs", "h2c_term_reqs", "hdgst_errors", "ddgst_errors", "keep_alive_expiries")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stats(d: Any) -> dict[str, int]:
    out = dict.fromkeys(KEYS, 0)
    for g in d.rpc("nvmf_get_stats")["poll_groups"]:
        for k in KEYS:
            out[k] += int(g[k])
    return out


def _flat(bufs: Any) -> bytearray:
    return bytearray(b"".join(bytes(b) for b in bufs))


@pytest.fixture
def target(daemon_factory: Any) -> tuple[Any, tuple[str, int]]:
    port = _free_port()
    d = daemon_factory().start()
    d.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 8192, "block_size": 512})
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}})
    addr = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    d.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": addr})
    return d, ("127.0.0.1", port)


def _wait_for(d: Any, key: str, want: int, timeout: float = 20.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    st = _stats(d)
    while time.monotonic() < deadline and st[key] < want:
        time.sleep(0.1)
        st = _stats(d)
    return st


def test_error_counters(target: tuple[Any, tuple[str, int]], h: Any) -> None:
    d, addr = target
    assert _stats(d) == dict.fromkeys(KEYS, 0)

    # a header digest mismatch: fatal, C2HTermReq, connection closed
    c = h.Client(addr, hdgst=True)
    c.icreq()
    sgl0 = spec.pack_sgl(0, 0, spec.SGL_TYPE_TRANSPORT)
    sqe = spec.pack_sqe(spec.FABRICS_OPCODE, 1, 0, (0,) * 6, sgl0, 0)
    raw = _flat(P.encode_capsule_cmd(sqe, None, hdgst=True))
    raw[72] ^= 0xFF  # the first byte of the header digest
    c.send(bytes(raw))
    with pytest.raises(Exception, match=r"C2HTermReq FES 0x3 FEI 72"):  # FES_HDGST_ERROR
        c.recv_pdu()
    assert c.is_closed()
    st = _wait_for(d, "hdgst_errors", 1)
    assert st["hdgst_errors"] == 1 and st["c2h_term_reqs"] == 1

    # a data digest mismatch: the one command fails (Transient Transport Error)
    a = h.Client(addr, ddgst=True)
    cntlid = a.admin_setup(subnqn=NQN, hostnqn=HOST)
    io = h.Client(addr, ddgst=True)
    io.icreq()
    assert io.connect(subnqn=NQN, hostnqn=HOST, qid=1, cntlid=cntlid).status == 0
    data = b"\xa5" * 512
    sgl = spec.pack_sgl(0, len(data), spec.SGL_TYPE_INCAPSULE)
    cid = io.next_cid()
    wsqe = spec.pack_sqe(0x01, cid, 1, (0,) * 6, sgl, spec.PSDT_SGL << 6)  # Write LBA 0
    raw = _flat(P.encode_capsule_cmd(wsqe, data, ddgst=True))
    raw[-1] ^= 0xFF  # the data digest
    io.send(bytes(raw))
    cqe, _ = io.wait(cid)
    assert spec.split_status(cqe.status) == spec.split_status(spec.ST_TRANSIENT_TRANSPORT_ERROR)
    st = _wait_for(d, "ddgst_errors", 1)
    assert st["ddgst_errors"] == 1 and st["c2h_term_reqs"] == 1  # not fatal
    io.close()
    a.close()

    # the host terminates: H2CTermReq received
    t = h.Client(addr)
    t.icreq()
    t.send(P.encode_term_req(P.H2C_TERM_REQ, P.FES_INVALID_HEADER_FIELD, 0))
    assert t.is_closed()
    st = _wait_for(d, "h2c_term_reqs", 1)
    assert st["h2c_term_reqs"] == 1

    # a controller whose host stops sending keep-alives (KATO 1 s)
    k = h.Client(addr)
    k.admin_setup(subnqn=NQN, hostnqn=HOST, kato=1000)
    st = _wait_for(d, "keep_alive_expiries", 1, timeout=30)
    assert st["keep_alive_expiries"] == 1
    k.close()
    assert _stats(d)["c2h_term_reqs"] >= 1
