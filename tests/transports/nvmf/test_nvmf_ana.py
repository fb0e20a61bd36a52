"""ANA (issue 12 item 1): per listener x ANA group state, the ANA log page
(with RGO), the ANA change AEN, the transition time, the path-related I/O
statuses, the Identify fields, the RPCs and save_config.

The pure parts of transports/nvmf/ana.py are tested directly; the rest runs
against the in-process target (FakeRpc: two reactors on one loop, real TCP
sockets) with our own host library (transports/nvmf_host) as the host.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import pytest

from blockfabric.control.errors import RpcError
from blockfabric.transports.nvmf import ana
from blockfabric.transports.nvmf import spec as S
from blockfabric.transports.nvmf_host.controller import Controller, parse_ana_log
from blockfabric.transports.nvmf_host.queue import NvmeStatusError

NQN = "nqn.2016-06.io.spdk:ana1"


# ------------------------------------------------------------------ pure
def test_set_state_counts_and_transition() -> None:
    a = ana.new_listener_ana()
    view = ana.ListenerAna(a)
    assert view.state(1, 0.0) == ana.OPTIMIZED and view.change_count(0.0) == 0
    ana.set_state(a, "inaccessible", 2, now=100.0)
    v = ana.ListenerAna(a)
    assert (v.state(1, 100.0), v.state(2, 100.0)) == (ana.OPTIMIZED, ana.INACCESSIBLE)
    assert v.change_count(100.0) == 1 and v.refuses_io(100.0)
    ana.set_state(a, "non_optimized", None, transition_ms=500, now=200.0)
    v = ana.ListenerAna(a)
    assert v.state(2, 200.1) == ana.CHANGE and v.state(7, 200.4) == ana.CHANGE
    assert v.change_count(200.1) == 2
    assert v.state(2, 200.6) == ana.NON_OPTIMIZED  # the per-group override was replaced
    assert v.change_count(200.6) == 3 and not v.refuses_io(200.6)
    # a later set settles the finished transition first (its count kept)
    ana.set_state(a, "optimized", 3, now=300.0)
    assert a["chgcnt"] == 4 and a["changing"] is None
    with pytest.raises(ValueError):
        ana.set_state(a, "change")
    with pytest.raises(ValueError):
        ana.set_state(a, "optimized", transition_ms=ana.MAX_TRANSITION_MS + 1)


def test_log_page_layout_and_rgo() -> None:
    a = ana.new_listener_ana()
    ana.set_state(a, "inaccessible", 5, now=1.0)
    v = ana.ListenerAna(a)

    class Ns:
        def __init__(self, nsid: int, grp: int) -> None:
            self.nsid, self.anagrpid = nsid, grp

    groups = ana.groups_of([Ns(3, 5), Ns(1, 1), Ns(2, 5)])
    assert groups == {1: [1], 5: [2, 3]}
    page = ana.log_page(v, groups, rgo=False, now=2.0)
    assert len(page) == 16 + 32 + 4 + 32 + 8
    chg, n = struct.unpack_from("<QH", page, 0)
    assert (chg, n) == (1, 2)
    log = parse_ana_log(page)
    assert [(g.grpid, g.state, g.nsids) for g in log.groups] == [
        (1, ana.OPTIMIZED, [1]),
        (5, ana.INACCESSIBLE, [2, 3]),
    ]
    rgo = parse_ana_log(ana.log_page(v, groups, rgo=True, now=2.0))
    assert len(ana.log_page(v, groups, rgo=True, now=2.0)) == 16 + 64
    assert [(g.grpid, g.nsids) for g in rgo.groups] == [(1, []), (5, [])]


def test_io_statuses_are_path_related_and_retryable() -> None:
    for st, sc in ((ana.ST_ANA_INACCESSIBLE, 2), (ana.ST_ANA_TRANSITION, 3)):
        sct, code, dnr = S.split_status(st)
        assert (sct, code, dnr) == (S.SCT_PATH, sc, False)


# -------------------------------------------------------------- RPC layer
def _ana_target(h: Any, rpc: Any, ngroups: int = 1) -> str:
    rpc.bdevs["Malloc0"] = h.MemBdev("Malloc0", 2048)
    rpc.bdevs["Malloc1"] = h.MemBdev("Malloc1", 2048)
    rpc.rpc("nvmf_create_transport", {"trtype": "tcp"})
    rpc.rpc(
        "nvmf_create_subsystem",
        {"nqn": NQN, "allow_any_host": True, "ana_reporting": True, "max_cntlid": 100},
    )
    rpc.rpc(
        "nvmf_subsystem_add_ns",
        {
            "nqn": NQN,
            "namespace": {
                "bdev_name": "Malloc0",
                "anagrpid": 3,
                "uuid": "8a1f7f3c-7f5b-4d55-9b1e-0c5e7b0c2a11",
                "nguid": "8A1F7F3C7F5B4D559B1E0C5E7B0C2A11",
                "eui64": "0011223344556677",
            },
        },
    )
    if ngroups > 1:
        rpc.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc1"}})
    rpc.rpc(
        "nvmf_subsystem_add_listener",
        {"nqn": NQN, "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "0"}},
    )
    return str(rpc.nvmf.subsystems[NQN]["listeners"][0]["trsvcid"])


def _la(port: str) -> dict[str, str]:
    return {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port}


def _err(rpc: Any, method: str, params: Any) -> str:
    with pytest.raises(RpcError) as ei:
        rpc.rpc(method, params)
    return str(ei.value)


def test_rpcs_validation_get_listeners_and_save_config(h: Any) -> None:
    rpc = h.FakeRpc()
    try:
        port = _ana_target(h, rpc, ngroups=2)
        lis = rpc.rpc("nvmf_subsystem_get_listeners", {"nqn": NQN})
        assert lis[0]["ana_states"] == [
            {"ana_group": 2, "ana_state": "optimized"},
            {"ana_group": 3, "ana_state": "optimized"},
        ]
        ns = rpc.rpc("nvmf_get_subsystems", {"nqn": NQN})[0]["namespaces"]
        assert [(n["nsid"], n["anagrpid"]) for n in ns] == [(1, 3), (2, 2)]
        assert ns[0]["uuid"] == "8a1f7f3c-7f5b-4d55-9b1e-0c5e7b0c2a11"
        assert ns[0]["nguid"] == "8A1F7F3C7F5B4D559B1E0C5E7B0C2A11"
        p = {"nqn": NQN, "listen_address": _la(port), "ana_state": "inaccessible", "anagrpid": 3}
        assert rpc.rpc("nvmf_subsystem_listener_set_ana_state", p) is True
        lis = rpc.rpc("nvmf_subsystem_get_listeners", {"nqn": NQN})
        assert [s["ana_state"] for s in lis[0]["ana_states"]] == ["optimized", "inaccessible"]
        # refusals: bad state, bad group, unknown listener, ANA off, bad anagrpid at add_ns
        assert "ana_state" in _err(
            rpc, "nvmf_subsystem_listener_set_ana_state", {**p, "ana_state": "change"}
        )
        assert "ANA group" in _err(
            rpc, "nvmf_subsystem_listener_set_ana_state", {**p, "anagrpid": 33}
        )
        assert "not found" in _err(
            rpc,
            "nvmf_subsystem_listener_set_ana_state",
            {**p, "listen_address": _la("1")},
        )
        assert "transition_ms" in _err(
            rpc, "nvmf_subsystem_listener_set_ana_state", {**p, "transition_ms": 20000}
        )
        rpc.rpc("nvmf_create_subsystem", {"nqn": NQN + "x"})
        assert "ANA reporting is disabled" in _err(
            rpc, "nvmf_subsystem_listener_set_ana_state", {**p, "nqn": NQN + "x"}
        )
        rpc.bdevs["Malloc2"] = h.MemBdev("Malloc2", 64)
        assert "ANA group ID" in _err(
            rpc,
            "nvmf_subsystem_add_ns",
            {"nqn": NQN, "namespace": {"bdev_name": "Malloc2", "anagrpid": 0x10000}},
        )
        # the default (every group) at add_listener, then save_config replays it all
        rpc.rpc(
            "nvmf_subsystem_add_listener",
            {
                "nqn": NQN,
                "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "0"},
                "ana_state": "non_optimized",
            },
        )
        before = rpc.rpc("nvmf_subsystem_get_listeners", {"nqn": NQN})
        assert [s["ana_state"] for s in before[1]["ana_states"]] == ["non_optimized"] * 2
        saved = rpc.nvmf.save_config()
    finally:
        rpc.stop()
    names = [c["method"] for c in saved]
    assert "nvmf_subsystem_listener_set_ana_state" in names
    again = h.FakeRpc()
    try:
        again.bdevs["Malloc0"] = h.MemBdev("Malloc0", 2048)
        again.bdevs["Malloc1"] = h.MemBdev("Malloc1", 2048)
        for c in saved:
            again.rpc(c["method"], c["params"])
        after = again.rpc("nvmf_subsystem_get_listeners", {"nqn": NQN})
        assert [x["ana_states"] for x in after] == [x["ana_states"] for x in before]
        ns2 = again.rpc("nvmf_get_subsystems", {"nqn": NQN})[0]["namespaces"]
        assert [(n["nsid"], n["anagrpid"]) for n in ns2] == [(1, 3), (2, 2)]
    finally:
        again.stop()


# ----------------------------------------------------- host end to end
@pytest.fixture
def ana_target(h: Any):  # type: ignore[no-untyped-def]
    rpc = h.FakeRpc(nreactors=2)
    rpc.start()
    try:
        port = _ana_target(h, rpc)
        yield rpc, port
    finally:
        rpc.stop()


def _set(rpc: Any, port: str, state: str, **kw: Any) -> None:
    rpc.rpc(
        "nvmf_subsystem_listener_set_ana_state",
        {"nqn": NQN, "listen_address": _la(port), "ana_state": state, **kw},
    )


def test_host_identify_log_aen_and_io_statuses(ana_target: Any) -> None:
    rpc, port = ana_target
    with Controller("127.0.0.1", port, NQN, nr_io_queues=2, timeout=15.0) as c:
        c.connect()
        raw = c.identify(S.CNS_CTRL)
        assert raw[76] & 0x0B == 0x0B  # CMIC: multi-port, multi-controller, ANA reporting
        assert struct.unpack_from("<I", raw, 92)[0] & ana.AEC_ANA  # OAES: ANA change notices
        # NVMe 1.4 Figure 247: HMMAXD 336-337, NSETIDMAX 338-339, ENDGIDMAX 340-341,
        # ANATT 342, ANACAP 343, ANAGRPMAX 344-347, NANAGRPID 348-351, PELS 352-355
        assert struct.unpack_from("<HHH", raw, 336) == (0, 0, 0)
        assert raw[342] == ana.ANATT_S and raw[343] == ana.ANACAP
        gmax, ngrp = struct.unpack_from("<II", raw, 344)
        assert struct.unpack_from("<I", raw, 352)[0] == 0  # PELS
        mnan = struct.unpack_from("<I", raw, 540)[0]
        nn = struct.unpack_from("<I", raw, 516)[0]
        assert gmax == ngrp == 32 and 0 < mnan <= nn  # Linux refuses MNAN 0 or > NN
        # Linux reads the whole log in one command: it must fit in MDTS
        assert 16 + ngrp * 32 + mnan * 4 <= (1 << raw[77]) * 4096
        idns = c.identify(S.CNS_NS, 1)
        assert struct.unpack_from("<I", idns, 92)[0] == 3 and idns[30] & 1  # ANAGRPID, NMIC
        sup = c.get_log_page(S.LID_SUPPORTED_LOGS, 1024)
        assert struct.unpack_from("<I", sup, ana.LID_ANA * 4)[0] & 1
        log = c.ana_log()
        assert [(g.grpid, g.state, g.nsids) for g in log.groups] == [(3, ana.OPTIMIZED, [1])]
        assert [g.nsids for g in c.ana_log(rgo=True).groups] == [[]]
        data = bytes(range(256)) * 2
        c.write(1, 0, data, 512)
        # the AEN is enabled like Linux does it, then the path is made inaccessible
        c.set_features(S.FID_ASYNC_EVENT_CONFIG, ana.AEC_ANA | S.AEC_NS_ATTR)
        assert c.get_features(S.FID_ASYNC_EVENT_CONFIG) & ana.AEC_ANA
        box = c.async_event_request()
        _set(rpc, port, "inaccessible")
        assert c.wait_async_event(box) == ana.AEN_DW0
        log = c.ana_log()
        assert log.state_of(3) == ana.INACCESSIBLE and log.chgcnt == 1
        with pytest.raises(NvmeStatusError) as ei:
            c.write(1, 0, data, 512)  # in capsule: the TCP fast path must refuse it too
        assert S.split_status(ei.value.status)[:2] == (S.SCT_PATH, ana.SC_ANA_INACCESSIBLE)
        with pytest.raises(NvmeStatusError) as ei:
            c.read(1, 0, 1, 512, q=1)
        assert S.split_status(ei.value.status)[:2] == (S.SCT_PATH, ana.SC_ANA_INACCESSIBLE)
        # a transition: ANA Change (I/O: ANA Transition), then optimized with a second AEN
        box = c.async_event_request()
        _set(rpc, port, "optimized", transition_ms=1500)
        assert c.wait_async_event(box) == ana.AEN_DW0
        box = c.async_event_request()  # armed again once the log was read without RAE
        assert c.ana_log().state_of(3) == ana.CHANGE
        with pytest.raises(NvmeStatusError) as ei:
            c.read(1, 0, 1, 512)
        assert S.split_status(ei.value.status)[:2] == (S.SCT_PATH, ana.SC_ANA_TRANSITION)
        assert c.wait_async_event(box, timeout=10) == ana.AEN_DW0  # the transition ended
        assert c.ana_log().state_of(3) == ana.OPTIMIZED
        assert c.read(1, 0, 1, 512) == data[:512]
        # non-optimized still serves I/O
        _set(rpc, port, "non_optimized", anagrpid=3)
        t0 = time.monotonic()
        while c.ana_log().state_of(3) != ana.NON_OPTIMIZED and time.monotonic() - t0 < 5:
            time.sleep(0.05)
        assert c.read(1, 0, 1, 512, q=1) == data[:512]


def test_ana_log_without_ana_reporting_is_invalid(target: Any) -> None:
    rpc, (host, port) = target
    with Controller(host, port, "nqn.2016-06.io.spdk:cnode1") as c:
        c.connect()
        assert not c.identify(S.CNS_CTRL)[76] & ana.CMIC_ANA
        with pytest.raises(NvmeStatusError, match="Invalid Log Page"):
            c.ana_log()
