"""Acceptance: iSCSI LUN hot-remove on a real 2-reactor daemon.

disk1 (Malloc0) and disk2 (Malloc1), 64 MiB each.  While libiscsi's
iscsi-perf keeps 1 MiB READs in flight on disk1 and a raw initiator keeps
1 MiB WRITEs (immediate/unsolicited data + R2T/Data-Out) in flight on disk1,
``bdev_malloc_delete Malloc0`` runs.  Every submitted command must be
answered (GOOD or an error status), new commands to disk1's LUN get CHECK
CONDITION and then the LUN is gone, disk2 keeps working, the daemon survives.
The aio variant deletes the backing file of an aio bdev under a LUN.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from bftest import missing_tool

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

BF_BASE = "iqn.2016-06.io.blockfabric"
MIB = 1 << 20
BLOCKS_1M = MIB // 512


def _load(name: str) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


raw = _load("bf_iscsi_raw")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _setup(d: Any, port: int, nodes: dict[str, str]) -> None:
    d.rpc(
        "iscsi_create_portal_group",
        {"tag": 1, "portals": [{"host": "127.0.0.1", "port": str(port)}]},
    )
    d.rpc(
        "iscsi_create_initiator_group",
        {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]},
    )
    for node, bdev in nodes.items():
        d.rpc(
            "iscsi_create_target_node",
            {
                "name": node,
                "alias_name": node,
                "luns": [{"bdev_name": bdev, "lun_id": 0}],
                "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
                "queue_depth": 64,
                "disable_chap": True,
            },
        )


def _daemon_clean(d: Any) -> None:
    log = d.log()
    assert "Traceback" not in log, f"traceback in the daemon log:\n{log[-4000:]}"
    assert d.rpc("spdk_get_version")


def _node_luns(d: Any, node: str) -> list[Any]:
    for n in d.rpc("iscsi_get_target_nodes"):
        if n["name"] == f"{BF_BASE}:{node}":
            return list(n.get("luns", []))
    raise AssertionError(f"target node {node} vanished")


def _lun_gone(ini: Any) -> tuple[bool, str]:
    """REPORT LUNS no longer lists LUN 0, or the target says LUN not supported."""
    r = ini.command(raw.REPORT_LUNS, 4096, read=True)
    if r.status == raw.GOOD:
        luns = raw.report_luns_list(bytes(r.data))
        return 0 not in luns, f"REPORT LUNS -> {luns}"
    return (
        r.status == raw.CHECK_CONDITION and r.asc == 0x25,
        f"REPORT LUNS status {r.status:#x} sense {r.sense.hex()}",
    )


class Writer(threading.Thread):
    """Keeps DEPTH 1 MiB WRITE(10)s in flight on one session until stopped."""

    DEPTH = 3

    def __init__(self, port: int, node: str) -> None:
        super().__init__(daemon=True)
        self.ini = raw.RawIscsi(port, f"{BF_BASE}:{node}", timeout=20)
        self.ini.login()
        ua = self.ini.clear_unit_attention()
        assert ua.status == raw.GOOD, f"TUR {ua}"
        self.stop_ev = threading.Event()
        self.statuses: list[int] = []
        self.error: BaseException | None = None
        self.payload = os.urandom(MIB)
        self.first_error_at: float | None = None

    def run(self) -> None:
        try:
            inflight: list[int] = []
            lba = 0
            while not self.stop_ev.is_set() or inflight:
                while len(inflight) < self.DEPTH and not self.stop_ev.is_set():
                    inflight.append(self.ini.submit(raw.write10(lba, BLOCKS_1M), data=self.payload))
                    lba = (lba + BLOCKS_1M) % (64 * BLOCKS_1M)
                r = self.ini.wait(inflight.pop(0))
                self.statuses.append(r.status)
                if r.status != raw.GOOD and self.first_error_at is None:
                    self.first_error_at = time.monotonic()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def _perf(url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["iscsi-perf", "-i", "iqn.2024-01.io.blockfabric:perf", "-b", "2048", "-m", "4", "-n", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop_perf(p: subprocess.Popen[bytes]) -> tuple[int | None, str]:
    alive_rc = p.poll()
    if alive_rc is None:
        os.kill(p.pid, signal.SIGINT)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=5)
    out = (p.stdout.read() if p.stdout else b"").decode(errors="replace")
    return alive_rc, out[-1500:]


def _wait_for(pred: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return bool(pred())


def test_malloc_hot_remove_under_io(daemon_factory: Any) -> None:
    if shutil.which("iscsi-perf") is None:
        missing_tool("libiscsi's iscsi-perf is not installed")
    port = _free_port()
    d = daemon_factory(mask="0x3").start()
    for name in ("Malloc0", "Malloc1"):
        d.rpc("bdev_malloc_create", {"name": name, "num_blocks": 64 * BLOCKS_1M, "block_size": 512})
    _setup(d, port, {"disk1": "Malloc0", "disk2": "Malloc1"})

    perf = _perf(f"iscsi://127.0.0.1:{port}/{BF_BASE}:disk1/0")
    writer: Writer | None = None
    try:
        assert _wait_for(
            lambda: any(
                "perf" in str(c.get("initiator_name")) for c in d.rpc("iscsi_get_connections")
            ),
            15,
        ), f"iscsi-perf never connected: {_stop_perf(perf)}"
        writer = Writer(port, "disk1")
        writer.start()
        # both clients have I/O going before the delete
        assert _wait_for(lambda: len(writer.statuses) >= 4 or writer.error is not None, 30)
        assert writer.error is None, f"writer failed before the delete: {writer.error!r}"
        assert set(writer.statuses) == {raw.GOOD}, writer.statuses
        t0 = time.monotonic()
        assert d.rpc("bdev_malloc_delete", {"name": "Malloc0", "force": True}) is True
        delete_s = time.monotonic() - t0
        # writes keep being submitted until they fail: the removal reached the LUN
        assert _wait_for(lambda: writer.first_error_at is not None or writer.error is not None, 15)
        time.sleep(0.5)
        writer.stop_ev.set()
        writer.join(30)
        assert not writer.is_alive(), "writer hung: a submitted WRITE never got an answer"
        assert writer.error is None, f"a submitted WRITE got no answer: {writer.error!r}"
        errs = [s for s in writer.statuses if s != raw.GOOD]
        assert errs and set(errs) == {raw.CHECK_CONDITION}, f"write statuses {writer.statuses}"
        # the writer's session survived the removal: a new command gets CHECK CONDITION
        ini = writer.ini
        r = ini.command(raw.write10(0, 8), data=bytes(4096))
        assert r.status == raw.CHECK_CONDITION, f"new WRITE after delete: {r}"
        r = ini.command(raw.read10(0, 8), 4096, read=True)
        assert r.status == raw.CHECK_CONDITION, f"new READ after delete: {r}"
        assert _wait_for(lambda: _lun_gone(ini)[0], 10), _lun_gone(ini)[1]
        assert _wait_for(lambda: _node_luns(d, "disk1") == [], 10), _node_luns(d, "disk1")
        assert "Malloc0" not in {b["name"] for b in d.rpc("bdev_get_bdevs")}
        perf_rc, perf_out = _stop_perf(perf)
        # iscsi-perf -n ignores errors: it must still be running (no dropped session)
        assert perf_rc is None, f"iscsi-perf exited {perf_rc} during the removal:\n{perf_out}"
        ini.logout()
        ini.close()

        # disk2 is untouched: write + read verify through another session
        other = raw.RawIscsi(port, f"{BF_BASE}:disk2")
        other.login()
        assert other.clear_unit_attention().status == raw.GOOD
        pattern = os.urandom(MIB)
        assert other.command(raw.write10(100, BLOCKS_1M), data=pattern).status == raw.GOOD
        r = other.command(raw.read10(100, BLOCKS_1M), MIB, read=True)
        assert r.status == raw.GOOD and bytes(r.data) == pattern, "disk2 data mismatch"
        other.logout()
        other.close()
        print(
            f"delete RPC {delete_s:.2f}s; writes {len(writer.statuses)} "
            f"({len(errs)} CHECK CONDITION); iscsi-perf tail: {perf_out[-300:]!r}"
        )
    finally:
        if writer is not None:
            writer.stop_ev.set()
            writer.ini.close()
        _stop_perf(perf)
    _daemon_clean(d)


def test_aio_file_delete_hot_removes_lun(daemon_factory: Any, tmp_path: Path) -> None:
    port = _free_port()
    img = tmp_path / "aio0.img"
    with img.open("wb") as f:
        f.truncate(16 * MIB)
    d = daemon_factory(mask="0x3").start()
    d.rpc("bdev_aio_create", {"name": "Aio0", "filename": str(img), "block_size": 512})
    _setup(d, port, {"aio1": "Aio0"})
    ini = raw.RawIscsi(port, f"{BF_BASE}:aio1")
    try:
        ini.login()
        assert ini.clear_unit_attention().status == raw.GOOD
        data = os.urandom(64 * 1024)
        assert ini.command(raw.write10(0, 128), data=data).status == raw.GOOD
        r = ini.command(raw.read10(0, 128), len(data), read=True)
        assert r.status == raw.GOOD and bytes(r.data) == data
        img.unlink()
        t0 = time.monotonic()
        gone = _wait_for(lambda: _node_luns(d, "aio1") == [], 6)
        took = time.monotonic() - t0
        assert gone, (
            f"LUN still there {took:.1f}s after the file was deleted: {_node_luns(d, 'aio1')}"
        )
        assert "Aio0" not in {b["name"] for b in d.rpc("bdev_get_bdevs")}
        r = ini.command(raw.read10(0, 8), 4096, read=True)
        assert r.status == raw.CHECK_CONDITION, f"READ after the aio file went: {r}"
        ok, why = _lun_gone(ini)
        assert ok, why
        print(f"aio LUN gone {took:.2f}s after unlink")
        ini.logout()
    finally:
        ini.close()
    _daemon_clean(d)
