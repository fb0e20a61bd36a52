"""Hostile initiators against a real daemon (issue 8): every one is bounded
(the reactor's RSS is printed and checked) while a well-behaved initiator on
the same reactor keeps completing I/O, and the daemon carries on.

* an initiator that floods immediate commands: the CmdSN window (MaxQueueDepth)
  bounds them, the rest get TASK SET FULL;
* logins with oversized keys, too many keys, an endless login text: refused;
* an initiator that keeps a window of WRITEs and READs open and never reads
  a response: output backpressure stops reading it.
"""

from __future__ import annotations

import importlib.util
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from blockfabric.transports.iscsi import pdu as P
from blockfabric.transports.iscsi import text

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

BF_BASE = "iqn.2016-06.io.blockfabric"
MIB = 1 << 20
RSS_BOUND = 192 * MIB  # growth of the reactor's RSS any one attack may cause


def _load(name: str) -> ModuleType:
    if name not in sys.modules:
        path = Path(__file__).parent.parent / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
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


def _setup(d: Any) -> int:
    port = _free_port()
    d.rpc(
        "bdev_malloc_create", {"name": "Malloc0", "num_blocks": 64 * MIB // 512, "block_size": 512}
    )
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
            "name": "disk1",
            "alias_name": "disk1",
            "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
            "queue_depth": 64,
            "disable_chap": True,
        },
    )
    return port


def _rss(d: Any) -> int:
    pid = d.rpc("blockfabric_get_status")["reactors"][0]["pid"]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _good_io(port: int, n: int) -> int:
    """A well-behaved initiator: n 64 KiB write+read pairs, verified."""
    ini = raw.RawIscsi(port, f"{BF_BASE}:disk1", timeout=30)
    try:
        ini.login()
        ini.clear_unit_attention()
        for i in range(n):
            data = bytes([i & 0xFF]) * 65536
            lba = 1024 + (i % 64) * 128
            assert ini.command(raw.write10(lba, 128), data=data).status == raw.GOOD
            r = ini.command(raw.read10(lba, 128), 65536, read=True)
            assert r.status == raw.GOOD and bytes(r.data) == data
        ini.logout()
    finally:
        ini.close()
    return n


def _daemon_ok(d: Any) -> None:
    assert d.rpc("spdk_get_version")
    assert "Traceback" not in d.log()


def _cmd_pdu(
    ini: Any,
    itt: int,
    cdb: bytes,
    edtl: int,
    flags: int,
    data: bytes = b"",
    cmdsn: int | None = None,
    immediate: bool = False,
) -> bytes:
    w = (
        edtl,
        ini.cmdsn if cmdsn is None else cmdsn,
        ini.expstatsn,
        *struct.unpack(">4I", cdb.ljust(16, b"\0")),
    )
    return P.encode_request(P.OP_SCSI_CMD, flags, 0, itt, w, data, immediate=immediate)


def test_immediate_command_flood_is_bounded_by_the_window(daemon: Any) -> None:
    port = _setup(daemon)
    rss0 = _rss(daemon)
    ini = raw.RawIscsi(port, f"{BF_BASE}:disk1", timeout=30)
    ini.login()
    ini.clear_unit_attention()
    flood = 3000
    # immediate 1 MiB WRITEs whose data never comes: each one the target
    # accepts holds a task and a burst buffer until the Data-Out timeout
    out = b"".join(
        _cmd_pdu(ini, 0x1000 + i, raw.write10(i * 8, 2048), MIB, 0xA1, immediate=True)
        for i in range(flood)
    )
    sender = threading.Thread(target=ini.send, args=(out,), daemon=True)
    sender.start()
    r2ts = full = 0
    deadline = time.monotonic() + 60
    # 64 accepted (MaxQueueDepth): max_r2t_per_connection (4) of them get
    # their burst buffers and an R2T, the others wait without pool buffers
    while (full < flood - 64 or r2ts < 4) and time.monotonic() < deadline:
        p = ini.recv()
        if p.opcode == P.OP_R2T:
            r2ts += 1
        elif p.opcode == P.OP_SCSI_RESP and p.b3 == 0x28:
            full += 1
        elif p.opcode == P.OP_NOP_IN and p.itt == P.RSVD_TAG:
            pass
        else:
            raise AssertionError(f"unexpected opcode {p.opcode:#x} status {p.b3:#x}")
    sender.join(10)
    # a well-behaved initiator on the same reactor keeps doing I/O meanwhile
    assert _good_io(port, 20) == 20
    grown = _rss(daemon) - rss0
    time.sleep(0.5)
    ini.s.settimeout(0.5)
    try:
        while True:
            p = ini.recv()
            r2ts += p.opcode == P.OP_R2T
    except (TimeoutError, OSError):
        pass
    st = daemon.rpc("iscsi_get_stats")
    assert sum(r["immediate_refused"] for r in st) == flood - 64
    print(
        f"\nimmediate flood: {flood - full} accepted (the window), {r2ts} of them with burst"
        f" buffers (R2T), {full} TASK SET FULL; reactor RSS +{grown / MIB:.1f} MiB"
    )
    assert r2ts == 4 and full == flood - 64
    assert grown < RSS_BOUND
    assert _pool_in_use(daemon) > 0  # the 4 burst buffers are held ...
    ini.close()
    assert _wait_pool_idle(daemon) == 0  # ... and back once the attacker left
    _daemon_ok(daemon)


def _login_fails(port: int, keys: list[tuple[str, str]], payload: bytes | None = None) -> bool:
    ini = raw.RawIscsi(port, f"{BF_BASE}:disk1", timeout=10)
    try:
        if payload is not None:
            ini.send(payload)
            return ini.closed(10)
        try:
            ini.login_pdu(keys, 0, 1)
        except raw.LoginFailed as e:
            return e.status >> 8 == 2 and ini.closed(10)
        return False
    except raw.Dropped:
        return True
    finally:
        ini.close()


def test_login_with_oversized_keys_is_refused(daemon: Any) -> None:
    port = _setup(daemon)
    rss0 = _rss(daemon)
    base = [
        ("InitiatorName", raw.INIT_IQN),
        ("TargetName", f"{BF_BASE}:disk1"),
        ("SessionType", "Normal"),
    ]
    assert _login_fails(port, base + [("X-" + "k" * 200, "v")])  # key name > 63
    assert _login_fails(port, base + [("TargetAlias", "v" * 4000)])  # value > 255
    assert _login_fails(port, base + [(f"X-k{i}", "v") for i in range(400)])  # too many keys
    # one login PDU far above the 8 KiB login MaxRecvDataSegmentLength
    big = text.encode(base + [("X-pad", "p" * 200)] * 1) + b"\0" * (1 << 20)
    pdu = P.encode_request(
        P.OP_LOGIN_REQ, 0x81, 0x800000001234 << 16, 7, (0, 1, 0, 0, 0, 0, 0), big, immediate=True
    )
    assert _login_fails(port, [], payload=pdu)
    # an endless login text in C-bit PDUs: refused past 64 KiB
    ini = raw.RawIscsi(port, f"{BF_BASE}:disk1", timeout=10)
    try:
        refused = False
        chunk = b"X-a=" + b"b" * 250 + b"\0"
        for _ in range(400):
            f1 = 0x40 | (0 << 2) | 1  # C bit, CSG 0, NSG 1, no transit
            try:
                ini.send(
                    P.encode_request(
                        P.OP_LOGIN_REQ,
                        f1,
                        ini.isid << 16,
                        7,
                        (0, 1, 0, 0, 0, 0, 0),
                        chunk * 28,
                        immediate=True,
                    )
                )
                r = ini.recv()
            except (raw.Dropped, ConnectionError):
                refused = True
                break
            if r.w36 >> 24:
                refused = True
                break
        assert refused
    finally:
        ini.close()
    assert _good_io(port, 5) == 5
    grown = _rss(daemon) - rss0
    print(f"\noversized logins refused; reactor RSS +{grown / MIB:.1f} MiB")
    assert grown < RSS_BOUND
    _daemon_ok(daemon)


def test_initiator_that_never_reads_is_bounded(daemon: Any) -> None:
    port = _setup(daemon)
    rss0 = _rss(daemon)
    bad = raw.RawIscsi(port, f"{BF_BASE}:disk1", timeout=30)
    bad.login()
    bad.clear_unit_attention()
    bad.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    stop = threading.Event()
    sent = [0]

    def flood() -> None:
        # WRITEs with all their data immediate and 1 MiB READs, a window of
        # them after another, and never a byte read back
        bad.s.settimeout(2.0)
        i = 0
        try:
            while not stop.is_set():
                if i % 2:
                    pdu = _cmd_pdu(bad, 0x2000 + i, raw.read10((i % 60) * 2048, 2048), MIB, 0xC1)
                else:
                    pdu = _cmd_pdu(
                        bad,
                        0x2000 + i,
                        raw.write10((i % 60) * 2048, 16),
                        8192,
                        0xA1,
                        b"\x5a" * 8192,
                    )
                bad.cmdsn += 1
                bad.s.sendall(pdu)
                sent[0] += 1
                i += 1
        except (TimeoutError, OSError):
            pass  # the target stopped reading us: that is the point

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    time.sleep(3)
    assert _good_io(port, 30) == 30  # the other initiator is not starved
    stop.set()
    t.join(10)
    grown = _rss(daemon) - rss0
    print(
        f"\nnever-reading initiator: {sent[0]} commands sent before the target stopped reading; reactor RSS +{grown / MIB:.1f} MiB"
    )
    assert grown < RSS_BOUND
    bad.close()
    assert _wait_pool_idle(daemon) == 0  # every buffer back in the pool
    assert _good_io(port, 5) == 5
    _daemon_ok(daemon)


def _pool_in_use(d: Any) -> int:
    return sum(int(r.get("in_use", 0)) for r in d.rpc("iobuf_get_stats"))


def _wait_pool_idle(d: Any, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    n = _pool_in_use(d)
    while n and time.monotonic() < deadline:
        time.sleep(0.2)
        n = _pool_in_use(d)
    return n


def test_aio_data_path_uses_the_pool_and_gives_it_back(daemon: Any, tmp_path: Path) -> None:
    port = _setup(daemon)
    f = tmp_path / "aio.img"
    f.write_bytes(bytes(16 * MIB))
    daemon.rpc("bdev_aio_create", {"filename": str(f), "name": "Aio0", "block_size": 512})
    daemon.rpc(
        "iscsi_target_node_add_lun", {"name": f"{BF_BASE}:disk1", "bdev_name": "Aio0", "lun_id": 1}
    )
    before = sum(int(r.get("acquires", 0)) for r in daemon.rpc("iobuf_get_stats"))
    ini = raw.RawIscsi(port, f"{BF_BASE}:disk1", timeout=30)
    ini.login()
    ini.clear_unit_attention(lun=1)
    import os as _os

    for i in range(4):
        data = _os.urandom(2 * MIB)  # streamed through burst buffers, read back staged
        assert ini.command(raw.write10(i * 4096, 4096), data=data, lun=1).status == raw.GOOD
        r = ini.command(raw.read10(i * 4096, 4096), 2 * MIB, read=True, lun=1)
        assert r.status == raw.GOOD and bytes(r.data) == data
    ini.logout()
    ini.close()
    stats = daemon.rpc("iobuf_get_stats")
    used = sum(int(r.get("acquires", 0)) for r in stats) - before
    print(
        f"\naio LUN: {used} pool acquisitions for 8 x 2 MiB; high water {max(int(r.get('high_water', 0)) for r in stats)} buffers"
    )
    assert used >= 8
    assert _wait_pool_idle(daemon) == 0
    with open(f, "rb") as fh:
        fh.seek(3 * 4096 * 512)
        assert fh.read(2 * MIB) == data  # on the medium, not only in our buffers
    _daemon_ok(daemon)
