"""bdev_rbd against a real single-node Ceph (tests/ceph_fixtures.py).

* the channel in-process, synchronous and on a reactor loop (aio + eventfd);
* the RPCs and their errors;
* pattern I/O through NVMe/TCP and iSCSI onto one image, read back through a
  second blockfabric instance attached to the same image and straight from
  Ceph; save_config reproduces cluster + bdev;
* resize: NVMe namespace-attribute-changed AEN + new NSZE, SCSI CAPACITY DATA
  HAS CHANGED unit attention + new READ CAPACITY(16);
* the cluster going away (I/O fails cleanly, no hang) and coming back (I/O
  recovers without any RPC).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from ceph_fixtures import ceph  # noqa: F401

from blockfabric.bdevs.base import IoStatus
from blockfabric.control.client import RpcClientError as RpcError
from blockfabric.transports.nvmf import spec as S
from blockfabric.transports.nvmf_host.controller import Controller
from blockfabric.transports.nvmf_host.queue import NvmeStatusError

pytestmark = pytest.mark.e2e
NQN = "nqn.2016-06.io.blockfabric:rbd"
IQN = "iqn.2016-06.io.blockfabric:rbd"
BS = 512


def _load(name: str) -> ModuleType:
    if name not in sys.modules:
        p = Path(__file__).parents[1] / "transports" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, p)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


raw = _load("bf_iscsi_raw")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _export_nvmf(d: Any, bdev: str) -> int:
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": bdev, "nsid": 1}})
    port = _free_port()
    d.rpc(
        "nvmf_subsystem_add_listener",
        {
            "nqn": NQN,
            "listen_address": {
                "trtype": "tcp",
                "adrfam": "ipv4",
                "traddr": "127.0.0.1",
                "trsvcid": str(port),
            },
        },
    )
    return port


def _export_iscsi(d: Any, bdev: str) -> int:
    port = _free_port()
    d.rpc(
        "iscsi_create_portal_group",
        {"tag": 1, "portals": [{"host": "127.0.0.1", "port": str(port)}]},
    )
    d.rpc(
        "iscsi_create_initiator_group",
        {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]},
    )
    d.rpc(
        "iscsi_create_target_node",
        {
            "name": "rbd",
            "alias_name": "rbd",
            "luns": [{"bdev_name": bdev, "lun_id": 0}],
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
            "queue_depth": 64,
            "disable_chap": True,
        },
    )
    return port


def _no_traceback(d: Any) -> None:
    log = d.log()
    assert "Traceback" not in log, f"traceback in the daemon log:\n{log[-4000:]}"


# ------------------------------------------------------------------ in-process
def _bdev(ceph: Any, image: str, **cluster: Any) -> Any:  # noqa: F811
    from blockfabric.bdevs.rbd import RbdBdev

    size = 64 << 20
    b = RbdBdev(name="r0", block_size=BS, num_blocks=size // BS, product_name=RbdBdev.PRODUCT)
    b.pool_name, b.rbd_name = ceph.pool, image
    b.cluster = {
        "user_id": "admin",
        "config_file": str(ceph.conf),
        "key_file": str(ceph.keyring),
        **cluster,
    }
    return b


def test_rbd_channel_sync_and_on_a_loop(ceph: Any) -> None:  # noqa: F811
    from blockfabric.actors.loop import EventLoop
    from blockfabric.bdevs import rbd as R

    image = ceph.new_image(64)
    b = _bdev(ceph, image)
    got: list[Any] = []

    # synchronous (no loop): completes before returning
    ch = b.open_channel(None)
    assert ch.state == "ready", ch.info()
    data = os.urandom(8 * BS)
    ch.write(10, memoryview(data), got.append, fua=True)
    ch.read(10, 8, lambda st, mv: got.append((st, bytes(mv) if mv is not None else None)))
    assert got == [IoStatus.SUCCESS, (IoStatus.SUCCESS, data)]
    got.clear()
    ch.write_zeroes(10, 4, got.append)
    ch.unmap(100, 8, got.append)
    ch.flush(got.append)
    ch.read(10, 8, lambda st, mv: got.append(bytes(mv) if mv is not None else st))
    assert got[:3] == [IoStatus.SUCCESS] * 3
    assert got[3] == bytes(4 * BS) + data[4 * BS :]
    got.clear()
    # unmap reads back zeroes (DLFEAT / LBPRZ), also inside an object
    ch.write(300, memoryview(data), got.append)
    ch.unmap(302, 4, got.append)
    ch.read(300, 8, lambda st, mv: got.append(bytes(mv) if mv is not None else st))
    assert got[:2] == [IoStatus.SUCCESS] * 2
    assert got[2] == data[: 2 * BS] + bytes(4 * BS) + data[6 * BS : 8 * BS]
    got.clear()
    ch.read(b.num_blocks - 1, 2, lambda st, mv: got.append(st))  # beyond the end
    assert got == [IoStatus.OUT_OF_RANGE]
    ch.close()
    assert ceph.read_image(image, 10 * BS + 4 * BS, 4 * BS) == data[4 * BS :]

    # on a reactor loop: completions come back through the eventfd
    loop = EventLoop()
    try:
        ch2 = b.open_channel(loop)
        into = memoryview(bytearray(8 * BS))
        pattern = os.urandom(16 * BS)
        res: dict[str, Any] = {}
        ch2.write(200, memoryview(pattern), lambda st: res.setdefault("w", st))  # queued: opening
        ch2.read(10, 8, lambda st, mv: res.setdefault("r", (st, mv)), into=into)
        deadline = time.monotonic() + 30
        while len(res) < 2 and time.monotonic() < deadline:
            loop.run_once(0.05)
        assert res["w"] == IoStatus.SUCCESS  # (librbd may complete them in either order)
        st, mv = res["r"]
        assert st == IoStatus.SUCCESS and bytes(mv) == bytes(4 * BS) + data[4 * BS :]
        assert mv.obj is into.obj  # landed in the caller's buffer
        assert ch2.in_flight == 0 and ch2.gen == 1
        # a 128 KiB FUA write: write + flush before the completion
        big = os.urandom(128 * 1024)
        done: list[Any] = []
        ch2.write(1024, memoryview(big), done.append, fua=True)
        while not done and time.monotonic() < deadline:
            loop.run_once(0.05)
        assert done == [IoStatus.SUCCESS]
        assert ch2.stats.num_write_ops == 2 and ch2.stats.num_flush_ops == 0
        ch2.close()
        while ch2.state != "closed" and time.monotonic() < deadline:
            loop.run_once(0.05)
        assert ch2.state == "closed"
    finally:
        loop.close()
    assert ceph.read_image(image, 1024 * BS, len(big)) == big

    # a missing image: I/O fails cleanly, nothing raises
    bad = _bdev(ceph, "no-such-image")
    ch3 = bad.open_channel(None)
    assert ch3.state == "lost" and "ImageNotFound" in ch3.last_error
    got.clear()
    ch3.write(0, memoryview(bytes(BS)), got.append)
    ch3.read(0, 1, lambda st, mv: got.append(st))
    assert got == [IoStatus.FAILED, IoStatus.FAILED]
    ch3.close()
    # every connection was released (the process holds none once channels close)
    deadline = time.monotonic() + 5
    while R.proc().conns and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not R.proc().conns


# ------------------------------------------------------------------ RPC errors
def test_rbd_rpc_errors(daemon: Any, ceph: Any) -> None:  # noqa: F811
    image = ceph.new_image(16)
    with pytest.raises(RpcError) as ei:
        d = daemon
        d.rpc(
            "bdev_rbd_create",
            {"pool_name": "rbd", "rbd_name": image, "block_size": 4096, "cluster_name": "nope"},
        )
    assert ei.value.code == -19
    assert d.rpc("bdev_rbd_register_cluster", ceph.cluster_params("c1")) == "c1"
    with pytest.raises(RpcError) as ei:
        d.rpc("bdev_rbd_register_cluster", ceph.cluster_params("c1"))
    assert ei.value.code == -17
    with pytest.raises(RpcError) as ei:  # a key that does not authenticate
        bad = d.run_dir / "bad.keyring"
        bad.write_text("[client.admin]\n\tkey = AQBBBBBBBBBBBBAAz6lL0+lL0+lL0+lL0+lL0w==\n")
        d.rpc("bdev_rbd_register_cluster", ceph.cluster_params("c2", key_file=str(bad)))
    assert "cannot connect" in ei.value.message
    with pytest.raises(RpcError) as ei:
        d.rpc(
            "bdev_rbd_create",
            {"pool_name": "rbd", "rbd_name": "absent", "block_size": 512, "cluster_name": "c1"},
        )
    assert ei.value.code == -2 and "rbd/absent" in ei.value.message
    with pytest.raises(RpcError) as ei:
        d.rpc(
            "bdev_rbd_create",
            {"pool_name": "nopool", "rbd_name": image, "block_size": 512, "cluster_name": "c1"},
        )
    assert ei.value.code == -2
    with pytest.raises(RpcError) as ei:
        d.rpc(
            "bdev_rbd_create",
            {"pool_name": "rbd", "rbd_name": image, "block_size": 3000, "cluster_name": "c1"},
        )
    assert ei.value.code == -32602
    name = d.rpc(
        "bdev_rbd_create",
        {"pool_name": "rbd", "rbd_name": image, "block_size": 4096, "cluster_name": "c1"},
    )
    assert name == "Ceph0"
    info = d.rpc("bdev_get_bdevs", {"name": "Ceph0"})[0]
    assert info["num_blocks"] == (16 << 20) // 4096 and info["product_name"] == "Ceph Rbd Disk"
    assert info["driver_specific"]["rbd"] == {
        "pool_name": "rbd",
        "rbd_name": image,
        "cluster_name": "c1",
    }
    assert d.rpc("bdev_rbd_get_clusters_info", {"name": "c1"})["config_file"] == str(ceph.conf)
    assert [c["cluster_name"] for c in d.rpc("bdev_rbd_get_clusters_info")] == ["c1"]
    with pytest.raises(RpcError) as ei:
        d.rpc("bdev_rbd_unregister_cluster", {"name": "c1"})
    assert ei.value.code == -16 and "Ceph0" in ei.value.message
    with pytest.raises(RpcError) as ei:  # shrinking is refused, like SPDK
        d.rpc("bdev_rbd_resize", {"name": "Ceph0", "new_size": 8})
    assert ei.value.code == -22
    with pytest.raises(RpcError) as ei:
        d.rpc("bdev_malloc_delete", {"name": "Ceph0"})
    assert ei.value.code == -19
    assert d.rpc("bdev_rbd_delete", {"name": "Ceph0"}) is True
    assert d.rpc("bdev_rbd_unregister_cluster", {"name": "c1"}) is True
    with pytest.raises(RpcError) as ei:
        d.rpc("bdev_rbd_unregister_cluster", {"name": "c1"})
    assert ei.value.code == -19
    _no_traceback(d)


# ------------------------------------------------------------------ e2e
def test_rbd_nvmf_iscsi_second_instance_and_save_config(daemon_factory: Any, ceph: Any) -> None:  # noqa: F811
    image = ceph.new_image(64)
    ncpu = len(os.sched_getaffinity(0))
    a = daemon_factory(mask="0x3" if ncpu >= 2 else "0x1").start()
    a.rpc("bdev_rbd_register_cluster", ceph.cluster_params("ceph1"))
    a.rpc(
        "bdev_rbd_create",
        {
            "name": "R0",
            "pool_name": "rbd",
            "rbd_name": image,
            "block_size": BS,
            "cluster_name": "ceph1",
        },
    )
    nport = _export_nvmf(a, "R0")
    iport = _export_iscsi(a, "R0")
    p_nvme = os.urandom(64 * BS)
    p_iscsi = os.urandom(64 * BS)
    c = Controller("127.0.0.1", nport, NQN, nr_io_queues=2)
    c.connect()
    try:
        c.write(1, 0, p_nvme[: 32 * BS], BS, q=0)
        c.write(1, 32, p_nvme[32 * BS :], BS, q=1, fua=True)
        c.flush(1, q=0)
        assert c.read(1, 0, 64, BS, q=1) == p_nvme
        c.write_zeroes(1, 8, 8, q=0)
        want_nvme = p_nvme[: 8 * BS] + bytes(8 * BS) + p_nvme[16 * BS :]
        assert c.read(1, 0, 64, BS, q=0) == want_nvme
    finally:
        c.close()
    ini = raw.RawIscsi(iport, IQN)
    ini.login()
    try:
        assert ini.clear_unit_attention().status == raw.GOOD
        r = ini.command(raw.write10(1000, 64), data=p_iscsi)
        assert r.status == raw.GOOD, r
        r = ini.command(raw.read10(1000, 64), 64 * BS, read=True)
        assert r.status == raw.GOOD and bytes(r.data) == p_iscsi
        sync = bytes([0x35]) + bytes(9)  # SYNCHRONIZE CACHE(10)
        assert ini.command(sync).status == raw.GOOD
    finally:
        ini.logout()
        ini.close()
    # the data is in Ceph ...
    assert ceph.read_image(image, 0, 64 * BS) == want_nvme
    assert ceph.read_image(image, 1000 * BS, 64 * BS) == p_iscsi
    # ... and a second instance on the same image (no registered cluster:
    # SPDK's user_id + config form) reads both back over NVMe/TCP
    b = daemon_factory().start()
    b.rpc(
        "bdev_rbd_create",
        {
            "name": "R1",
            "pool_name": "rbd",
            "rbd_name": image,
            "block_size": BS,
            "user_id": "admin",
            "config": {"mon_host": _mon_host(ceph), "keyring": str(ceph.keyring)},
        },
    )
    port_b = _export_nvmf(b, "R1")
    c2 = Controller("127.0.0.1", port_b, NQN)
    c2.connect()
    try:
        assert c2.read(1, 0, 64, BS) == want_nvme
        assert c2.read(1, 1000, 64, BS) == p_iscsi
    finally:
        c2.close()
    # save_config: the cluster registration precedes the bdev; a restart reproduces both
    saved = a.rpc("save_config")
    cfg = [e for s in saved["subsystems"] if s["subsystem"] == "bdev" for e in s["config"]]
    methods = [e["method"] for e in cfg]
    assert methods.index("bdev_rbd_register_cluster") < methods.index("bdev_rbd_create")
    f = a.run_dir / "rbd.json"
    f.write_text(json.dumps(saved))
    _no_traceback(a)
    _no_traceback(b)
    a.stop()
    a2 = daemon_factory(extra=["--json", str(f)]).start()
    assert a2.rpc("bdev_rbd_get_clusters_info", {"name": "ceph1"})["key_file"] == str(ceph.keyring)
    assert a2.rpc("bdev_get_bdevs", {"name": "R0"})[0]["num_blocks"] == (64 << 20) // BS
    c3 = Controller("127.0.0.1", nport, NQN)
    c3.connect()
    try:
        assert c3.read(1, 1000, 64, BS) == p_iscsi
    finally:
        c3.close()
    _no_traceback(a2)


def _mon_host(ceph: Any) -> str:  # noqa: F811
    for line in ceph.conf.read_text().splitlines():
        if line.strip().startswith("mon host"):
            return line.split("=", 1)[1].strip()
    raise AssertionError("no mon host in ceph.conf")


def test_rbd_resize_reaches_nvme_and_scsi_hosts(daemon: Any, ceph: Any) -> None:  # noqa: F811
    d = daemon
    image = ceph.new_image(32)
    # the CLI forms, as a user types them (SPDK rpc.py's)
    rpc = ("rpc", "-s", d.rpc_addr)
    d.cli(*rpc, "bdev_rbd_register_cluster", "c", "--user", "admin",
          "--config-file", str(ceph.conf), "--key-file", str(ceph.keyring))  # fmt: skip
    out = d.cli(*rpc, "bdev_rbd_create", "rbd", image, str(BS), "-b", "R", "-c", "c").stdout
    assert out.strip() == "R"
    nport = _export_nvmf(d, "R")
    iport = _export_iscsi(d, "R")
    c = Controller("127.0.0.1", nport, NQN, keepalive_thread=False)
    c.connect()
    ini = raw.RawIscsi(iport, IQN)
    ini.login()
    try:
        assert c.identify_namespace(1).nsze == (32 << 20) // BS
        assert ini.clear_unit_attention().status == raw.GOOD
        c.set_features(S.FID_ASYNC_EVENT_CONFIG, S.AEC_NS_ATTR)
        aen: list[int] = []
        a = c.admin
        assert a is not None
        with a.lock:
            a.q.submit(S.ADMIN_ASYNC_EVENT, 0, (0,) * 6, lambda _r, st, res: aen.extend((st, res)))
            a._flush()
        assert d.cli(*rpc, "bdev_rbd_resize", "R", "48").stdout.strip() == "true"
        # the AEN arrives before the answer to the next admin command
        changed = c.get_log_page(S.LID_CHANGED_NS, 4096)
        assert aen and aen[0] == 0, aen
        assert aen[1] == S.aen_dw0(S.AER_TYPE_NOTICE, S.AER_NOTICE_NS_CHANGED, S.LID_CHANGED_NS)
        assert struct.unpack_from("<I", changed, 0)[0] == 1
        assert c.identify_namespace(1).nsze == (48 << 20) // BS
        # the new blocks are usable
        c.write(1, (48 << 20) // BS - 8, bytes(range(256)) * 16, BS)
        # iSCSI: CAPACITY DATA HAS CHANGED, then the new capacity
        rc16 = bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + bytes(2)
        r = ini.command(rc16, 32, read=True)
        assert r.status == raw.CHECK_CONDITION and r.sense_key == 6, r
        assert (r.asc, r.sense[13]) == (0x2A, 0x09)
        r = ini.command(rc16, 32, read=True)
        assert r.status == raw.GOOD
        assert int.from_bytes(r.data[0:8], "big") == (48 << 20) // BS - 1
    finally:
        ini.logout()
        ini.close()
        c.close()
    assert (
        int(json.loads(ceph.cmd("rbd", "info", "--format", "json", f"rbd/{image}"))["size"])
        == 48 << 20
    )
    _no_traceback(d)


def test_rbd_cluster_away_and_back(daemon: Any, ceph: Any) -> None:  # noqa: F811
    d = daemon
    image = ceph.new_image(16)
    # short timeouts so a dead cluster fails I/O in seconds
    d.rpc(
        "bdev_rbd_register_cluster",
        ceph.cluster_params(
            "c",
            config_param={
                "rados_osd_op_timeout": "3",
                "rados_mon_op_timeout": "3",
                "client_mount_timeout": "3",
            },
        ),
    )
    d.rpc(
        "bdev_rbd_create",
        {"name": "R", "pool_name": "rbd", "rbd_name": image, "block_size": BS, "cluster_name": "c"},
    )
    port = _export_nvmf(d, "R")
    iport = _export_iscsi(d, "R")
    c = Controller("127.0.0.1", port, NQN, timeout=30)
    c.connect()
    ini = raw.RawIscsi(iport, IQN, timeout=30)
    ini.login()
    assert ini.clear_unit_attention().status == raw.GOOD
    before = os.urandom(8 * BS)
    try:
        c.write(1, 0, before, BS, fua=True)
        ceph.stop()
        try:
            t0 = time.monotonic()
            with pytest.raises(NvmeStatusError) as ei:
                c.write(1, 8, os.urandom(8 * BS), BS, fua=True)
            assert time.monotonic() - t0 < 20
            assert (ei.value.sct, ei.value.sc) == (S.SCT_MEDIA, S.SC_WRITE_FAULT)
            t1 = time.monotonic()
            with pytest.raises(NvmeStatusError) as ei:  # lost: fails at once, no queueing
                c.read(1, 0, 8, BS)
            assert (ei.value.sct, ei.value.sc) == (S.SCT_MEDIA, S.SC_UNRECOVERED_READ_ERROR)
            assert time.monotonic() - t1 < 2
            # iSCSI: MEDIUM ERROR / WRITE ERROR (03/0C/00)
            r = ini.command(raw.write10(40, 8), data=os.urandom(8 * BS))
            assert r.status == raw.CHECK_CONDITION and (r.sense_key, r.asc) == (3, 0x0C), r
        finally:
            ceph.up()
        # recovers on its own (reconnect), no RPC
        after = os.urandom(8 * BS)
        deadline = time.monotonic() + 60
        while True:
            try:
                c.write(1, 16, after, BS, fua=True)
                break
            except NvmeStatusError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert c.read(1, 0, 8, BS) == before
        assert c.read(1, 16, 8, BS) == after
        r = ini.command(raw.read10(16, 8), 8 * BS, read=True)
        assert r.status == raw.GOOD and bytes(r.data) == after
    finally:
        c.close()
        ini.logout()
        ini.close()
    assert ceph.read_image(image, 16 * BS, 8 * BS) == after
    assert "reconnected to the cluster" in d.log()
    _no_traceback(d)
