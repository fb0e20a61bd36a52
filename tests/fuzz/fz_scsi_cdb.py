"""SCSI CDB emulation (transports/scsi: SPC-4 / SBC-3 / persistent
reservations / mode pages) over an in-memory channel, a sequence of commands
per input so that state (reservations, unit attentions, mode pages) matters.

Input: byte 0 = device setup (bit 0 power-on unit attention, bit 1 deferred
completions, bit 2 read-only LUN); then up to 24 records
``ctl:u8 cdb:16 len:u16le [data:len]`` where ctl bit 0 = second initiator,
bit 1 = a LUN that does not exist, bit 2 = the command carries ``len`` bytes of
Data-Out (else ``len`` is the expected read length), bit 3 = the I_T nexus is
lost after the command. Every command completes exactly once with GOOD, CHECK
CONDITION (valid fixed sense, never HARDWARE ERROR: that is a handler bug),
BUSY or RESERVATION CONFLICT."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from fuzzlib import Bytes, adapt_channel, load_path

from blockfabric.bdevs.base import Bdev
from blockfabric.transports.scsi import PrStore, ScsiDevice, ScsiLun, ScsiTask

lib: Any = load_path("_fz_scsi_testlib", "transports/scsi/scsi_testlib.py")
adapt_channel(lib.MemChannel)
NB = 256
BS = 512
MAX_RECORDS = 24


def _device(cfg: int) -> tuple[ScsiDevice, Any]:
    bdev = Bdev(
        name="Malloc0",
        block_size=BS,
        num_blocks=NB,
        uuid="12345678-1234-5678-9abc-def012345678",
        product_name="Malloc disk",
    )
    ch = lib.MemChannel(bdev, bool(cfg & 2))
    dev = ScsiDevice("iqn.2024-01.test:tgt", PrStore(None), power_on_ua=bool(cfg & 1))
    lun = ScsiLun(0, bdev, lambda: ch, dev)
    lun.read_only = bool(cfg & 4)
    dev.add_lun(lun)
    return dev, ch


def one_input(data: bytes) -> None:
    b = Bytes(data)
    cfg = b.u8()
    dev, ch = _device(cfg)
    for tag in range(1, MAX_RECORDS + 1):
        if b.left < 17:
            break
        ctl = b.u8()
        cdb = b.take(16)
        n = b.u16()
        payload = b.take(n) if ctl & 4 else None
        nexus = lib.I2 if ctl & 1 else lib.I1
        t = ScsiTask(
            lun=3 if ctl & 2 else 0,
            cdb=cdb,
            initiator_port=nexus[0],
            target_port=nexus[1],
            tag=tag,
            data_out=memoryview(payload) if payload is not None else None,
            expected_transfer_length=len(payload) if payload is not None else n,
            direction="write" if payload is not None else "read",
        )
        out: list[ScsiTask] = []
        dev.execute(t, out.append)
        if not out:
            ch.run()
        assert out == [t], f"completed {len(out)} times: {cdb.hex()}"
        assert t.status in (0, 2, 8, 0x18), t
        if t.status == 2:
            assert len(t.sense) == 18 and t.sense[0] & 0x7F == 0x70 and t.sense[2] & 0xF, t
            assert t.sense[2] & 0xF != 4, f"HARDWARE ERROR for {cdb.hex()}: {t.sense.hex()}"
        else:
            assert t.sense == b"", t
        for v in t.data_in:
            len(v)
        if ctl & 8:
            dev.nexus_lost(*nexus)


def _rec(
    cdb: bytes | list[int], data: bytes | None = None, edtl: int = 4096, ctl: int = 0
) -> bytes:
    c = bytes(cdb).ljust(16, b"\0")
    if data is not None:
        return bytes([ctl | 4]) + c + struct.pack("<H", len(data)) + data
    return bytes([ctl]) + c + struct.pack("<H", edtl)


def seeds() -> Iterable[bytes]:
    key1 = struct.pack(">Q", 0x1111)
    key2 = struct.pack(">Q", 0x2222)
    reg = lambda k: bytes(8) + k + bytes(8)  # noqa: E731  PR OUT parameter list
    res = lambda k: k + bytes(16)  # noqa: E731
    basic = [
        _rec([0x00]),  # TEST UNIT READY
        _rec([0x12, 0, 0, 0, 96, 0], edtl=96),  # INQUIRY
        _rec([0x12, 1, 0x00, 0, 255, 0], edtl=255),  # VPD list
        _rec([0x12, 1, 0x80, 0, 255, 0], edtl=255),
        _rec([0x12, 1, 0x83, 0, 255, 0], edtl=255),
        _rec([0x12, 1, 0xB0, 0, 255, 0], edtl=255),
        _rec([0x12, 1, 0xB1, 0, 255, 0], edtl=255),
        _rec([0x12, 1, 0xB2, 0, 255, 0], edtl=255),
        _rec([0x25], edtl=8),  # READ CAPACITY(10)
        _rec([0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32], edtl=32),  # READ CAPACITY(16)
        _rec([0xA0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], edtl=4096),  # REPORT LUNS
        _rec([0x03, 0, 0, 0, 18, 0], edtl=18),  # REQUEST SENSE
        _rec([0x1A, 0, 0x3F, 0, 255, 0], edtl=255),  # MODE SENSE(6) all pages
        _rec([0x5A, 0, 0x08, 0, 0, 0, 0, 0x01, 0, 0], edtl=256),  # MODE SENSE(10) caching
    ]
    yield bytes([0]) + b"".join(basic)
    io = [
        _rec([0x2A, 0, 0, 0, 0, 0, 0, 0, 2, 0], data=b"\xab" * 1024),  # WRITE(10)
        _rec([0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0], edtl=1024),  # READ(10)
        _rec([0x8A, 0] + [0] * 7 + [8] + [0, 0, 0, 1, 0, 0], data=b"\xcd" * 512),  # WRITE(16)
        _rec([0x88, 0] + [0] * 7 + [8] + [0, 0, 0, 1, 0, 0], edtl=512),  # READ(16)
        _rec([0x0A, 0, 0, 16, 1, 0], data=b"\x01" * 512),  # WRITE(6)
        _rec([0x08, 0, 0, 16, 1, 0], edtl=512),  # READ(6)
        _rec([0x2E, 0, 0, 0, 0, 0, 0, 0, 1, 0], data=b"\xab" * 512),  # WRITE AND VERIFY
        _rec([0x2F, 0x02, 0, 0, 0, 0, 0, 0, 1, 0], data=b"\xab" * 512),  # VERIFY bytchk
        _rec([0x41, 0, 0, 0, 0, 32, 0, 0, 4, 0], data=b"\x77" * 512),  # WRITE SAME(10)
        _rec(
            [0x93, 0x08] + [0] * 7 + [40, 0, 0, 0, 4, 0, 0], data=b"\0" * 512
        ),  # WRITE SAME(16) unmap
        _rec(
            [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], data=struct.pack(">HH4xQI4x", 22, 16, 64, 8)
        ),  # UNMAP
        _rec(
            [0x89, 0] + [0] * 7 + [0, 0, 0, 0, 1, 0, 0], data=b"\xab" * 512 + b"\x99" * 512
        ),  # C&W
        _rec([0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  # SYNCHRONIZE CACHE(10)
        _rec([0x91, 0] + [0] * 14),  # SYNCHRONIZE CACHE(16)
        _rec([0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  # PRE-FETCH
        _rec([0x9E, 0x12] + [0] * 7 + [0] + [0, 0, 0, 32, 0, 0], edtl=32),  # GET LBA STATUS
        _rec([0x1B, 0, 0, 0, 1, 0]),  # START STOP UNIT
        _rec([0x1E, 0, 0, 0, 1, 0]),  # PREVENT ALLOW
        _rec(
            [0x15, 0x10, 0, 0, 24, 0], data=bytes(4) + bytes([0x08, 18, 0x04]) + bytes(17)
        ),  # MODE SELECT
    ]
    yield bytes([0]) + b"".join(io)
    yield bytes([2]) + b"".join(io[:4])
    yield bytes([5]) + b"".join(io[:2])
    pr = [
        _rec([0x5F, 0x00, 0, 0, 0, 0, 0, 0, 24, 0], data=reg(key1)),  # REGISTER
        _rec([0x5F, 0x00, 0, 0, 0, 0, 0, 0, 24, 0], data=reg(key2), ctl=1),
        _rec([0x5F, 0x01, 0x05, 0, 0, 0, 0, 0, 24, 0], data=res(key1)),  # RESERVE WE-RO
        _rec([0x5E, 0x00, 0, 0, 0, 0, 0, 0x10, 0, 0], edtl=4096),  # READ KEYS
        _rec([0x5E, 0x01, 0, 0, 0, 0, 0, 0x10, 0, 0], edtl=4096),  # READ RESERVATION
        _rec([0x5E, 0x02, 0, 0, 0, 0, 0, 0x10, 0, 0], edtl=4096),  # REPORT CAPABILITIES
        _rec([0x5E, 0x03, 0, 0, 0, 0, 0, 0x10, 0, 0], edtl=4096),  # READ FULL STATUS
        _rec([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], data=b"x" * 512, ctl=1),  # conflict?
        _rec(
            [0x5F, 0x04, 0x05, 0, 0, 0, 0, 0, 24, 0], data=key2 + key1 + bytes(8), ctl=1
        ),  # PREEMPT
        _rec([0x5F, 0x02, 0x05, 0, 0, 0, 0, 0, 24, 0], data=res(key2), ctl=1),  # RELEASE
        _rec([0x5F, 0x03, 0, 0, 0, 0, 0, 0, 24, 0], data=res(key2), ctl=1 | 8),  # CLEAR
        _rec([0x16, 0, 0, 0, 0, 0]),  # RESERVE(6)
        _rec([0x17, 0, 0, 0, 0, 0], ctl=1),  # RELEASE(6)
    ]
    yield bytes([0]) + b"".join(pr)
    yield bytes([1]) + _rec([0x00]) + _rec([0x03, 0, 0, 0, 18, 0], edtl=18) + _rec([0x00], ctl=2)
