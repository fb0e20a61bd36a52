"""Prometheus text exposition of a target snapshot (`blockfabric start
--metrics ADDR`, issue 13).

Built with prometheus_client's metric families from one
``control.observe.collect`` snapshot per scrape: nothing is kept between
scrapes, the counters are the reactors' own (bdev IoStats, the NVMe-oF poll
group and iSCSI counters, the buffer pool's). Names follow the Prometheus
conventions: ``blockfabric_`` prefix, base units (seconds, bytes), ``_total``
for counters.

Per NVMe-oF namespace and per iSCSI LUN the I/O counters are those of the
bdev behind it (labelled with both): a bdev's channel counts every I/O,
whichever protocol submitted it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from . import observe
from .observe import LATENCY_BOUNDS_NS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NS = 1e-9


def _buckets(hist: list[int], sum_ns: int) -> tuple[list[tuple[str, float]], float]:
    """Non-cumulative bucket counts -> prometheus_client's cumulative
    (le, count) pairs and the sum in seconds."""
    out: list[tuple[str, float]] = []
    acc = 0
    bounds = [floatToGoString(b * NS) for b in LATENCY_BOUNDS_NS] + ["+Inf"]
    for le, n in zip(bounds, hist, strict=False):
        acc += n
        out.append((le, float(acc)))
    if len(out) < len(bounds):  # a daemon without histograms: only +Inf is known
        out = [("+Inf", float(acc))]
    return out, sum_ns * NS


class _IoFamilies:
    """The I/O metric families of one object kind (bdev, namespace, LUN)."""

    def __init__(self, prefix: str, what: str, labels: list[str]) -> None:
        p = f"blockfabric_{prefix}"
        self.fams: list[Metric] = []

        def counter(name: str, doc: str) -> CounterMetricFamily:
            f = CounterMetricFamily(f"{p}_{name}", f"{doc} ({what})", labels=labels)
            self.fams.append(f)
            return f

        self.read_ops = counter("read_ops", "read commands submitted")
        self.write_ops = counter("write_ops", "write commands submitted")
        self.read_bytes = counter("read_bytes", "bytes read")
        self.write_bytes = counter("write_bytes", "bytes written")
        self.unmap_ops = counter("unmap_ops", "unmap commands")
        self.flush_ops = counter("flush_ops", "flush commands")
        self.errors = counter("io_errors", "commands failed before submission")
        self.read_lat = HistogramMetricFamily(
            f"{p}_read_latency_seconds", f"read latency, submission to completion ({what})",
            labels=labels,
        )  # fmt: skip
        self.write_lat = HistogramMetricFamily(
            f"{p}_write_latency_seconds", f"write latency, submission to completion ({what})",
            labels=labels,
        )  # fmt: skip
        self.fams += [self.read_lat, self.write_lat]

    def add(self, values: list[str], b: dict[str, Any]) -> None:
        self.read_ops.add_metric(values, b["num_read_ops"])
        self.write_ops.add_metric(values, b["num_write_ops"])
        self.read_bytes.add_metric(values, b["bytes_read"])
        self.write_bytes.add_metric(values, b["bytes_written"])
        self.unmap_ops.add_metric(values, b.get("num_unmap_ops", 0))
        self.flush_ops.add_metric(values, b.get("num_flush_ops", 0))
        self.errors.add_metric(values, b.get("io_errors", 0))
        rb, rs = _buckets(b.get("read_latency_hist") or [], b.get("read_latency_ticks", 0))
        self.read_lat.add_metric(values, rb, rs)
        wb, ws = _buckets(b.get("write_latency_hist") or [], b.get("write_latency_ticks", 0))
        self.write_lat.add_metric(values, wb, ws)


def families(snap: dict[str, Any]) -> Iterator[Metric]:
    """Every metric family of one snapshot."""
    up = GaugeMetricFamily("blockfabric_up", "1: the snapshot was taken")
    up.add_metric([], 1)
    yield up
    errs = GaugeMetricFamily(
        "blockfabric_scrape_errors", "parts of the snapshot whose RPC failed", labels=["part"]
    )
    for part in snap.get("errors") or {}:
        errs.add_metric([part], 1)
    yield errs

    stats = observe.bdev_stats(snap)
    bd = _IoFamilies("bdev", "per bdev", ["bdev"])
    for name, b in stats.items():
        bd.add([name], b)
    yield from bd.fams
    nsf = _IoFamilies(
        "nvmf_namespace", "per NVMe-oF namespace: its bdev's", ["subsystem", "nsid", "bdev"]
    )
    for nqn, nsid, bdev in observe.namespaces(snap):
        if bdev in stats:
            nsf.add([nqn, str(nsid), bdev], stats[bdev])
    yield from nsf.fams
    lf = _IoFamilies(
        "iscsi_lun", "per iSCSI target node LUN: its bdev's", ["target", "lun", "bdev"]
    )
    for tgt, lun, bdev in observe.luns(snap):
        if bdev in stats:
            lf.add([tgt, str(lun), bdev], stats[bdev])
    yield from lf.fams

    yield from _reactor_families(snap)
    yield from _nvmf_families(snap)
    yield from _iscsi_families(snap)
    yield from _pool_families(snap)


def _reactor_families(snap: dict[str, Any]) -> Iterable[Metric]:
    rinfo = snap.get("reactors") or {}
    cpu = CounterMetricFamily(
        "blockfabric_reactor_cpu_seconds",
        "CPU time of the reactor process (its busy time: an idle reactor blocks in epoll)",
        labels=["reactor", "mode"],
    )
    polls = CounterMetricFamily(
        "blockfabric_reactor_polls", "event loop polls that found work (busy) or none (idle)",
        labels=["reactor", "kind"],
    )  # fmt: skip
    restarts = CounterMetricFamily(
        "blockfabric_reactor_restarts", "restarts of the reactor by the supervisor",
        labels=["reactor"],
    )  # fmt: skip
    cberr = CounterMetricFamily(
        "blockfabric_reactor_callback_errors", "callbacks that raised (contained)",
        labels=["reactor"],
    )  # fmt: skip
    conns = GaugeMetricFamily(
        "blockfabric_reactor_connections",
        "NVMe-oF qpairs and iSCSI connections the reactor serves",
        labels=["reactor"],
    )
    per = observe.reactor_connections(snap)
    for i, r in enumerate(rinfo.get("reactors", [])):
        lab = [str(r.get("lcore", i))]
        cpu.add_metric([*lab, "user"], float(r.get("cpu_user_s", 0.0)))
        cpu.add_metric([*lab, "system"], float(r.get("cpu_sys_s", 0.0)))
        polls.add_metric([*lab, "busy"], r.get("busy", 0))
        polls.add_metric([*lab, "idle"], r.get("idle", 0))
        restarts.add_metric(lab, r.get("restarts") or 0)
        cberr.add_metric(lab, r.get("callback_errors", 0))
        conns.add_metric(lab, per.get(i, 0))
    return [cpu, polls, restarts, cberr, conns]


_NVMF_COUNTERS = {
    # poll group field -> (metric name, help)
    "completed_nvme_io": ("nvmf_completed_io", "NVMe I/O commands completed"),
    "admin_qpairs": ("nvmf_admin_qpairs_created", "admin queue pairs created"),
    "io_qpairs": ("nvmf_io_qpairs_created", "I/O queue pairs created"),
    "c2h_term_reqs": ("nvmf_tcp_c2h_term_reqs", "C2HTermReq sent (fatal errors)"),
    "h2c_term_reqs": ("nvmf_tcp_h2c_term_reqs", "H2CTermReq received from hosts"),
    "hdgst_errors": ("nvmf_tcp_header_digest_errors", "header digest mismatches"),
    "ddgst_errors": ("nvmf_tcp_data_digest_errors", "data digest mismatches"),
    "keep_alive_expiries": ("nvmf_keep_alive_expiries", "controllers lost to keep-alive timeout"),
    "qpair_exceptions": ("nvmf_qpair_exceptions", "handler exceptions contained"),
    "connect_timeouts": ("nvmf_connect_timeouts", "connections without ICReq/Connect in time"),
    "h2c_timeouts": ("nvmf_h2c_timeouts", "R2T transfers whose data never came"),
    "refused_connections": ("nvmf_refused_connections", "connections refused (limits)"),
    "iobuf_waits": ("nvmf_iobuf_waits", "transfers that waited for pool buffers"),
}


def _nvmf_families(snap: dict[str, Any]) -> Iterable[Metric]:
    groups = (snap.get("nvmf_stats") or {}).get("poll_groups", [])
    fams = {
        k: CounterMetricFamily(f"blockfabric_{n}", h, labels=["reactor"])
        for k, (n, h) in _NVMF_COUNTERS.items()
    }
    qp = GaugeMetricFamily(
        "blockfabric_nvmf_qpairs", "NVMe-oF queue pairs now", labels=["reactor", "kind"]
    )
    for i, g in enumerate(groups):
        lab = [str(g.get("name", str(i))).rsplit("_", 1)[-1]]
        for k, f in fams.items():
            if k in g:
                f.add_metric(lab, g[k])
        qp.add_metric([*lab, "admin"], g.get("current_admin_qpairs", 0))
        qp.add_metric([*lab, "io"], g.get("current_io_qpairs", 0))
    hostq = GaugeMetricFamily(
        "blockfabric_nvmf_host_qpairs",
        "NVMe-oF queue pairs per subsystem and host",
        labels=["subsystem", "hostnqn"],
    )
    for r in observe.hosts(snap):
        if r["proto"] == "nvmf":
            hostq.add_metric([r["target"], r["host"]], r["connections"])
    return [*fams.values(), qp, hostq]


_ISCSI_COUNTERS = {
    "refused": ("iscsi_refused_connections", "connections refused (limits)"),
    "login_timeouts": ("iscsi_login_timeouts", "logins that did not finish in time"),
    "exceptions": ("iscsi_exceptions", "handler exceptions contained"),
    "cmdsn_dropped": ("iscsi_cmdsn_dropped", "commands outside the CmdSN window"),
    "immediate_refused": ("iscsi_immediate_refused", "immediate commands refused (TASK SET FULL)"),
    "rejects": ("iscsi_rejects", "Reject PDUs sent"),
    "digest_errors": ("iscsi_digest_errors", "header or data digest mismatches"),
    "r2t_timeouts": ("iscsi_r2t_timeouts", "R2T transfers whose Data-Out never came"),
}


def _iscsi_families(snap: dict[str, Any]) -> Iterable[Metric]:
    fams = {
        k: CounterMetricFamily(f"blockfabric_{n}", h, labels=["reactor"])
        for k, (n, h) in _ISCSI_COUNTERS.items()
    }
    conns = GaugeMetricFamily(
        "blockfabric_iscsi_connections", "iSCSI connections now", labels=["reactor"]
    )
    for s in snap.get("iscsi_stats") or []:
        lab = [str(s.get("reactor", 0))]
        for k, f in fams.items():
            if k in s:
                f.add_metric(lab, s[k])
        conns.add_metric(lab, s.get("connections", 0))
    sess = GaugeMetricFamily(
        "blockfabric_iscsi_target_connections",
        "iSCSI connections per target node and initiator",
        labels=["target", "initiator"],
    )
    for r in observe.hosts(snap):
        if r["proto"] == "iscsi":
            sess.add_metric([r["target"], r["host"]], r["connections"])
    return [*fams.values(), conns, sess]


def _pool_families(snap: dict[str, Any]) -> Iterable[Metric]:
    in_use = GaugeMetricFamily(
        "blockfabric_iobuf_in_use_bytes", "pool buffer bytes held", labels=["reactor"]
    )
    bufs = GaugeMetricFamily("blockfabric_iobuf_in_use", "pool buffers held", labels=["reactor"])
    waits = CounterMetricFamily(
        "blockfabric_iobuf_waits", "requests that waited for a pool buffer", labels=["reactor"]
    )
    nomem = CounterMetricFamily(
        "blockfabric_iobuf_nomem", "requests refused: no pool buffer", labels=["reactor"]
    )
    gets = CounterMetricFamily(
        "blockfabric_iobuf_gets", "pool buffers taken", labels=["reactor", "pool"]
    )
    for e in snap.get("iobuf") or []:
        lab = [str(e.get("reactor", e.get("module", "")))]
        in_use.add_metric(lab, e.get("in_use_bytes", 0))
        bufs.add_metric(lab, e.get("in_use", 0))
        waits.add_metric(lab, e.get("waits", 0))
        nomem.add_metric(lab, e.get("nomem", 0))
        for kind in ("small", "large"):
            gets.add_metric([*lab, kind], (e.get(f"{kind}_pool") or {}).get("gets", 0))
    out: list[Metric] = [in_use, bufs, waits, nomem, gets]
    pool = (snap.get("status") or {}).get("pool")
    if pool:
        cap = GaugeMetricFamily(
            "blockfabric_pool_buffers", "buffers in the shared pool", labels=["pool"]
        )
        used = GaugeMetricFamily(
            "blockfabric_pool_buffers_in_use", "buffers of the shared pool in use", labels=["pool"]
        )
        for kind in ("small", "large"):
            cap.add_metric([kind], pool[kind]["count"])
            used.add_metric([kind], pool[kind]["in_use"])
        out += [cap, used]
    return out


class SnapshotCollector(Collector):
    def __init__(self, snap: dict[str, Any]) -> None:
        self.snap = snap

    def collect(self) -> Iterable[Metric]:
        return families(self.snap)


def render(snap: dict[str, Any]) -> bytes:
    """The Prometheus text exposition of ``snap``."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(snap))
    return generate_latest(reg)
