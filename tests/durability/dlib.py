"""Helpers for the durability tests: a daemon with a wcache bdev (a volatile
write-cache model) exported over NVMe/TCP and iSCSI, and two small hosts of
our own (the NVMe/TCP host library and the raw iSCSI initiator) with the
same four verbs: write (optionally FUA), flush, write cache on/off, read."""

from __future__ import annotations

import importlib.util
import socket
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

NQN = "nqn.2016-06.io.blockfabric:durable"
IQN_NAME = "durable"
IQN = f"iqn.2016-06.io.blockfabric:{IQN_NAME}"
DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery"
TESTS = Path(__file__).resolve().parents[1]


def load_raw_iscsi() -> ModuleType:
    name = "bf_iscsi_raw"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TESTS / "transports" / f"{name}.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ target
def wcache_volume(
    d: Any, size_mb: int, block_size: int = 512, ignore_fua: bool = False, name: str = "WC0"
) -> str:
    """Malloc0 with the wcache bdev NAME in front of it."""
    d.rpc(
        "bdev_malloc_create",
        {"name": "Malloc0", "num_blocks": (size_mb << 20) // block_size, "block_size": block_size},
    )
    d.rpc(
        "bdev_wcache_create",
        {"base_bdev_name": "Malloc0", "name": name, "ignore_fua": ignore_fua},
    )
    return name


def power_fail(d: Any, name: str = "WC0", reorder: bool = False, seed: int = 1) -> dict[str, Any]:
    r = d.rpc("bdev_wcache_power_fail", {"name": name, "reorder": reorder, "seed": seed})
    assert isinstance(r, dict) and "dropped" in r, r
    return r


def wcache_stats(d: Any, name: str = "WC0") -> dict[str, Any]:
    b = d.rpc("bdev_get_bdevs", {"name": name})[0]
    return dict(b.get("driver_specific", {}).get("wcache", {}))


def export_nvmf(d: Any, port: int, bdev: str) -> None:
    d.rpc("nvmf_create_transport", {"trtype": "TCP"})
    d.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True, "serial_number": "BFD1"})
    d.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": bdev}})
    addr = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
    d.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": addr})
    d.rpc("nvmf_subsystem_add_listener", {"nqn": DISCOVERY_NQN, "listen_address": addr})


def export_iscsi(d: Any, port: int, bdevs: dict[str, str]) -> None:
    """Portal group 1 on PORT, initiator group 2 (anyone from 127.0.0.1), one
    target node per entry of BDEVS (node name -> bdev), LUN 0."""
    d.rpc(
        "iscsi_create_portal_group",
        {"tag": 1, "portals": [{"host": "127.0.0.1", "port": str(port)}]},
    )
    d.rpc(
        "iscsi_create_initiator_group",
        {"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]},
    )
    for node, bdev in bdevs.items():
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


# ------------------------------------------------------------------ hosts
class NvmeHost:
    """The NVMe/TCP host library, 2 I/O queues (on both reactors of a
    2-reactor target); writes alternate between them, a flush goes to the
    queue that did not carry the last write."""

    def __init__(self, port: int, nqn: str = NQN, queues: int = 2) -> None:
        from blockfabric.transports.nvmf_host.controller import Controller

        self.c = Controller("127.0.0.1", port, nqn, nr_io_queues=queues, kato_ms=0).connect()
        ns = self.c.identify_namespace(1)
        self.bs = ns.block_size
        self.nblocks = ns.nsze
        self._n = 0

    @property
    def vwc_present(self) -> bool:
        assert self.c.id_ctrl is not None
        return bool(self.c.id_ctrl.raw[525] & 1)

    def write(self, lba: int, data: bytes, fua: bool = False) -> None:
        self._n += 1
        self.c.write(1, lba, data, self.bs, q=self._n, fua=fua)

    def flush(self) -> None:
        self.c.flush(1, q=self._n + 1)

    def set_write_cache(self, on: bool) -> None:
        from blockfabric.transports.nvmf import spec as S

        self.c.set_features(S.FID_VOLATILE_WC, 1 if on else 0)
        assert self.c.get_features(S.FID_VOLATILE_WC) & 1 == (1 if on else 0)

    def read(self, lba: int, nblocks: int) -> bytes:
        return self.c.read(1, lba, nblocks, self.bs)

    def close(self) -> None:
        self.c.close()


GOOD = 0


class IscsiHost:
    """The raw iSCSI initiator: WRITE(10) with or without FUA, SYNCHRONIZE
    CACHE(10), the caching mode page's WCE through MODE SENSE/SELECT(10)."""

    def __init__(self, port: int, iqn: str = IQN) -> None:
        raw = load_raw_iscsi()
        self.raw = raw
        self.s = raw.RawIscsi(port, iqn)
        self.s.login()
        self.s.clear_unit_attention()
        r = self.s.command(bytes([0x25]) + bytes(9), edtl=8, read=True)  # READ CAPACITY(10)
        assert r.status == GOOD, r
        last, self.bs = struct.unpack(">II", bytes(r.data[:8]))
        self.nblocks = last + 1

    def _ok(self, r: Any, what: str) -> Any:
        assert r.status == GOOD, f"{what}: status {r.status:#x} sense {bytes(r.sense).hex()}"
        return r

    def write(self, lba: int, data: bytes, fua: bool = False) -> None:
        n = len(data) // self.bs
        cdb = bytearray(self.raw.write10(lba, n))
        if fua:
            cdb[1] |= 0x08
        self._ok(self.s.command(bytes(cdb), data=data), f"WRITE(10) lba {lba}")

    def flush(self) -> None:
        self._ok(self.s.command(bytes([0x35]) + bytes(9)), "SYNCHRONIZE CACHE(10)")

    def caching_page(self) -> bytes:
        cdb = bytes([0x5A, 0x08, 0x08, 0, 0, 0, 0, 0, 252, 0])  # DBD, page 08h current
        r = self._ok(self.s.command(cdb, edtl=252, read=True), "MODE SENSE(10) caching")
        data = bytes(r.data)
        bdl = struct.unpack_from(">H", data, 6)[0]
        page = data[8 + bdl :]
        assert page and page[0] & 0x3F == 0x08, data.hex()
        return page[: 2 + page[1]]

    def dpofua(self) -> bool:
        cdb = bytes([0x5A, 0x08, 0x08, 0, 0, 0, 0, 0, 252, 0])
        r = self._ok(self.s.command(cdb, edtl=252, read=True), "MODE SENSE(10)")
        return bool(r.data[3] & 0x10)

    def set_write_cache(self, on: bool) -> None:
        page = bytearray(self.caching_page())
        page[0] &= 0x3F  # PS is reserved in MODE SELECT
        page[2] = (page[2] | 0x04) if on else (page[2] & ~0x04)
        param = bytes(8) + bytes(page)
        cdb = bytes([0x55, 0x10, 0, 0, 0, 0, 0]) + struct.pack(">H", len(param)) + b"\0"
        self._ok(self.s.command(cdb, data=param), "MODE SELECT(10) caching")
        assert bool(self.caching_page()[2] & 0x04) == on

    def read(self, lba: int, nblocks: int) -> bytes:
        r = self._ok(
            self.s.command(self.raw.read10(lba, nblocks), edtl=nblocks * self.bs, read=True),
            f"READ(10) lba {lba}",
        )
        return bytes(r.data)

    def close(self) -> None:
        try:
            self.s.logout()
        finally:
            self.s.close()


# ------------------------------------------------------------ reactor kills
def reactors(d: Any) -> list[dict[str, Any]]:
    return list(d.rpc("blockfabric_get_status")["reactors"])


def kill_reactor(d: Any, rid: int, timeout: float = 30.0) -> tuple[float, int]:
    """SIGKILL reactor RID; wait until the supervisor restarted it (a new pid
    on the same id). Returns (time.time() of the kill, the new pid)."""
    import os
    import signal
    import time

    old = next(r for r in reactors(d) if r["id"] == rid)
    t_kill = time.time()
    os.kill(int(old["pid"]), signal.SIGKILL)
    end = time.monotonic() + timeout
    while True:
        try:
            r = next(r for r in reactors(d) if r["id"] == rid)
            if r["pid"] != old["pid"] and r.get("state", "running") == "running":
                return t_kill, int(r["pid"])
        except Exception:  # noqa: BLE001 - the supervisor may be busy restarting
            pass
        if time.monotonic() > end:
            raise AssertionError(f"reactor {rid} was not restarted within {timeout} s")
        time.sleep(0.05)


def _pat(lba: int, gen: int, nblocks: int, bs: int) -> bytes:
    return b"".join(struct.pack("<QQ", lba + i, gen) * (bs // 16) for i in range(nblocks))


class IscsiPatternWriter:
    """A thread that writes a pattern (LBA + generation in every block) to a
    LUN over the raw initiator, reads every write back, and on a dropped
    connection logs in again (every ``delay`` s for up to ``loss_timeout``
    s) and reads back every unit whose write was acknowledged (a write lost
    in flight: each block old or new). Counts drops, I/Os, miscompares."""

    def __init__(
        self,
        port: int,
        iqn: str,
        units: int = 256,
        unit_blocks: int = 8,
        loss_timeout: float = 30.0,
        delay: float = 0.1,
    ) -> None:
        import threading

        self.port, self.iqn = port, iqn
        self.units, self.ub = units, unit_blocks
        self.loss_timeout, self.delay = loss_timeout, delay
        self.gens = [0] * units
        self.acked = [0] * units
        self.uncertain: dict[int, tuple[int, int]] = {}
        self.drops = 0
        self.ios = 0
        self.miscompares = 0
        self.bad: list[str] = []
        self.error = ""
        self.recoveries: list[dict[str, float]] = []
        self.lcore: int | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name=f"iscsi-writer-{iqn}", daemon=True)
        self.h: IscsiHost | None = None

    def start(self) -> IscsiPatternWriter:
        self.h = IscsiHost(self.port, self.iqn)
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._t.join(60)
        if self.h is not None:
            import contextlib

            with contextlib.suppress(Exception):
                self.h.close()

    def _check(self, u: int, got: bytes, gens: tuple[int, ...]) -> bool:
        assert self.h is not None
        bs = self.h.bs
        lba = u * self.ub
        for i in range(self.ub):
            blk = got[i * bs : (i + 1) * bs]
            if not any(g == 0 or blk == _pat(lba + i, g, 1, bs) for g in gens):
                self.miscompares += 1
                if len(self.bad) < 10:
                    self.bad.append(f"unit {u} block {lba + i}: want gen {gens}")
                return False
        return True

    def _relogin(self, why: str) -> None:
        import contextlib
        import time

        t_lost = time.time()
        self.drops += 1
        if self.h is not None:
            with contextlib.suppress(Exception):
                self.h.s.close()
        self.h = None
        end = time.monotonic() + self.loss_timeout
        while True:
            try:
                self.h = IscsiHost(self.port, self.iqn)
                break
            except Exception as e:  # noqa: BLE001 - retried until the loss timeout
                if time.monotonic() > end:
                    raise ConnectionError(f"no login within {self.loss_timeout} s: {e}") from e
                time.sleep(self.delay)
        # the first completed I/O, then every acknowledged unit read back
        self.h.read(0, 1)
        t_io = time.time()
        self.recoveries.append({"lost_at": t_lost, "io_at": t_io, "ms": (t_io - t_lost) * 1e3})
        for u in range(self.units):
            if self.acked[u] or u in self.uncertain:
                old, new = self.uncertain.pop(u, (self.acked[u], self.acked[u]))
                got = self.h.read(u * self.ub, self.ub)
                self._check(u, got, (new, old))
                self.acked[u] = 0 if old != new else new  # unknown until written again

    def _run(self) -> None:
        import random

        rng = random.Random(self.iqn)
        try:
            while not self._stop.is_set():
                assert self.h is not None
                u = rng.randrange(self.units)
                self.gens[u] += 1
                g = self.gens[u]
                data = _pat(u * self.ub, g, self.ub, self.h.bs)
                try:
                    self.h.write(u * self.ub, data)
                except Exception as e:  # noqa: BLE001 - a drop of any kind
                    if isinstance(e, AssertionError):
                        raise
                    self.uncertain[u] = (self.acked[u], g)
                    self._relogin(str(e))
                    continue
                self.acked[u] = g
                try:
                    got = self.h.read(u * self.ub, self.ub)
                except Exception as e:  # noqa: BLE001 - a drop of any kind
                    if isinstance(e, AssertionError):
                        raise
                    self._relogin(str(e))
                    continue
                self.ios += 2
                self._check(u, got, (g,))
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = f"{type(e).__name__}: {e}"


def nvme_admin_reactor(d: Any, nqn: str = NQN, timeout: float = 20.0) -> int:
    """The reactor holding the admin queue of the (first) controller of NQN:
    killing it takes the controller down."""
    import time

    end = time.monotonic() + timeout
    while True:
        for q in d.rpc("nvmf_subsystem_get_qpairs", {"nqn": nqn}):
            if q["qid"] == 0:
                return int(str(q["thread"]).rsplit("_", 1)[-1])
        if time.monotonic() > end:
            raise AssertionError(f"no admin queue pair of {nqn}")
        time.sleep(0.1)
