"""NVMe over FC end to end: a real daemon (2 reactors), the loopback LLD, our host.

Link services, I/O on 2 queues with data checked, discovery over FC, perf
--verify with 2 I/O queues (2 worker processes), bad link services rejected
with the right reason, and cleanup when the host's paths go away."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fclib import HOSTADDR, HOSTNQN, NQN, OTHER, TRADDR, _ctrl, _wait  # noqa: E402

from blockfabric.transports.fc import frame as F
from blockfabric.transports.fc.addr import parse_traddr
from blockfabric.transports.nvmf import fc_ls as LS
from blockfabric.transports.nvmf import spec as S
from blockfabric.transports.nvmf_host.controller import Controller
from blockfabric.transports.nvmf_host.fc import FcBlockingQueue, FcLsRejected


def test_fc_listener_transport_and_qpairs(fcd: Any) -> None:
    tr = [t for t in fcd.rpc("nvmf_get_transports") if t["trtype"] == "FC"]
    assert tr and tr[0]["max_queue_depth"] == 128 and tr[0]["in_capsule_data_size"] == 0
    assert tr[0]["max_io_size"] == 65536 and tr[0]["lld"] == "loopback"
    li = fcd.rpc("nvmf_subsystem_get_listeners", {"nqn": NQN})
    assert li[0]["address"]["trtype"] == "FC" and li[0]["address"]["traddr"] == TRADDR
    sock = F.socket_path(parse_traddr(TRADDR))
    assert os.path.exists(sock)
    c = _ctrl(2)
    try:
        ic = c.identify_controller()
        assert ic.icd_max == 0  # IOCCSZ 4: no in-capsule data over FC
        data = os.urandom(64 * 1024)  # max_io_size: one transfer-ready, pool buffers
        for q in (0, 1):
            c.write(1, 128 * q, data, 512, q=q)
        for q in (0, 1):
            assert c.read(1, 128 * (1 - q), 128, 512, q=q) == data
        c.flush(1, q=1)
        c.write_zeroes(1, 0, 8, q=0)
        assert c.read(1, 0, 8, 512, q=1) == bytes(4096)
        with pytest.raises(Exception, match="LBA Out of Range"):
            c.read(1, 16384, 1, 512)
        qps = fcd.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN})
        assert sorted(q["qid"] for q in qps) == [0, 1, 2]
        for q in qps:
            assert q["listen_address"] == {
                "trtype": "FC",
                "adrfam": "FC",
                "traddr": TRADDR,
                "trsvcid": "none",
            }
            assert q["peer_address"]["traddr"] == HOSTADDR
        # all paths of the nexus are on one reactor (the association's home)
        assert len({q["thread"] for q in qps}) == 1
        assert c.assoc_id and all(q["fc"]["association_id"] == f"{c.assoc_id:#x}" for q in qps)
    finally:
        c.close()
    _wait(lambda: not fcd.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN}), what="qpairs gone")
    assert not fcd.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN})
    stats = fcd.rpc("nvmf_get_stats")
    fc = [t for pg in stats["poll_groups"] for t in pg["transports"] if t["trtype"] == "FC"]
    assert len(fc) == 2  # one per poll group (reactor)


def test_fc_discovery(fcd: Any) -> None:
    c = Controller(
        TRADDR, "none", S.NVME_DISC_SUBSYS_NAME, hostnqn=HOSTNQN, trtype="fc", host_traddr=HOSTADDR
    ).connect()
    try:
        _gen, entries = c.discovery_log()
    finally:
        c.close()
    by_nqn = {e.subnqn: e for e in entries}
    assert NQN in by_nqn and OTHER not in by_nqn  # fc2 has no FC listener
    e = by_nqn[NQN]
    assert (e.trtype, e.adrfam) == (S.TRTYPE_FC, 4)
    assert e.traddr == TRADDR and e.trsvcid == "none"


def test_fc_bad_link_services(fcd: Any) -> None:
    # Create I/O Connection naming an association that does not exist
    with pytest.raises(FcLsRejected) as ei:
        FcBlockingQueue(
            TRADDR, HOSTADDR, 1, 32, 5.0, NQN, HOSTNQN, bytes(16), assoc_id=0x1234 << 16
        )
    assert (ei.value.reason, ei.value.explanation) == (LS.RJT_RC_INV_ASSOC, LS.RJT_EXP_NONE)
    # Create Association for a subsystem that does not exist / does not listen here
    for nqn in ("nqn.2016-06.io.blockfabric:nope", OTHER):
        with pytest.raises(FcLsRejected) as ei:
            FcBlockingQueue(TRADDR, HOSTADDR, 0, 32, 5.0, nqn, HOSTNQN, bytes(16))
        assert (ei.value.reason, ei.value.explanation) == (
            LS.RJT_RC_INV_PARAM,
            LS.RJT_EXP_INV_SUBNQN,
        )
    # an admin SQ deeper than max_aq_depth (32)
    with pytest.raises(FcLsRejected) as ei:
        FcBlockingQueue(TRADDR, HOSTADDR, 0, 64, 5.0, NQN, HOSTNQN, bytes(16))
    assert ei.value.explanation == LS.RJT_EXP_INV_SQSIZE
    # an association of another host port is not this host port's to use
    c = _ctrl(0)
    try:
        with pytest.raises(FcLsRejected) as ei:
            FcBlockingQueue(
                TRADDR,
                "nn-0x20000090fa94beef:pn-0x10000090fa94beef",
                1,
                32,
                5.0,
                assoc_id=c.assoc_id,
            )
        assert ei.value.reason == LS.RJT_RC_INV_ASSOC
        # a wrong port name in the login: refused before any link service
        with pytest.raises(Exception, match="no FC-NVMe target port"):
            path = F.socket_path(parse_traddr(TRADDR))
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(path)
            wrong = parse_traddr("nn-0x20000090fa94ffff:pn-0x10000090fa94ffff")
            s.sendall(F.encode(F.T_LOGIN, 0, parse_traddr(HOSTADDR).pack() + wrong.pack()))
            fr = F.FrameReader(4096)
            got: list[F.Frame] = []
            while not got:
                b = s.recv(4096)
                assert b
                got = fr.feed(b)
            s.close()
            assert got[0].type == F.T_LOGIN_RJT
            raise RuntimeError(bytes(got[0].payload).decode())
        # the good association still works after all that
        assert c.identify_controller().subnqn == NQN
    finally:
        c.close()
    stats = fcd.rpc("nvmf_get_stats")
    rejects = sum(
        t.get("fc_ls_rejects", 0)
        for pg in stats["poll_groups"]
        for t in pg["transports"]
        if t["trtype"] == "FC"
    )
    assert rejects >= 5


def test_fc_garbage_on_a_path_only_closes_it(fcd: Any) -> None:
    c = _ctrl(1)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(F.socket_path(parse_traddr(TRADDR)))
        s.sendall(bytes([0xEE]) * 64)  # not a frame: the path goes down
        assert s.recv(100) == b""
        s.close()
        assert c.read(1, 0, 8, 512) is not None  # the controller is untouched
    finally:
        c.close()


def test_fc_connection_loss_cleans_up(fcd: Any) -> None:
    c = _ctrl(2)
    assert len(fcd.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN})) == 3
    # the host vanishes: its paths close without a Disconnect LS
    for bq in [*c.io, c.admin]:
        assert bq is not None
        bq.sock.close()
    c.io, c.admin = [], None
    _wait(lambda: not fcd.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN}), what="qpairs gone")
    _wait(lambda: not fcd.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN}), what="ctrlr gone")
    st = fcd.rpc("iobuf_get_stats")
    assert all(r["in_use"] == 0 for r in st)
    # one I/O path lost: only that queue goes, the association lives on
    c = _ctrl(2)
    try:
        c.io[1].sock.close()
        _wait(
            lambda: len(fcd.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN})) == 2,
            what="one queue gone",
        )
        assert c.read(1, 0, 8, 512, q=0) is not None
    finally:
        c.io = c.io[:1]
        c.close()
    _wait(lambda: not fcd.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN}), what="qpairs gone")


def test_fc_perf_verify_two_queues(fcd: Any, tmp_path: Path) -> None:
    out = tmp_path / "perf.json"
    trid = f"trtype:FC traddr:{TRADDR} subnqn:{NQN} hostaddr:{HOSTADDR}"
    args = ["-r", trid, "-q", "8", "-o", "4096", "-w", "randrw", "-M", "50", "-t", "3"]
    args += ["-P", "2", "--verify", "--json", str(out), "--quiet"]
    p = subprocess.run(
        [sys.executable, "-m", "blockfabric.tools.cli", "perf", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    doc = json.loads(out.read_text())
    print(json.dumps({k: v for k, v in doc.items() if k != "workers"})[:2000])
    ws = doc["workers"]
    assert sorted(w["qid"] for w in ws) == [1, 2]
    for w in ws:
        assert w["errors"] == 0 and w["miscompares"] == 0 and w["ios"] > 0, w
    assert doc["total"]["ios"] == sum(w["ios"] for w in ws)


def test_fc_rpc_cli_forms(
    daemon_factory: Any, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPDK's rpc.py forms: `nvmf_create_transport -t FC ...` and
    `nvmf_subsystem_add_listener NQN -t fc -a nn-0x..:pn-0x..` (no -s)."""
    monkeypatch.setenv("BLOCKFABRIC_RUN_DIR", str(run_dir))
    d = daemon_factory(mask="0x1").start()

    def rpc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return d.cli("rpc", "-s", d.rpc_addr, *args, check=check)

    bad = rpc("nvmf_create_transport", "-t", "FC", "--lld", "hba0", check=False)
    assert bad.returncode != 0 and "no FC low-level driver 'hba0'" in bad.stdout + bad.stderr
    bad = rpc("nvmf_create_transport", "-t", "FC", "-c", "4096", check=False)
    assert bad.returncode != 0 and "in_capsule_data_size" in bad.stdout + bad.stderr
    rpc("nvmf_create_transport", "-t", "FC", "--lld", "loopback", "-q", "64", "-i", "131072")
    rpc("bdev_malloc_create", "-b", "M1", "8", "512")
    rpc("nvmf_create_subsystem", NQN, "-a")
    rpc("nvmf_subsystem_add_ns", NQN, "M1")
    for traddr in ("nn-0x1:pn-0x2", "pn-0x10000090fa942779:nn-0x20000090fa942779"):
        bad = rpc("nvmf_subsystem_add_listener", NQN, "-t", "fc", "-a", traddr, check=False)
        assert bad.returncode != 0 and "traddr" in bad.stdout + bad.stderr
    bad = rpc(
        "nvmf_subsystem_add_listener", NQN, "-t", "fc", "-a", TRADDR, "-s", "4420", check=False
    )
    assert bad.returncode != 0 and "trsvcid" in bad.stdout + bad.stderr
    rpc(
        "nvmf_subsystem_add_listener",
        NQN,
        "-t",
        "fc",
        "-a",
        TRADDR.upper().replace("NN-0X", "nn-0x").replace("PN-0X", "pn-0x"),
    )
    li = json.loads(rpc("nvmf_subsystem_get_listeners", NQN).stdout)
    assert li[0]["address"] == {"trtype": "FC", "adrfam": "FC", "traddr": TRADDR, "trsvcid": "none"}
    tr = [t for t in json.loads(rpc("nvmf_get_transports").stdout) if t["trtype"] == "FC"][0]
    assert (tr["max_queue_depth"], tr["max_io_size"], tr["lld"]) == (64, 131072, "loopback")
    c = _ctrl(1)
    try:
        data = os.urandom(128 * 1024)  # max_io_size 128 KiB: one transfer, one write
        c.write(1, 0, data, 512)
        assert c.read(1, 0, 256, 512, q=0) == data
        assert c.mqes == 64
    finally:
        c.close()
    rpc("nvmf_subsystem_remove_listener", NQN, "-t", "fc", "-a", TRADDR)
    assert not os.path.exists(F.socket_path(parse_traddr(TRADDR)))
    d.stop()


def test_bdev_nvme_attach_controller_over_fc(fcd: Any, daemon_factory: Any) -> None:
    """bdev_nvme_attach_controller -t FC: a second daemon imports the FC
    namespace (one I/O queue per reactor over the loopback LLD) and re-exports
    it over TCP; data written through TCP -> nvme bdev -> FC lands in M0."""
    ini = daemon_factory(mask="0x3").start()  # same run folder: it finds the FC port
    names = ini.rpc(
        "bdev_nvme_attach_controller",
        {"name": "F0", "trtype": "FC", "traddr": TRADDR, "subnqn": NQN, "hostaddr": HOSTADDR},
    )
    assert names == ["F0n1"]
    b = ini.rpc("bdev_get_bdevs", {"name": "F0n1"})[0]
    assert b["driver_specific"]["nvme"][0]["trid"]["trtype"] == "FC"
    tcp_nqn = "nqn.2016-06.io.blockfabric:viafc"
    ini.rpc("nvmf_create_transport", {"trtype": "TCP"})
    ini.rpc("nvmf_create_subsystem", {"nqn": tcp_nqn, "allow_any_host": True})
    ini.rpc("nvmf_subsystem_add_ns", {"nqn": tcp_nqn, "namespace": {"bdev_name": "F0n1"}})
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    la = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    ini.rpc("nvmf_subsystem_add_listener", {"nqn": tcp_nqn, "listen_address": la})
    data = os.urandom(32 * 1024)
    t = Controller("127.0.0.1", port, tcp_nqn, nr_io_queues=2).connect()
    try:
        t.write(1, 64, data, 512, q=0)
        assert t.read(1, 64, 64, 512, q=1) == data
    finally:
        t.close()
    c = _ctrl(1)  # straight over FC: the bytes are in M0
    try:
        assert c.read(1, 64, 64, 512) == data
    finally:
        c.close()
    qps = fcd.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN})
    assert sorted(q["qid"] for q in qps) == [0, 1, 2]  # F0's admin + one I/O queue per reactor
    ini.rpc("bdev_nvme_detach_controller", {"name": "F0"})
    _wait(lambda: not fcd.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN}), what="F0 gone")
    bad = None
    try:
        ini.rpc(
            "bdev_nvme_attach_controller", {"name": "F1", "trtype": "FC", "traddr": "nn-1:pn-2"}
        )
    except Exception as e:  # noqa: BLE001
        bad = str(e)
    assert bad and "traddr" in bad
    ini.stop()
