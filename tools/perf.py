"""`blockfabric perf`: an NVMe/TCP load generator modelled on spdk_nvme_perf.

The parent connects the admin queue (Identify, keep-alive), then starts
worker processes (``-P N``, or one per core of ``-c MASK``, pinned); each
worker opens its own I/O queue pair and runs a lean loop: one non-blocking
socket, preallocated buffers, ``recv_into``, all capsules of a loop turn in
one ``sendmsg``, busy-polling while I/O is outstanding. Results come back
over pipes; the parent prints per-worker and total IOPS, MiB/s, latency
percentiles and each process's CPU use (so a saturated load generator is
not mistaken for a slow target).

``--verify`` writes a pattern that encodes LBA and a generation into every
block, reads it back and checks every byte; miscompares are counted, the
first offsets reported, and the exit status is non-zero.

``--ctrlr-loss-timeout-sec`` / ``--reconnect-delay-sec`` (bdev_nvme's
options): a worker whose connection drops (e.g. the target's reactor was
killed) reconnects its I/O queue; a Connect the target refuses (the
controller died with its admin queue) makes the parent connect a new
controller and the workers follow its cntlid. With ``--verify`` each worker
keeps the generation of every acknowledged write: after each reconnect (and
at the end) every such unit is read back and must hold exactly that
generation; a write lost in flight is not acknowledged and its unit must hold
the old or the new generation, block by block.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import select
import socket
import struct
import sys
import time
from collections import Counter
from typing import Any

TRID_KEYS = (
    "trtype",
    "adrfam",
    "traddr",
    "trsvcid",
    "subnqn",
    "hostnqn",
    "hostaddr",
    "hostsvcid",
    "priority",
    "ns",
    "alt_traddr",
)
SUBMISSION_MODES = ("per-command", "batch")
PATTERNS = ("read", "write", "randread", "randwrite", "rw", "randrw")
# without --busy-poll a worker spins this long on an idle socket before it
# sleeps in select() (longer spins measured slower for 128 KiB reads: the
# spinning recv() competes with the target's sends for the socket)
SPIN_NS = 50_000


# an RDMA worker with commands outstanding and no completion for this long
# reports the queue lost (the RDMA CM may not tell: a user-space QP is not
# moved to error by a disconnect)
RDMA_STALL_S = 30.0


class TridError(ValueError):
    pass


def parse_trid(s: str) -> dict[str, str]:
    """SPDK transport ID string: 'trtype:TCP adrfam:IPv4 traddr:... trsvcid:4420 subnqn:...'.
    Keys are case-insensitive, ``key:value`` or ``key=value``, separated by spaces."""
    out: dict[str, str] = {}
    for tok in s.split():
        sep = min((i for i in (tok.find(":"), tok.find("=")) if i > 0), default=-1)
        if sep <= 0:
            raise TridError(f"transport ID element {tok!r} is not key:value")
        k, v = tok[:sep].lower(), tok[sep + 1 :]
        if k not in TRID_KEYS:
            raise TridError(f"unknown transport ID key {k!r} (known: {', '.join(TRID_KEYS)})")
        if not v:
            raise TridError(f"transport ID key {k!r} has an empty value")
        if k in out:
            raise TridError(f"transport ID key {k!r} given twice")
        out[k] = v
    if "trtype" not in out:
        raise TridError("transport ID needs trtype (TCP, RDMA or FC)")
    if out["trtype"].upper() == "FC":
        return _parse_fc_trid(out)
    tr = out["trtype"].upper()
    if tr == "RDMA":
        from ..transports.nvmf_host.rdma_verbs import pyverbs_refusal

        why = pyverbs_refusal()
        if why is not None:
            raise TridError(why)
    elif tr != "TCP":
        raise TridError(f"trtype {out['trtype']!r} is not supported (TCP, RDMA or FC)")
    out["trtype"] = tr
    fam = out.setdefault("adrfam", "IPv4")
    if fam.lower() not in ("ipv4", "ipv6"):
        raise TridError(f"adrfam {fam!r} must be IPv4 or IPv6")
    if "traddr" not in out:
        raise TridError("transport ID needs traddr")
    port = out.setdefault("trsvcid", "4420")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise TridError(f"trsvcid {port!r} is not a TCP port")
    if "ns" in out and (not out["ns"].isdigit() or int(out["ns"]) == 0):
        raise TridError(f"ns {out['ns']!r} must be a namespace id >= 1")
    out.setdefault("subnqn", "nqn.2014-08.org.nvmexpress.discovery")
    return out


def _parse_fc_trid(out: dict[str, str]) -> dict[str, str]:
    """FC over the loopback LLD: traddr (and hostaddr, the host port) are
    ``nn-0x<WWNN>:pn-0x<WWPN>``; there is no service id."""
    from ..transports.fc.addr import FcAddrError, parse_traddr

    out["trtype"] = "FC"
    fam = out.setdefault("adrfam", "FC")
    if fam.lower() != "fc":
        raise TridError(f"adrfam {fam!r} must be FC with trtype FC")
    if "traddr" not in out:
        raise TridError("transport ID needs traddr")
    for k in ("traddr", "hostaddr"):
        if k in out:
            try:
                out[k] = parse_traddr(out[k]).traddr
            except FcAddrError as e:
                raise TridError(f"{k}: {e}") from None
    svc = out.setdefault("trsvcid", "none")
    if svc != "none":
        raise TridError(f"trsvcid {svc!r}: FC has no service id")
    if "ns" in out and (not out["ns"].isdigit() or int(out["ns"]) == 0):
        raise TridError(f"ns {out['ns']!r} must be a namespace id >= 1")
    out.setdefault("subnqn", "nqn.2014-08.org.nvmexpress.discovery")
    return out


def parse_mask(mask: str) -> list[int]:
    try:
        v = int(mask, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"core mask {mask!r} is not hex") from None
    cores = [i for i in range(v.bit_length()) if v >> i & 1]
    if not cores:
        raise argparse.ArgumentTypeError("core mask selects no core")
    return cores


# ------------------------------------------------------------------ worker
def _pattern(lba: int, gen: int, nblocks: int, bs: int) -> bytes:
    return b"".join(struct.pack("<QQ", lba + i, gen) * (bs // 16) for i in range(nblocks))


def _first_diff(a: memoryview, b: bytes) -> int:
    for i in range(len(b)):
        if a[i] != b[i]:
            return i
    return -1


def worker_main(conn: Any, cfg: dict[str, Any], progress: Any, shared: Any = None) -> None:
    try:
        conn.send(_run_worker(cfg, progress, shared))
    except Exception as e:  # noqa: BLE001 - reported to the parent
        conn.send({"error": f"{type(e).__name__}: {e}"})
    conn.close()


def _tls_entry(t: list[str] | None) -> Any:
    if not t:
        return None
    from ..transports.tls.psk import PskEntry

    return PskEntry(t[0], t[1], bytes.fromhex(t[2]))


def _connect_queue(cfg: dict[str, Any]) -> Any:
    """A connected I/O queue (a blocking `BlockingQueue`; the caller switches
    its socket to non-blocking for the load loop)."""
    from ..transports.nvmf_host.controller import BlockingQueue

    if cfg.get("trtype") == "FC":
        from ..transports.nvmf_host.fc import FcBlockingQueue

        bq: BlockingQueue = FcBlockingQueue(
            cfg["traddr"],
            cfg["host_traddr"],
            cfg["qid"],
            cfg["qd"] + 1,
            10.0,
            cfg["subnqn"],
            cfg["hostnqn"],
            bytes.fromhex(cfg["hostid"]),
            cfg["assoc_id"],
        )
    elif cfg.get("trtype") == "RDMA":
        from ..transports.nvmf_host.rdma_verbs import RdmaBlockingQueue

        # queue entries for twice the depth: the target's receive buffers
        # need headroom (see RdmaHostQueue), -q commands in flight
        bq = RdmaBlockingQueue(
            cfg["traddr"],
            cfg["trsvcid"],
            cfg["qid"],
            max(cfg["qd"] + 1, min(2 * cfg["qd"] + 1, int(cfg.get("mqes") or 0))),
            10.0,
            cntlid=cfg["cntlid"],
            icd_cap=min(cfg["icd_max"], 8192),
            stage=cfg["io_size"],
            inflight=cfg["qd"],
        )
    else:
        bq = BlockingQueue(
            cfg["traddr"],
            cfg["trsvcid"],
            cfg["qid"],
            cfg["qd"] + 1,
            cfg["hdgst"],
            cfg["ddgst"],
            10.0,
            _tls_entry(cfg.get("tls")),
        )
    try:
        res = bq.execute(
            lambda cb: bq.q.connect(
                cfg["subnqn"],
                cfg["hostnqn"],
                bytes.fromhex(cfg["hostid"]),
                cfg["cntlid"],
                0,
                cb,
                disable_sqflow=True,  # reads then finish with one C2HData PDU
            ),
            f"Connect I/O queue {cfg['qid']}",
        )
        _authenticate_queue(cfg, bq, res)
    except BaseException:
        bq.close()
        raise
    bq.q.icd_max = cfg["icd_max"]
    return bq


def _authenticate_queue(cfg: dict[str, Any], bq: Any, connect_result: int) -> None:
    """DH-HMAC-CHAP on a worker's I/O queue (the secrets travel in ``cfg``)."""
    from ..transports.nvmf_host.auth import HostAuthConfig
    from ..transports.nvmf_host.controller import Controller

    dh = cfg.get("dhchap")
    auth = HostAuthConfig.from_strings(*dh) if dh else None
    c = Controller(
        cfg["traddr"], cfg["trsvcid"], cfg["subnqn"], hostnqn=cfg["hostnqn"], dhchap=auth
    )  # fmt: skip
    c._maybe_authenticate(bq, connect_result)


def _dhchap_from_args(a: Any) -> Any:
    """--dhchap-key / --dhchap-ctrlr-key FILE (DHHC-1 key files, checked like the
    keyring does: owner-only) and the offered --dhchap-digests / --dhchap-dhgroups."""
    from ..control.keyring import DhchapSecret, read_key_file
    from ..transports.nvmf_host.auth import HostAuthConfig

    if not a.dhchap_key:
        if a.dhchap_ctrlr_key:
            raise ValueError("--dhchap-ctrlr-key needs --dhchap-key")
        return None
    keys: list[DhchapSecret | None] = []
    for path in (a.dhchap_key, a.dhchap_ctrlr_key):
        if path is None:
            keys.append(None)
            continue
        m = read_key_file(os.path.abspath(path))
        if not isinstance(m, DhchapSecret):
            raise ValueError(f"{path}: not a DH-HMAC-CHAP secret (DHHC-1)")
        keys.append(m)
    digests = a.dhchap_digests.split(",") if a.dhchap_digests else None
    dhgroups = a.dhchap_dhgroups.split(",") if a.dhchap_dhgroups else None
    from ..transports.nvmf.auth_crypto import DHGROUP_IDS, HASH_IDS

    for v in digests or ():
        if v not in HASH_IDS:
            raise ValueError(f"--dhchap-digests: unknown {v!r}")
    for v in dhgroups or ():
        if v not in DHGROUP_IDS:
            raise ValueError(f"--dhchap-dhgroups: unknown {v!r}")
    assert keys[0] is not None
    return HostAuthConfig(keys[0], keys[1], digests, dhgroups)


class _Shared:
    """What the parent and the workers share for reconnects (RawValues: one
    writer each, plain ints). ``gen``/``cntlid``: the current controller,
    written by the parent after each controller reset; ``reset``: a worker
    whose I/O queue Connect was refused writes ``gen + 1`` there to ask the
    parent for a new controller; ``dead``: the parent gave up
    (ctrlr_loss_timeout_sec passed)."""

    def __init__(self, ctx: Any, cntlid: int) -> None:
        self.gen = ctx.RawValue("q", 0)
        self.cntlid = ctx.RawValue("q", cntlid)
        self.reset = ctx.RawValue("q", 0)
        self.dead = ctx.RawValue("q", 0)


def _reconnect(cfg: dict[str, Any], shared: Any, why: str) -> Any:
    """Connect this worker's I/O queue again, every ``reconnect_delay`` s,
    until ``ctrlr_loss_timeout`` s (-1: forever) have passed. A Connect the
    target refuses (the controller is gone: its admin queue's reactor died)
    asks the parent for a new controller and retries with its cntlid."""
    from ..transports.nvmf_host.queue import NvmeStatusError, TransportError

    loss = float(cfg["ctrlr_loss_timeout"])
    delay = max(0.01, float(cfg["reconnect_delay"]))
    deadline = None if loss < 0 else time.monotonic() + loss
    last = why
    while True:
        if shared.dead.value:
            raise ConnectionError(f"the controller is gone for good ({last})")
        gen = shared.gen.value
        try:
            return _connect_queue({**cfg, "cntlid": int(shared.cntlid.value)})
        except NvmeStatusError as e:
            last = str(e)
            shared.reset.value = gen + 1
            end = time.monotonic() + delay
            while shared.gen.value == gen and time.monotonic() < end and not shared.dead.value:
                time.sleep(0.005)
        except (OSError, TransportError, TimeoutError) as e:
            last = f"{type(e).__name__}: {e}"
            time.sleep(delay)
        if deadline is not None and time.monotonic() > deadline:
            raise ConnectionError(
                f"ctrlr_loss_timeout_sec {loss:g} passed without a reconnect ({last})"
            )


def _blocks_match(
    got: memoryview, lba: int, nlb: int, bs: int, gens: tuple[int, ...]
) -> tuple[int, int]:
    """(index of the first block that matches none of ``gens``' patterns, or -1;
    the gen every block matched, 0 when they differ). Gen 0 matches anything
    (never written by us: unknown contents)."""
    common = -1
    for i in range(nlb):
        blk = got[i * bs : (i + 1) * bs]
        hit = 0
        for g in gens:
            if g == 0 or blk == _pattern(lba + i, g, 1, bs):
                hit = g
                break
        else:
            return i, 0
        common = hit if common in (-1, hit) else 0
    return -1, max(common, 0)


def _run_worker(cfg: dict[str, Any], progress: Any, shared: Any = None) -> dict[str, Any]:
    from ..transports.nvmf_host.queue import (
        IOV_MAX_SEND,
        ST_HOST_PATH_ERROR,
        NvmeStatusError,
        TransportError,
        advance,
        status_str,
    )

    if cfg.get("core") is not None:
        os.sched_setaffinity(0, {cfg["core"]})
    reconnect = shared is not None and float(cfg.get("ctrlr_loss_timeout", 0)) != 0
    try:
        bq = _connect_queue({**cfg, "cntlid": int(shared.cntlid.value)} if reconnect else cfg)
    except (OSError, TransportError, NvmeStatusError, TimeoutError) as e:
        if not reconnect:
            raise
        # the controller was lost before this worker started
        bq = _reconnect(cfg, shared, f"{type(e).__name__}: {e}")
    rdma = cfg.get("trtype") == "RDMA"  # no socket: post SENDs, poll the CQ
    bq.sock.setblocking(False)
    sock, q = bq.sock, bq.q
    qd, bs, nsid = cfg["qd"], cfg["bs"], cfg["nsid"]
    nlb = cfg["io_size"] // bs
    first, units = cfg["first_unit"], cfg["units"]
    rand = cfg["pattern"].startswith("rand")
    mix = cfg["read_pct"]
    verify = cfg["verify"]
    busy = cfg["busy_poll"]
    per_command = cfg.get("submission", "per-command") == "per-command"
    rng = random.Random(cfg["seed"])
    bufs = [memoryview(bytearray(cfg["io_size"])) for _ in range(qd)]
    wdata = memoryview(bytes([0xA5]) * cfg["io_size"])
    lat: list[int] = []
    lat_append = lat.append
    errors = 0
    err_names: Counter[str] = Counter()
    miscompares = 0
    first_bad: list[dict[str, Any]] = []
    gens = [0] * units if verify else []  # last generation submitted per unit
    acked = [0] * units if verify else []  # last generation acknowledged per unit
    # unit -> (acknowledged gen, gen in flight) of a write lost with its connection
    uncertain: dict[int, tuple[int, int]] = {}
    busy_units: set[int] = set()
    seq = [0]
    stop = [False]
    up = [True]  # False while the queue is lost: completions park their slot
    parked: list[int] = []
    counts = [0, 0, 0, 0]  # reads, writes, completed, sendmsg calls
    rc_stats = {"reconnects": 0, "unacked_writes": 0, "audited_units": 0, "audit_miscompares": 0}
    recoveries: list[dict[str, float]] = []
    perf_ns = time.perf_counter_ns
    rnd = rng.random  # int(rnd() * n): a fraction of randrange's cost per I/O

    def pick() -> int:
        if rand:
            u = int(rnd() * units)
            if verify:
                while u in busy_units:
                    u = int(rnd() * units)
        else:
            u = seq[0]
            seq[0] = (u + 1) % units
            if verify:
                while u in busy_units:
                    u = seq[0]
                    seq[0] = (u + 1) % units
        return u

    def queue_io(slot: int) -> None:
        if not up[0]:
            parked.append(slot)
            return
        u = pick()
        lba = (first + u) * nlb
        if verify:
            busy_units.add(u)
            gens[u] += 1
            data = memoryview(_pattern(lba, gens[u], nlb, bs))
            q.write(nsid, lba, nlb, data, on_write, (slot, u, data))
            counts[1] += 1
            return
        if mix >= 100 or (mix > 0 and rnd() * 100 < mix):
            q.read(nsid, lba, nlb, bufs[slot], on_done, slot)
            counts[0] += 1
        else:
            q.write(nsid, lba, nlb, wdata, on_done, slot)
            counts[1] += 1

    def on_done(r: Any, status: int, _res: int) -> None:
        nonlocal errors
        if not up[0]:  # lost with the connection: submitted again after the reconnect
            parked.append(r.ctx)
            return
        lat_append(perf_ns() - r.t0)
        counts[2] += 1
        if status:
            errors += 1
            err_names[status_str(status)] += 1
        if not stop[0]:
            submit(r.ctx)

    def on_write(r: Any, status: int, _res: int) -> None:
        nonlocal errors
        slot, u, data = r.ctx
        if not up[0]:
            # not acknowledged: the unit holds the old or the new data, checked
            # (and then freed) by the audit after the reconnect
            uncertain[u] = (acked[u], gens[u])
            rc_stats["unacked_writes"] += 1
            parked.append(slot)
            return
        lat_append(perf_ns() - r.t0)
        counts[2] += 1
        if status:
            errors += 1
            err_names[status_str(status)] += 1
            busy_units.discard(u)
            if not stop[0]:
                submit(slot)
            return
        acked[u] = gens[u]
        lba = (first + u) * nlb
        q.read(nsid, lba, nlb, bufs[slot], on_verify, (slot, u, data))
        counts[0] += 1

    def on_verify(r: Any, status: int, _res: int) -> None:
        nonlocal errors, miscompares
        slot, u, data = r.ctx
        busy_units.discard(u)
        if not up[0]:  # the write was acknowledged: the audit reads it back
            parked.append(slot)
            return
        lat_append(perf_ns() - r.t0)
        counts[2] += 1
        if status:
            errors += 1
            err_names[status_str(status)] += 1
        elif bufs[slot] != data:
            miscompares += 1
            if len(first_bad) < 10:
                off = _first_diff(bufs[slot], data)
                lba = (first + u) * nlb
                first_bad.append(
                    {"lba": lba + off // bs, "byte_offset": lba * bs + off, "expected_gen": gens[u]}
                )
        if not stop[0]:
            submit(slot)

    def audit(aq: Any) -> None:
        """Read back every unit whose last write was acknowledged (it must
        hold exactly that generation) and every unit with a write lost in
        flight (each block the old or the new generation)."""
        todo = [u for u in range(units) if acked[u] or u in uncertain]
        for i in range(0, len(todo), qd):
            batch = todo[i : i + qd]

            def checked(r: Any, status: int, _res: int) -> None:
                nonlocal miscompares, errors
                j, u = r.ctx
                lba = (first + u) * nlb
                if status:
                    errors += 1
                    err_names[status_str(status)] += 1
                    return
                old, new = uncertain.pop(u, (acked[u], acked[u]))
                bad, all_gen = _blocks_match(bufs[j], lba, nlb, bs, (new, old))
                rc_stats["audited_units"] += 1
                if bad >= 0:
                    miscompares += 1
                    rc_stats["audit_miscompares"] += 1
                    if len(first_bad) < 10:
                        first_bad.append(
                            {
                                "lba": lba + bad,
                                "byte_offset": (lba + bad) * bs,
                                "expected_gen": new,
                                "after_reconnect": True,
                            }
                        )
                    acked[u] = 0  # reported once; unknown until written again
                else:
                    # a block mix of both generations is legal for a lost write
                    acked[u] = all_gen
                busy_units.discard(u)

            for j, u in enumerate(batch):
                aq.q.read(nsid, (first + u) * nlb, nlb, bufs[j], checked, (j, u))
            aq.wait_all(30.0)

    def recover(why: str) -> None:
        """The queue was lost: fail what was in flight, reconnect, audit."""
        nonlocal sock, q, bq
        t_lost, wall_lost = perf_ns(), time.time()
        up[0] = False
        with contextlib.suppress(OSError):
            sock.close()
        q.abort_all(ST_HOST_PATH_ERROR)  # every callback parks its slot
        rc_stats["reconnects"] += 1
        while True:
            nq = _reconnect(cfg, shared, why)
            try:
                # the first completed I/O on the new connection: one block read
                probe = memoryview(bytearray(bs))
                nq.execute(
                    lambda cb, nq=nq, probe=probe: nq.q.read(nsid, first * nlb, 1, probe, cb),
                    "probe read",
                )
                t_io = perf_ns()
                if verify:
                    audit(nq)
                break
            except (OSError, TransportError, TimeoutError) as e:
                why = f"{type(e).__name__}: {e}"
                nq.close()
        recoveries.append(
            {
                "lost_at": wall_lost,
                "io_at": wall_lost + (t_io - t_lost) / 1e9,
                "ms": (t_io - t_lost) / 1e6,
            }
        )
        nq.sock.setblocking(False)
        bq, sock, q = nq, nq.sock, nq.q
        up[0] = True
        again, parked[:] = list(parked), []
        if not stop[0]:
            for slot in again:
                submit(slot)

    pending: list[Any] = []  # what a short sendmsg left, sent before anything new

    def send_now() -> None:
        """Send what is queued (the left-over of a short send first)."""
        nonlocal pending
        bufs_out = pending + q.take_tx() if pending else q.take_tx()
        while bufs_out:
            batch = bufs_out if len(bufs_out) <= IOV_MAX_SEND else bufs_out[:IOV_MAX_SEND]
            try:
                n = sock.sendmsg(batch)
            except BlockingIOError:
                break
            counts[3] += 1
            if batch is bufs_out and n == sum(map(len, batch)):
                bufs_out = []  # the usual case: all of it went out
                break
            bufs_out = advance(bufs_out, n)
        pending = bufs_out

    def send_each(slot: int) -> None:
        # as the Linux and SPDK hosts do: the command PDU goes out as it is
        # queued, one send each (not gathered over the completions of a recv)
        queue_io(slot)
        if q.tx:
            try:
                send_now()
            except OSError:
                pass  # the recv of the main loop sees the lost connection

    # per-command submission is a TCP notion (one send per command PDU); over
    # RDMA every command is its own SEND work request anyway, posted by pump()
    submit = send_each if per_command and not rdma else queue_io

    t_start = time.perf_counter()
    rus0 = os.times()
    end_ns = perf_ns() + int(cfg["time"] * 1e9)
    for slot in range(qd):
        submit(slot)
    last_prog = perf_ns()
    idle_since = 0
    fd = sock.fileno()
    while True:
        try:
            if rdma:
                if bq.pump():
                    idle_since = 0
                else:
                    bq.check_stall(RDMA_STALL_S)
                    if not busy:
                        now = perf_ns()
                        if not idle_since:
                            idle_since = now
                        elif now - idle_since > SPIN_NS:
                            bq.conn.wait(0.01)
            else:
                if pending or q.tx:
                    send_now()
                try:
                    buf = q.recv_buffer()
                    n = sock.recv_into(buf)
                    del buf
                    if n == 0:
                        raise ConnectionError("connection closed by the target")
                    q.received(n)
                    idle_since = 0
                except BlockingIOError:
                    del buf
                    if not busy:
                        now = perf_ns()
                        if not idle_since:
                            idle_since = now
                        elif now - idle_since > SPIN_NS:
                            select.select([fd], [fd] if pending else [], [], 0.01)
        except (OSError, TransportError) as e:
            if not reconnect:
                raise
            pending = []
            if stop[0] and not verify:
                break  # the run is over: what was in flight is not counted
            recover(f"{type(e).__name__}: {e}")
            fd = sock.fileno()
            idle_since = 0
        now = perf_ns()
        if now - last_prog > 100_000_000:
            last_prog = now
            progress.value = counts[2]
            if now >= end_ns:
                stop[0] = True
        if stop[0] and q.outstanding == 0 and not pending:
            break
    if reconnect and verify and rc_stats["reconnects"]:
        # the last word on every acknowledged write: read all of them back
        try:
            audit(bq)
        except (OSError, TransportError, TimeoutError) as e:
            recover(f"{type(e).__name__}: {e}")  # reconnects and audits again
    elapsed = time.perf_counter() - t_start
    rus1 = os.times()
    cpu = (rus1.user - rus0.user) + (rus1.system - rus0.system)
    progress.value = counts[2]
    sock.close()
    lat.sort()
    return {
        "worker": cfg["index"],
        "core": cfg.get("core"),
        "qid": cfg["qid"],
        "pid": os.getpid(),
        "ios": counts[2],
        "reads": counts[0],
        "writes": counts[1],
        "sends": counts[3],
        "submission": "per-command" if per_command else "batch",
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "errors": errors,
        "error_names": dict(err_names),
        "miscompares": miscompares,
        "first_miscompares": first_bad,
        **rc_stats,
        "recoveries": recoveries,
        "lat": _lat_summary(lat),
        "hist": dict(Counter(x >> 10 for x in lat)),
    }


def _pct(sorted_ns: list[int], p: float) -> float:
    if not sorted_ns:
        return 0.0
    i = min(len(sorted_ns) - 1, int(len(sorted_ns) * p))
    return sorted_ns[i] / 1000


def _lat_summary(sorted_ns: list[int]) -> dict[str, float]:
    if not sorted_ns:
        return {
            "avg_us": 0.0,
            "p50_us": 0.0,
            "p99_us": 0.0,
            "p999_us": 0.0,
            "max_us": 0.0,
            "min_us": 0.0,
        }
    return {
        "avg_us": sum(sorted_ns) / len(sorted_ns) / 1000,
        "min_us": sorted_ns[0] / 1000,
        "p50_us": _pct(sorted_ns, 0.5),
        "p99_us": _pct(sorted_ns, 0.99),
        "p999_us": _pct(sorted_ns, 0.999),
        "max_us": sorted_ns[-1] / 1000,
    }


def _hist_summary(
    hist: Counter[int], maxes: list[float], avg_num: float, n: int
) -> dict[str, float]:
    if not n:
        return _lat_summary([])
    keys = sorted(hist)
    out = {"avg_us": avg_num / n, "min_us": keys[0] * 1.024, "max_us": max(maxes)}
    for name, p in (("p50_us", 0.5), ("p99_us", 0.99), ("p999_us", 0.999)):
        want = n * p
        acc = 0
        for k in keys:
            acc += hist[k]
            if acc > want:
                out[name] = k * 1.024
                break
        else:
            out[name] = keys[-1] * 1.024
    return out


# ------------------------------------------------------------------ parent
class _CtrlKeeper:
    """The parent's admin queue across reconnects: notices a lost admin
    connection (EOF, failed keep-alive) or a worker's request for a new
    controller, connects a new one (every ``reconnect_delay`` s until
    ``ctrlr_loss_timeout`` s, -1 forever) and publishes its cntlid."""

    def __init__(
        self, make: Any, ctrl: Any, shared: Any, nworkers: int, loss: float, delay: float
    ) -> None:
        self.make = make
        self.ctrl = ctrl
        self.shared = shared
        self.nworkers = nworkers
        self.loss = loss
        self.delay = max(0.01, delay)
        self.resets = 0
        self.errors: list[str] = []
        self._next_peek = 0.0

    def _admin_lost(self) -> str:
        c = self.ctrl
        if c is None:
            return "no controller"
        if c.last_error:
            return c.last_error
        if c.admin is None:
            return "admin queue closed"
        peek = getattr(c.admin, "peek", None)
        if peek is not None:  # RDMA: no socket to peek at
            return str(peek())
        try:
            data = c.admin.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return ""
        except OSError as e:
            return f"admin connection error: {e}"
        return "" if data else "admin connection closed by the target"

    def poll(self) -> None:
        sh = self.shared
        if sh.dead.value:
            return
        why = ""
        if sh.reset.value == sh.gen.value + 1:
            why = "a worker's I/O queue Connect was refused"
        else:
            now = time.monotonic()
            if now >= self._next_peek:
                self._next_peek = now + 0.02
                why = self._admin_lost()
        if why:
            self.reset(why)

    def reset(self, why: str) -> None:
        from ..transports.nvmf_host.queue import NvmeStatusError, TransportError

        sh = self.shared
        old, self.ctrl = self.ctrl, None
        if old is not None:
            with contextlib.suppress(Exception):
                old.close(shutdown=False)
        deadline = None if self.loss < 0 else time.monotonic() + self.loss
        last = why
        while True:
            try:
                c = self.make()
                try:
                    n = self.nworkers
                    c.set_features(0x07, ((n - 1) << 16) | (n - 1))
                except BaseException:
                    c.close(shutdown=False)
                    raise
                break
            except (OSError, TransportError, NvmeStatusError, TimeoutError) as e:
                last = f"{type(e).__name__}: {e}"
            if deadline is not None and time.monotonic() > deadline:
                self.errors.append(f"controller lost ({why}), no reconnect: {last}")
                sh.dead.value = 1
                return
            time.sleep(self.delay)
        self.ctrl = c
        self.resets += 1
        sh.cntlid.value = c.cntlid
        sh.gen.value += 1


def run(a: argparse.Namespace) -> int:
    from ..transports.nvmf.auth_host import AuthFailed
    from ..transports.nvmf_host.controller import Controller
    from ..transports.nvmf_host.queue import NvmeStatusError, TransportError

    try:
        trid = parse_trid(a.transport)
    except TridError as e:
        print(f"perf: -r: {e}", file=sys.stderr)
        return 2
    pattern = a.io_pattern
    if pattern not in PATTERNS:
        print(f"perf: -w must be one of {', '.join(PATTERNS)}", file=sys.stderr)
        return 2
    if pattern in ("rw", "randrw"):
        if a.rwmixread is None:
            print("perf: -M (read percentage) is required with rw/randrw", file=sys.stderr)
            return 2
        read_pct = a.rwmixread
    else:
        read_pct = 100 if "read" in pattern else 0
    if not 0 <= read_pct <= 100:
        print("perf: -M must be 0..100", file=sys.stderr)
        return 2
    if a.io_depth < 1 or a.io_size < 512 or a.time <= 0:
        print("perf: -q >= 1, -o >= 512 and -t > 0 required", file=sys.stderr)
        return 2
    cores = parse_mask(a.core_mask) if a.core_mask else None
    nworkers = a.processes or (len(cores) if cores else 1)
    loss = float(a.ctrlr_loss_timeout_sec)
    if loss < 0 and loss != -1:
        print(
            "perf: --ctrlr-loss-timeout-sec must be -1 (forever), 0 (off) or > 0", file=sys.stderr
        )
        return 2
    delay = float(a.reconnect_delay_sec)
    if trid["trtype"] == "RDMA" and (a.hdgst or a.ddgst):
        print("perf: --hdgst/--ddgst are NVMe/TCP digests: not with trtype RDMA", file=sys.stderr)
        return 2
    if loss and trid["trtype"] == "FC":
        print(
            "perf: --ctrlr-loss-timeout-sec is not supported over FC (a new controller "
            "is a new association its workers would have to learn)",
            file=sys.stderr,
        )
        return 2
    if loss and delay <= 0:
        print(
            "perf: --reconnect-delay-sec must be > 0 with --ctrlr-loss-timeout-sec", file=sys.stderr
        )
        return 2
    psk = None
    if a.psk_path:
        from ..control.keyring import KeyFormatError, TlsPsk, read_key_file

        try:
            material = read_key_file(os.path.abspath(a.psk_path))
        except (OSError, KeyFormatError) as e:
            print(f"perf: --psk-path: {e}", file=sys.stderr)
            return 2
        if isinstance(material, TlsPsk):
            psk = material
        else:
            print("perf: --psk-path: not a TLS PSK (NVMeTLSkey-1:HH:...:)", file=sys.stderr)
            return 2
        if trid["trtype"] != "TCP":
            print("perf: --psk-path: TLS is for the TCP transport only", file=sys.stderr)
            return 2
    try:
        dhchap = _dhchap_from_args(a)
    except (OSError, ValueError) as e:
        print(f"perf: {e}", file=sys.stderr)
        return 2
    ident: dict[str, Any] = {"hostnqn": trid.get("hostnqn"), "hostid": None}

    def make() -> Any:
        return Controller(
            trid["traddr"],
            trid["trsvcid"],
            trid["subnqn"],
            hostnqn=ident["hostnqn"],
            hostid=ident["hostid"],
            kato_ms=10000,
            hdgst=a.hdgst,
            ddgst=a.ddgst,
            nr_io_queues=0,
            trtype=trid["trtype"],
            host_traddr=trid.get("hostaddr"),
            psk=psk,
            dhchap=dhchap,
        ).connect()

    try:
        ctrl = make()
        ident["hostnqn"], ident["hostid"] = ctrl.hostnqn, ctrl.hostid
    except (OSError, TransportError, NvmeStatusError, TimeoutError, AuthFailed) as e:
        print(
            f"perf: cannot connect to {trid['traddr']}:{trid['trsvcid']} {trid['subnqn']}: {e}",
            file=sys.stderr,
        )
        return 1
    keeper: _CtrlKeeper | None = None
    try:
        nsid = int(trid.get("ns", "1"))
        ns = ctrl.identify_namespace(nsid)
        bs = ns.block_size
        if not bs or ns.nsze == 0:
            print(f"perf: namespace {nsid} is not active", file=sys.stderr)
            return 1
        if a.io_size % bs:
            print(f"perf: -o {a.io_size} is not a multiple of the block size {bs}", file=sys.stderr)
            return 2
        # ask for enough I/O queues for every worker
        got = ctrl.set_features(0x07, ((nworkers - 1) << 16) | (nworkers - 1))
        maxq = min((got & 0xFFFF) + 1, ((got >> 16) & 0xFFFF) + 1)
        if nworkers > maxq:
            print(
                f"perf: the controller grants {maxq} I/O queue(s), {nworkers} workers asked",
                file=sys.stderr,
            )
            return 1
        qd = min(a.io_depth, ctrl.mqes - 1)
        total_units = ns.nsze // (a.io_size // bs)
        per = total_units // nworkers
        if per < (2 * qd if a.verify else 1):
            print(
                "perf: namespace too small for this I/O size, depth and worker count",
                file=sys.stderr,
            )
            return 2
        ctx = mp.get_context("spawn")
        shared = _Shared(ctx, ctrl.cntlid) if loss else None
        keeper = _CtrlKeeper(make, ctrl, shared, nworkers, loss, delay) if shared else None
        procs = []
        prog = []
        for i in range(nworkers):
            cfg = {
                "index": i,
                "qid": i + 1,
                "core": cores[i % len(cores)] if cores else None,
                "trtype": trid["trtype"],
                "traddr": trid["traddr"],
                "trsvcid": trid["trsvcid"],
                "host_traddr": ctrl.host_traddr,
                "assoc_id": ctrl.assoc_id,
                "subnqn": trid["subnqn"],
                "hostnqn": ctrl.hostnqn,
                "hostid": ctrl.hostid.hex(),
                "cntlid": ctrl.cntlid,
                "hdgst": a.hdgst,
                "ddgst": a.ddgst,
                "icd_max": ctrl.icd_max,
                "mqes": ctrl.mqes,
                "qd": qd,
                "bs": bs,
                "nsid": nsid,
                "io_size": a.io_size,
                "pattern": pattern,
                "read_pct": read_pct,
                "time": a.time,
                "verify": a.verify,
                "first_unit": i * per if a.verify else 0,
                "units": per if a.verify else total_units,
                "seed": a.seed + i,
                "busy_poll": a.busy_poll,
                "submission": a.submission,
                "ctrlr_loss_timeout": loss,
                "reconnect_delay": delay,
                # TLS: the PSK derived for (host, subsystem); workers never see the key file
                "tls": [ctrl.tls.identity, ctrl.tls.suite, ctrl.tls.key.hex()]
                if ctrl.tls
                else None,
                "dhchap": (
                    [
                        dhchap.key.interchange(),
                        dhchap.ctrl_key.interchange() if dhchap.ctrl_key else None,
                    ]
                    if dhchap is not None
                    else None
                ),
            }
            r, w = ctx.Pipe(duplex=False)
            v = ctx.RawValue("q", 0)
            p = ctx.Process(target=worker_main, args=(w, cfg, v, shared), name=f"perf-worker-{i}")
            p.start()
            w.close()
            procs.append((p, r))
            prog.append(v)
        results = _monitor(procs, prog, a, a.io_size, [int(x) for x in a.target_pid or []], keeper)
        if keeper is not None:
            results["ctrlr_resets"] = keeper.resets
            results["ctrlr_errors"] = keeper.errors
    finally:
        if keeper is not None:
            ctrl = keeper.ctrl
        if ctrl is not None:
            if ctrl.last_error and not (keeper and keeper.resets):
                print(f"perf: {ctrl.last_error}", file=sys.stderr)
            ctrl.close()
    return _report(results, a, trid, pattern, read_pct)


def _monitor(
    procs: list[Any],
    prog: list[Any],
    a: argparse.Namespace,
    io_size: int,
    target_pids: list[int],
    keeper: _CtrlKeeper | None = None,
) -> dict[str, Any]:
    import psutil

    tprocs = []
    for pid in target_pids:
        try:
            tp = psutil.Process(pid)
            tp.cpu_percent(None)
            tprocs.append(tp)
        except psutil.Error:
            print(f"perf: --target-pid {pid}: no such process", file=sys.stderr)
    t0 = time.monotonic()
    last = 0
    last_t = t0
    workers: list[dict[str, Any] | None] = [None] * len(procs)
    target_cpu: dict[int, float] = {}
    waiting = set(range(len(procs)))
    tick = t0 + 1.0
    while waiting:
        if keeper is not None:
            keeper.poll()
        for i in list(waiting):
            p, r = procs[i]
            if r.poll(0.02):
                try:
                    workers[i] = r.recv()
                except EOFError:
                    workers[i] = {"error": f"worker {i} died (exit code {p.exitcode})"}
                waiting.discard(i)
            elif not p.is_alive() and not r.poll(0):
                workers[i] = {"error": f"worker {i} died (exit code {p.exitcode})"}
                waiting.discard(i)
        now = time.monotonic()
        if now >= tick:
            tick += 1.0
            done = sum(v.value for v in prog)
            iops = (done - last) / (now - last_t)
            last, last_t = done, now
            if tprocs and now - t0 <= a.time:
                for tp in tprocs:
                    try:
                        target_cpu[tp.pid] = tp.cpu_percent(None)
                    except psutil.Error:
                        pass
            if not a.quiet:
                print(
                    f"[{now - t0:5.1f} s] {iops:10.0f} IOPS {iops * io_size / 1048576:9.2f} MiB/s",
                    file=sys.stderr,
                    flush=True,
                )
    for p, _r in procs:
        p.join(5)
    return {"workers": workers, "target_cpu": target_cpu}


def _report(
    res: dict[str, Any], a: argparse.Namespace, trid: dict[str, str], pattern: str, read_pct: int
) -> int:
    workers = res["workers"]
    rc = 0
    rows = []
    hist: Counter[int] = Counter()
    tot_ios = tot_err = tot_mis = 0
    lat_sum = 0.0
    maxes = []
    elapsed = 0.0
    print(
        f"{'Worker':<12}{'IOPS':>12}{'MiB/s':>10}{'avg us':>10}{'p50':>9}{'p99':>9}{'p99.9':>9}{'max':>10}"
        f"{'CPU %':>8}"
    )
    for w in workers:
        if w is None or "error" in w:
            print(f"perf: {w and w['error']}", file=sys.stderr)
            rc = 1
            continue
        el = w["elapsed_s"] or 1e-9
        iops = w["ios"] / el
        mibs = iops * a.io_size / 1048576
        lat = w["lat"]
        cpu = 100 * w["cpu_s"] / el
        name = f"w{w['worker']}" + (f"/core{w['core']}" if w["core"] is not None else "")
        print(
            f"{name:<12}{iops:12.0f}{mibs:10.2f}{lat['avg_us']:10.1f}{lat['p50_us']:9.1f}{lat['p99_us']:9.1f}"
            f"{lat['p999_us']:9.1f}{lat['max_us']:10.1f}{cpu:8.1f}"
        )
        rows.append(
            {
                **{k: v for k, v in w.items() if k != "hist"},
                "iops": iops,
                "mib_s": mibs,
                "cpu_pct": cpu,
            }
        )
        hist.update({int(k): v for k, v in w["hist"].items()})
        tot_ios += w["ios"]
        tot_err += w["errors"]
        tot_mis += w["miscompares"]
        lat_sum += lat["avg_us"] * w["ios"]
        maxes.append(lat["max_us"])
        elapsed = max(elapsed, el)
    tl = _hist_summary(hist, maxes or [0.0], lat_sum, tot_ios)
    tiops = sum(r["iops"] for r in rows)
    tmib = tiops * a.io_size / 1048576
    print(
        f"{'Total':<12}{tiops:12.0f}{tmib:10.2f}{tl['avg_us']:10.1f}{tl['p50_us']:9.1f}{tl['p99_us']:9.1f}"
        f"{tl['p999_us']:9.1f}{tl['max_us']:10.1f}"
    )
    for pid, c in sorted(res["target_cpu"].items()):
        print(f"target pid {pid}: CPU {c:.1f} %")
    for r in rows:
        for name, n in r["error_names"].items():
            print(f"worker {r['worker']}: {n} I/O error(s): {name}", file=sys.stderr)
    if tot_err:
        rc = 1
    tot_rc = {
        k: sum(int(r.get(k, 0)) for r in rows)
        for k in ("reconnects", "unacked_writes", "audited_units", "audit_miscompares")
    }
    if a.ctrlr_loss_timeout_sec:
        rec = sorted(x["ms"] for r in rows for x in r.get("recoveries", []))
        med = rec[len(rec) // 2] if rec else 0.0
        print(
            f"reconnect: {tot_rc['reconnects']} I/O queue reconnect(s), "
            f"{res.get('ctrlr_resets', 0)} controller reset(s), "
            f"{tot_rc['unacked_writes']} write(s) lost in flight (not acknowledged), "
            f"{tot_rc['audited_units']} unit(s) read back after reconnects "
            f"({tot_rc['audit_miscompares']} wrong), recovery median {med:.1f} ms"
        )
        for e in res.get("ctrlr_errors", []):
            print(f"perf: {e}", file=sys.stderr)
            rc = 1
    if a.verify:
        print(f"verify: {tot_mis} miscompare(s) in {tot_ios} I/Os")
        for r in rows:
            for m in r["first_miscompares"]:
                print(
                    f"  worker {r['worker']}: miscompare at LBA {m['lba']} (byte offset {m['byte_offset']}), "
                    f"expected generation {m['expected_gen']}"
                )
        if tot_mis:
            rc = 1
    if a.json:
        doc = {
            "transport": trid,
            "pattern": pattern,
            "read_pct": read_pct,
            "io_size": a.io_size,
            "queue_depth": a.io_depth,
            "time_s": a.time,
            "hdgst": a.hdgst,
            "ddgst": a.ddgst,
            "tls": bool(a.psk_path),
            "verify": a.verify,
            "submission": a.submission,
            "ctrlr_loss_timeout_sec": a.ctrlr_loss_timeout_sec,
            "reconnect_delay_sec": a.reconnect_delay_sec,
            "ctrlr_resets": res.get("ctrlr_resets", 0),
            "workers": rows,
            "total": {
                "iops": tiops,
                "mib_s": tmib,
                "ios": tot_ios,
                "errors": tot_err,
                "miscompares": tot_mis,
                **tot_rc,
                "lat": tl,
            },
            "target_cpu_pct": {str(k): v for k, v in res["target_cpu"].items()},
        }
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=2)
    return rc


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-r",
        "--transport",
        required=True,
        help="'trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:NQN [hostnqn:NQN] [ns:N]'",
    )
    p.add_argument("-q", "--io-depth", type=int, default=32, help="queue depth per worker")
    p.add_argument("-o", "--io-size", type=int, default=4096, help="I/O size in bytes")
    p.add_argument("-w", "--io-pattern", default="randread", help="|".join(PATTERNS))
    p.add_argument(
        "-M", "--rwmixread", type=int, default=None, help="read percentage for rw/randrw"
    )
    p.add_argument("-t", "--time", type=float, default=10.0, help="seconds")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-c", "--core-mask", default=None, help="hex mask: one pinned worker per core")
    g.add_argument("-P", "--processes", type=int, default=None, help="number of worker processes")
    p.add_argument(
        "-H",
        "--hdgst",
        "--enable-tcp-hdgst",
        dest="hdgst",
        action="store_true",
        help="NVMe/TCP header digest",
    )
    p.add_argument(
        "-I",
        "--ddgst",
        "--enable-tcp-ddgst",
        dest="ddgst",
        action="store_true",
        help="NVMe/TCP data digest",
    )
    p.add_argument(
        "--psk-path",
        default=None,
        metavar="FILE",
        help="NVMe/TCP over TLS 1.3 with the PSK in FILE (NVMeTLSkey-1 interchange format, "
        "mode 0600); spdk_nvme_perf's option",
    )
    p.add_argument(
        "--verify", action="store_true", help="data integrity mode (write, read back, compare)"
    )
    p.add_argument(
        "--ctrlr-loss-timeout-sec",
        "--ctrl-loss-tmo",
        dest="ctrlr_loss_timeout_sec",
        type=float,
        default=0,
        metavar="SEC",
        help="reconnect after a lost connection for up to SEC seconds (-1: forever; "
        "0: off, a lost connection ends the run); bdev_nvme's option",
    )
    p.add_argument(
        "--reconnect-delay-sec",
        "--reconnect-delay",
        dest="reconnect_delay_sec",
        type=float,
        default=1.0,
        metavar="SEC",
        help="seconds between reconnect attempts (default 1)",
    )
    p.add_argument(
        "--dhchap-key",
        default=None,
        metavar="FILE",
        help="DH-HMAC-CHAP: authenticate every queue with the DHHC-1 secret in FILE (mode 0600)",
    )
    p.add_argument(
        "--dhchap-ctrlr-key",
        default=None,
        metavar="FILE",
        help="DH-HMAC-CHAP controller secret: the controller is authenticated too (bidirectional)",
    )
    p.add_argument(
        "--dhchap-digests", default=None, help="digests offered (default sha256,sha384,sha512)"
    )
    p.add_argument(
        "--dhchap-dhgroups", default=None, help="DH groups offered (default null,ffdhe2048,...)"
    )
    p.add_argument("--json", default=None, metavar="FILE", help="write results as JSON")
    p.add_argument(
        "--busy-poll", action="store_true", help="never block: spin while I/O is outstanding"
    )
    p.add_argument(
        "--submission",
        choices=SUBMISSION_MODES,
        default="per-command",
        help="per-command (default): every command PDU is sent on its own as it is queued, "
        "one send per command, as the Linux and SPDK hosts do; batch: the commands queued "
        "while handling one recv go out in one sendmsg (fewer, larger segments: the target "
        "sees fewer wakes than a real host would cause)",
    )
    p.add_argument(
        "--target-pid", action="append", default=None, help="report this process's CPU use"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress line")


def register(sub: Any) -> None:
    p = sub.add_parser("perf", help="NVMe/TCP load generator (like spdk_nvme_perf)")
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="blockfabric perf")
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
