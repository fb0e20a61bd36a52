"""End-to-end: reactor supervision (restart on death or hang, restart policy),
log rotation of the daemon's log file."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from typing import Any

import psutil
import pytest
from bftest import shm_objects

from blockfabric.transports.nvmf_host.controller import Controller

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
NQN = "nqn.2016-06.io.blockfabric:sup"
TWO_CPUS = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _export(d: Any, blocks: int = 8192) -> int:
    d.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": blocks, "block_size": 512})
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}})
    port = _free_port()
    d.rpc(
        "nvmf_subsystem_add_listener",
        {
            "nqn": NQN,
            "listen_address": {
                "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)
            },
        },
    )  # fmt: skip
    return port


def _qp_reactor(q: dict[str, Any]) -> int:
    return int(q["thread"].rsplit("_", 1)[1])  # nvmf_tgt_poll_group_N


def _reactor(d: Any, rid: int) -> dict[str, Any]:
    st: dict[str, Any] = d.rpc("blockfabric_get_status")["reactors"][rid]
    return st


def _wait_restarted(d: Any, rid: int, old_pid: int, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = _reactor(d, rid)
        if r["pid"] != old_pid and r["state"] == "running":
            return r
        assert time.monotonic() < deadline, f"reactor {rid} was not restarted: {r}"
        time.sleep(0.1)


def _cntlids(d: Any) -> set[int]:
    return {c["cntlid"] for c in d.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN})}


@TWO_CPUS
def test_killed_reactor_restarts_on_its_core_others_keep_doing_io(daemon_factory: Any) -> None:
    d = daemon_factory(mask="0x3").start()
    port = _export(d)
    # accepts go round-robin: A.admin, B.admin, A.io, B.io -> A and B each
    # entirely on one reactor
    a = Controller("127.0.0.1", port, NQN, nr_io_queues=0).connect()
    b = Controller("127.0.0.1", port, NQN, nr_io_queues=0).connect()
    a.create_io_queues(1)
    b.create_io_queues(1)
    try:
        qps = d.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN})
        where = {q["cntlid"]: set() for q in qps}
        for q in qps:
            where[q["cntlid"]].add(_qp_reactor(q))
        assert where[a.cntlid] != where[b.cntlid] and all(len(v) == 1 for v in where.values())
        victim = where[b.cntlid].pop()
        survivor = where[a.cntlid].pop()
        old = _reactor(d, victim)
        assert old["core"] == victim and old["restarts"] == 0

        errors: list[str] = []
        done = [0]
        stop = threading.Event()

        def io_on_a() -> None:
            i = 0
            while not stop.is_set():
                lba = (i * 8) % 4096
                data = os.urandom(4096)
                try:
                    a.write(1, lba, data, 512)
                    if a.read(1, lba, 8, 512) != data:
                        errors.append(f"miscompare at {lba}")
                except Exception as e:  # noqa: BLE001 - any failure is the finding
                    errors.append(f"{type(e).__name__}: {e}")
                    return
                done[0] += 1
                i += 1

        t = threading.Thread(target=io_on_a)
        t.start()
        time.sleep(0.5)
        t_kill = time.monotonic()
        os.kill(old["pid"], signal.SIGKILL)
        new = _wait_restarted(d, victim, old["pid"])
        t_ready = time.monotonic() - t_kill
        at_restart = done[0]
        time.sleep(1.0)
        stop.set()
        t.join(30)
        assert not errors, errors
        assert done[0] > at_restart, "I/O on the other reactor stopped"
        # the restart is visible and the dead one reaped (no zombie)
        assert new["core"] == victim and new["restarts"] == 1
        assert "SIGKILL" in new["last_cause"] and new["last_restart"] > 0
        assert not psutil.pid_exists(old["pid"])
        assert psutil.Process(new["pid"]).cpu_affinity() == [victim]
        reactors = {r["lcore"]: r for r in d.rpc("framework_get_reactors")["reactors"]}
        assert reactors[victim]["restarts"] == 1 and "SIGKILL" in reactors[victim]["last_cause"]
        assert reactors[survivor]["restarts"] == 0
        st = d.status()
        row = [p for p in st["processes"] if p["role"] == f"reactor {victim}"][0]
        assert row["restarts"] == 1 and "SIGKILL" in row["last_cause"]
        text = d.cli("status", "--name", d.name, "-r", d.rpc_addr).stdout
        assert "killed by signal SIGKILL" in text
        # B's controller was dropped with its reactor; A's is untouched
        assert _cntlids(d) == {a.cntlid}
        with pytest.raises(Exception):  # noqa: B017 - B's connection is gone
            b.read(1, 0, 1, 512)
        # new connections work, on both reactors (the restarted one too)
        pattern = os.urandom(8192)
        a.write(1, 5000, pattern, 512)
        fresh = [Controller("127.0.0.1", port, NQN, nr_io_queues=1).connect() for _ in range(2)]
        try:
            for c in fresh:
                assert c.read(1, 5000, 16, 512) == pattern
                c.write(1, 6000, pattern, 512, q=0)
            qps = d.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN})
            assert victim in {_qp_reactor(q) for q in qps}  # accepts reach it again
            print(
                f"reactor {victim} killed: restarted and ready after {t_ready:.2f}s; "
                f"I/O of the other reactor's host never stopped ({done[0]} verified writes)"
            )
        finally:
            for c in fresh:
                c.close()
        hosts = {_qp_reactor(q) for q in d.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN})}
        assert hosts == {survivor}  # only A is left
        assert "restarting it on core" in d.log()
        assert f"reactor {victim} restarted as pid {new['pid']}" in d.log()
        assert "Traceback" not in d.log(), d.log()[-4000:]
    finally:
        a.close()
        with contextlib.suppress(Exception):
            b.close()


def test_restart_policy_exhaustion_stops_cleanly(daemon_factory: Any) -> None:
    d = daemon_factory(mask="0x1", extra=["--max-restarts", "2", "--restart-window", "120"])
    d.start()
    d.rpc("bdev_malloc_create", {"name": "M", "num_blocks": 256, "block_size": 512})
    sup = d.rpc("blockfabric_get_status")["pid"]
    for n in (1, 2):
        old = _reactor(d, 0)["pid"]
        os.kill(old, signal.SIGKILL)
        r = _wait_restarted(d, 0, old)
        assert r["restarts"] == n
    assert d.rpc("bdev_get_bdevs")[0]["name"] == "M"  # the config survived
    os.kill(_reactor(d, 0)["pid"], signal.SIGKILL)  # third death in the window
    deadline = time.monotonic() + 30
    while psutil.pid_exists(sup) and psutil.Process(sup).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "target did not stop after the policy was exhausted"
        time.sleep(0.05)
    d.started = False
    assert shm_objects(d.name) == []
    log = d.log()
    assert "is the limit" in log and "stopping the target" in log


def test_stopped_reactor_is_killed_by_heartbeat_and_restarted(daemon_factory: Any) -> None:
    d = daemon_factory(
        mask="0x1", extra=["--heartbeat-interval", "0.2", "--heartbeat-timeout", "3"]
    ).start()
    old = _reactor(d, 0)["pid"]
    os.kill(old, signal.SIGSTOP)
    try:
        r = _wait_restarted(d, 0, old, timeout=30)
    finally:
        if psutil.pid_exists(old):
            os.kill(old, signal.SIGKILL)
    assert r["restarts"] == 1 and "heartbeat" in r["last_cause"] and "SIGKILL" in r["last_cause"]
    assert d.rpc("framework_get_reactors")["reactors"][0]["pid"] == r["pid"]
    assert not psutil.pid_exists(old)
    assert "no heartbeat answer" in d.log()


def test_log_file_is_capped_and_rotated(daemon_factory: Any) -> None:
    d = daemon_factory(mask="0x1", extra=["--log-max-mb", "0.005", "--log-count", "2"]).start()
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    for _ in range(200):  # every add logs a ~100 B line: ~ 4x the cap, so it rotates
        la = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "0"}
        d.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": la})
    # reactor lines go the same capped way: a restarted reactor logs that it is up
    old = _reactor(d, 0)["pid"]
    os.kill(old, signal.SIGKILL)
    new = _wait_restarted(d, 0, old)["pid"]
    files = sorted(p.name for p in d.run_dir.iterdir() if p.name.startswith(f"{d.name}.log"))
    assert files == [f"{d.name}.log", f"{d.name}.log.1", f"{d.name}.log.2"]
    cap = int(0.005 * 1024 * 1024)
    for f in files:
        assert (d.run_dir / f).stat().st_size <= cap + 1024, f
    deadline = time.monotonic() + 10
    while f"reactor 0 (pid {new}) up" not in d.log():
        assert time.monotonic() < deadline, d.log()[-2000:]
        time.sleep(0.1)


def _raw_kit() -> Any:
    import importlib.util
    import sys
    from pathlib import Path

    name = "bf_nvmf_raw_kit"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "transports" / "nvmf" / "conftest.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def test_buffers_held_by_a_killed_reactor_return_to_the_pool(daemon_factory: Any) -> None:
    from blockfabric.transports.nvmf import pdu as P
    from blockfabric.transports.nvmf import spec

    kit = _raw_kit()
    d = daemon_factory(mask="0x1").start()
    d.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 8192, "block_size": 512})
    d.rpc("nvmf_create_transport", {"trtype": "TCP", "h2c_data_timeout_ms": 60000})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}})
    port = _free_port()
    la = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    d.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": la})
    addr = ("127.0.0.1", port)
    admin = kit.Client(addr)
    cntlid = admin.admin_setup(subnqn=NQN, hostnqn=kit.HOSTNQN)
    io = kit.Client(addr)
    io.icreq()
    assert io.connect(subnqn=NQN, hostnqn=kit.HOSTNQN, qid=1, cntlid=cntlid).status == 0
    # 4 writes of 64 KiB whose data we never send: the reactor holds their R2T buffers
    for i in range(4):
        io.submit(spec.IO_WRITE, nsid=1, cdws=(i * 128, 0, 127), data=bytes(65536), incapsule=False)
    for _ in range(4):
        assert io.recv_pdu().type == P.R2T
    held = d.rpc("blockfabric_get_status")["pool"]
    assert held["in_use_by_reactor"].get("0", 0) >= 4, held
    old = _reactor(d, 0)["pid"]
    os.kill(old, signal.SIGKILL)
    _wait_restarted(d, 0, old)
    pool = d.rpc("blockfabric_get_status")["pool"]
    assert pool["in_use_by_reactor"] == {}
    assert pool["small"]["in_use"] == 0 and pool["large"]["in_use"] == 0
    assert pool["large"]["reserve_free"] == held["large"]["reserve_free"]
    assert "pool buffer(s) it held returned to the pool" in d.log()
    for s in (io, admin):
        with contextlib.suppress(Exception):
            s.close()
    # the restarted reactor serves a new host from its rebuilt share
    c = Controller("127.0.0.1", port, NQN, nr_io_queues=1).connect()
    try:
        data = os.urandom(65536)
        c.write(1, 1000, data, 512)
        assert c.read(1, 1000, 128, 512) == data
    finally:
        c.close()
    assert d.rpc("iobuf_get_stats")[0]["in_use"] == 0


def _iscsi_raw() -> Any:
    import importlib.util
    import sys
    from pathlib import Path

    name = "bf_iscsi_raw"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "transports" / "bf_iscsi_raw.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@TWO_CPUS
def test_iscsi_session_on_a_killed_reactor_logs_in_again_others_untouched(
    daemon_factory: Any,
) -> None:
    raw = _iscsi_raw()
    base = "iqn.2016-06.io.blockfabric"
    d = daemon_factory(mask="0x3").start()
    port = _free_port()
    d.rpc(
        "iscsi_create_portal_group",
        {"tag": 1, "portals": [{"host": "127.0.0.1", "port": str(port)}]},
    )
    d.rpc(
        "iscsi_create_initiator_group",
        {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]},
    )
    for i in range(2):  # target nodes are homed round-robin: one per reactor
        d.rpc("bdev_malloc_create", {"name": f"Malloc{i}", "num_blocks": 8192, "block_size": 512})
        d.rpc(
            "iscsi_create_target_node",
            {
                "name": f"disk{i + 1}", "alias_name": f"disk{i + 1}",
                "luns": [{"bdev_name": f"Malloc{i}", "lun_id": 0}],
                "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}], "disable_chap": True, "queue_depth": 16,
            },
        )  # fmt: skip

    def session(node: str, isid: int | None = None) -> Any:
        s = raw.RawIscsi(port, f"{base}:{node}", timeout=5)
        if isid is not None:
            s.isid = isid
        s.login()
        assert s.clear_unit_attention().status == raw.GOOD
        return s

    s1, s2 = session("disk1"), session("disk2")
    homes = {
        c["target_node_name"].rsplit(":", 1)[1]: c["lcore_id"]
        for c in d.rpc("iscsi_get_connections")
    }
    assert homes["disk1"] != homes["disk2"], homes
    victim = homes["disk2"]
    data = os.urandom(4096)
    assert s2.command(raw.write10(8, 8), data=data).status == raw.GOOD
    old = _reactor(d, victim)["pid"]
    os.kill(old, signal.SIGKILL)
    _wait_restarted(d, victim, old)
    # the session on the other reactor never noticed
    for lba in range(0, 64, 8):
        assert s1.command(raw.write10(lba, 8), data=data).status == raw.GOOD
        r = s1.command(raw.read10(lba, 8), 4096, read=True)
        assert r.status == raw.GOOD and bytes(r.data) == data
    # disk2's session died with its reactor; the initiator logs in again with
    # the same ISID (session reinstatement) on the restarted reactor
    assert s2.closed(timeout=5)
    s2b = session("disk2", isid=s2.isid)
    r = s2b.command(raw.read10(8, 8), 4096, read=True)
    assert r.status == raw.GOOD and bytes(r.data) == data  # acknowledged write is there
    conns = {
        c["target_node_name"].rsplit(":", 1)[1]: c["lcore_id"]
        for c in d.rpc("iscsi_get_connections")
    }
    assert conns == homes
    for s in (s1, s2b):
        s.logout()
        s.close()
    s2.close()
    assert "Traceback" not in d.log(), d.log()[-4000:]


@TWO_CPUS
def test_rpc_waiting_on_a_hung_reactor_returns_when_it_is_killed(daemon_factory: Any) -> None:
    d = daemon_factory(
        mask="0x3", extra=["--heartbeat-interval", "0.2", "--heartbeat-timeout", "2"]
    ).start()
    old = _reactor(d, 1)["pid"]
    os.kill(old, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        # a broadcast query waits for every reactor; the hung one is killed by
        # the heartbeat check inside the wait and dropped from it
        reactors = d.rpc("framework_get_reactors")["reactors"]
        took = time.monotonic() - t0
    finally:
        if psutil.pid_exists(old):
            os.kill(old, signal.SIGKILL)
    assert [r["lcore"] for r in reactors] == [0], reactors
    assert took < 4.5, f"the RPC waited {took:.1f}s"
    r = _wait_restarted(d, 1, old)
    assert "no heartbeat answer" in r["last_cause"]
    assert [x["lcore"] for x in d.rpc("framework_get_reactors")["reactors"]] == [0, 1]
