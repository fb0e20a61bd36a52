"""Acceptance: iSCSI LUNs on the parts of a split bdev (2-reactor daemon).

Malloc0 (32 MiB) is split in 4; each part is one LUN of a target node. Each
LUN reports its own capacity (the raw initiator's READ CAPACITY(10) and
libiscsi's iscsi-readcapacity16), data written at a part's first and last
block lands at that part's offset of the base, and a command past a part's
end gets CHECK CONDITION / LBA OUT OF RANGE (ASC 0x21) without touching the
neighbouring part.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from bftest import missing_tool

from blockfabric.shm.segment import SharedSegment

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BF_BASE = "iqn.2016-06.io.blockfabric"
BLOCKS = 65536  # 32 MiB of 512 B
PART = BLOCKS // 4


def _raw() -> ModuleType:
    name = "bf_iscsi_raw"
    if name not in sys.modules:
        path = Path(__file__).parents[1] / "transports" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_iscsi_luns_on_split_parts(daemon_factory: Any) -> None:
    raw = _raw()
    port = _free_port()
    d = daemon_factory(mask="0x3").start()
    d.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": BLOCKS, "block_size": 512})
    parts = d.rpc("bdev_split_create", {"base_bdev": "Malloc0", "split_count": 4})
    assert parts == [f"Malloc0p{i}" for i in range(4)]
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
            "name": "split", "alias_name": "split",
            "luns": [{"bdev_name": p, "lun_id": i} for i, p in enumerate(parts)],
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}], "queue_depth": 32,
            "disable_chap": True,
        },
    )  # fmt: skip
    assert all(b["claimed"] for b in d.rpc("bdev_get_bdevs"))

    ini = raw.RawIscsi(port, f"{BF_BASE}:split", timeout=20)
    ini.login()
    try:
        for lun in range(4):
            assert ini.clear_unit_attention(lun).status == raw.GOOD
            r = ini.command(bytes([0x25]) + bytes(9), 8, read=True, lun=lun)
            assert r.status == raw.GOOD
            last, bs = struct.unpack(">II", bytes(r.data[:8]))
            assert (last, bs) == (PART - 1, 512), (lun, last, bs)
            first_blk = bytes([0xA0 + lun]) * 512
            last_blk = bytes([0xB0 + lun]) * 1024
            w = ini.command(raw.write10(0, 1), data=first_blk, lun=lun)
            assert w.status == raw.GOOD
            w = ini.command(raw.write10(PART - 2, 2), data=last_blk, lun=lun)
            assert w.status == raw.GOOD
            # past the end: refused, nothing written into the next part
            bad = ini.command(raw.write10(PART - 1, 2), data=bytes(1024), lun=lun)
            assert bad.status == raw.CHECK_CONDITION and bad.asc == 0x21, bad
            bad = ini.command(raw.read10(PART, 1), 512, read=True, lun=lun)
            assert bad.status == raw.CHECK_CONDITION and bad.asc == 0x21, bad
            back = ini.command(raw.read10(PART - 2, 2), 1024, read=True, lun=lun)
            assert back.status == raw.GOOD and bytes(back.data) == last_blk
    finally:
        ini.close()
    seg = SharedSegment.attach(f"blockfabric.{d.name}.malloc.Malloc0")
    try:
        for lun in range(4):
            o = lun * PART * 512
            assert bytes(seg.buf[o : o + 512]) == bytes([0xA0 + lun]) * 512
            e = (lun + 1) * PART * 512
            assert bytes(seg.buf[e - 1024 : e]) == bytes([0xB0 + lun]) * 1024
    finally:
        seg.close()

    # an independent initiator (libiscsi) sees the part's capacity as well
    tool = shutil.which("iscsi-readcapacity16")
    if tool is None:
        missing_tool("libiscsi's iscsi-readcapacity16 is not installed")
    else:
        p = subprocess.run(
            [
                tool,
                "-i",
                "iqn.2024-01.io.blockfabric:rc16",
                f"iscsi://127.0.0.1:{port}/{BF_BASE}:split/2",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert p.returncode == 0, p.stderr
        assert f"Total size:{PART * 512}" in p.stdout, p.stdout
    assert "Traceback" not in d.log()
