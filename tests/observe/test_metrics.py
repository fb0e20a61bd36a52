"""Prometheus metrics (issue 13 item 4): the exposition of a snapshot, the
address parser, and a real daemon scraped during a perf run whose own totals
the counters must match."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from obs_helpers import Target, finish, get, samples, value
from prometheus_client.utils import floatToGoString

from blockfabric.bdevs.base import IoStats
from blockfabric.control import metrics, observe
from blockfabric.control.http import parse_bind
from blockfabric.control.observe import LATENCY_BOUNDS_NS


def fake_snapshot() -> dict[str, Any]:
    st = IoStats(num_read_ops=3, bytes_read=3 * 4096, num_write_ops=1, bytes_written=512)
    st.read_latency_hist[0] = 2  # <= 10 us
    st.read_latency_hist[-1] = 1  # > 1 s
    st.read_latency_ticks = 2_000_000_000
    return {
        "time": 0.0,
        "errors": {"iscsi_stats": "no iSCSI"},
        "iostat": {"bdevs": [{"name": 'M"0', **st.as_dict()}]},
        "subsystems": [
            {"nqn": "nqn.x:1", "subtype": "NVMe", "namespaces": [{"nsid": 1, "bdev_name": 'M"0'}]}
        ],
        "target_nodes": [{"name": "iqn.x:t", "luns": [{"lun_id": 0, "bdev_name": 'M"0'}]}],
        "reactors": {
            "tick_rate": 10**9,
            "reactors": [
                {
                    "lcore": 0,
                    "busy": 5,
                    "idle": 7,
                    "cpu_user_s": 1.5,
                    "cpu_sys_s": 0.5,
                    "restarts": 2,
                    "callback_errors": 0,
                }
            ],
        },  # fmt: skip
        "nvmf_stats": {
            "poll_groups": [
                {
                    "name": "nvmf_tgt_poll_group_0",
                    "c2h_term_reqs": 4,
                    "ddgst_errors": 1,
                    "hdgst_errors": 2,
                    "keep_alive_expiries": 3,
                    "current_io_qpairs": 1,
                    "current_admin_qpairs": 1,
                }
            ]
        },  # fmt: skip
        "iscsi_stats": None,
        "iobuf": [{"reactor": 0, "in_use": 2, "in_use_bytes": 16384, "waits": 9, "nomem": 0}],
        "qpairs": {
            "nqn.x:1": [
                {
                    "hostnqn": "nqn.h:1",
                    "peer_address": {"traddr": "1.2.3.4"},
                    "thread": "nvmf_tgt_poll_group_0",
                }
            ]
        },  # fmt: skip
    }


def test_render_names_units_labels() -> None:
    sm = samples(metrics.render(fake_snapshot()).decode())
    # label values are escaped by the library: a quote in a bdev name survives
    assert value(sm, "blockfabric_bdev_read_ops_total", bdev='M"0') == 3
    assert value(sm, "blockfabric_bdev_read_bytes_total", bdev='M"0') == 3 * 4096
    assert value(sm, "blockfabric_bdev_write_bytes_total", bdev='M"0') == 512
    # histogram: cumulative buckets in seconds, +Inf == count, sum in seconds
    first = floatToGoString(LATENCY_BOUNDS_NS[0] * 1e-9)
    lat = "blockfabric_bdev_read_latency_seconds"
    assert value(sm, lat + "_bucket", bdev='M"0', le=first) == 2
    assert value(sm, lat + "_bucket", bdev='M"0', le="1.0") == 2
    assert value(sm, lat + "_bucket", bdev='M"0', le="+Inf") == 3
    assert value(sm, lat + "_count", bdev='M"0') == 3
    assert value(sm, lat + "_sum", bdev='M"0') == pytest.approx(2.0)
    ns = {"subsystem": "nqn.x:1", "nsid": "1", "bdev": 'M"0'}
    assert value(sm, "blockfabric_nvmf_namespace_read_ops_total", **ns) == 3
    assert value(sm, "blockfabric_iscsi_lun_read_ops_total", target="iqn.x:t", lun="0",
                 bdev='M"0') == 3  # fmt: skip
    assert value(sm, "blockfabric_reactor_cpu_seconds_total", reactor="0", mode="user") == 1.5
    assert value(sm, "blockfabric_reactor_restarts_total", reactor="0") == 2
    assert value(sm, "blockfabric_reactor_connections", reactor="0") == 2
    assert value(sm, "blockfabric_nvmf_tcp_c2h_term_reqs_total", reactor="0") == 4
    assert value(sm, "blockfabric_nvmf_tcp_data_digest_errors_total", reactor="0") == 1
    assert value(sm, "blockfabric_nvmf_tcp_header_digest_errors_total", reactor="0") == 2
    assert value(sm, "blockfabric_nvmf_keep_alive_expiries_total", reactor="0") == 3
    assert value(sm, "blockfabric_iobuf_waits_total", reactor="0") == 9
    assert value(sm, "blockfabric_iobuf_in_use_bytes", reactor="0") == 16384
    assert value(sm, "blockfabric_nvmf_host_qpairs", subsystem="nqn.x:1", hostnqn="nqn.h:1") == 1
    assert value(sm, "blockfabric_scrape_errors", part="iscsi_stats") == 1


def test_render_empty_snapshot() -> None:
    """A target that answers nothing still gives a valid page (up, errors)."""
    snap = {"time": 0.0, "errors": {k: "down" for k in observe._PLAIN}}
    sm = samples(metrics.render(snap).decode())
    assert value(sm, "blockfabric_up") == 1
    assert value(sm, "blockfabric_scrape_errors", part="iostat") == 1


def test_iostats_add_histograms() -> None:
    a, b = IoStats(), IoStats()
    a.read_latency_hist[3] = 2
    b.read_latency_hist[3] = 5
    b.num_read_ops = 1
    a.add(b)
    assert a.read_latency_hist[3] == 7 and a.num_read_ops == 1
    assert IoStats(**a.as_dict()) == a


@pytest.mark.parametrize(
    "spec,want",
    [
        ("9100", ("127.0.0.1", 9100)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:9100", ("::1", 9100)),
        (":9100", ("127.0.0.1", 9100)),
    ],
)
def test_parse_bind(spec: str, want: tuple[str, int]) -> None:
    assert parse_bind(spec) == want


@pytest.mark.parametrize("spec", ["x", "1.2.3.4:http", "1.2.3.4:70000", ""])
def test_parse_bind_errors(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_bind(spec)


def test_scrape_during_perf_matches_perf_totals(target: Target, tmp_path: Path) -> None:
    out = tmp_path / "perf.json"
    qd = 8
    p = target.perf(8, qd=qd, pattern="randrw", json_out=out)
    try:
        target.wait_io()
        seen = []
        for _ in range(3):
            status, ctype, body = get(target.metrics_url)
            assert status == 200 and ctype.startswith("text/plain")
            sm = samples(body.decode())
            seen.append(value(sm, "blockfabric_bdev_read_ops_total", bdev="Malloc0"))
            time.sleep(1.0)
        assert seen[0] > 0 and seen[0] < seen[1] < seen[2], f"counters not moving: {seen}"
    finally:
        finish(p)
    doc = json.loads(out.read_text())
    ios = doc["total"]["ios"]
    sm = samples(get(target.metrics_url)[2].decode())
    reads = value(sm, "blockfabric_bdev_read_ops_total", bdev="Malloc0")
    writes = value(sm, "blockfabric_bdev_write_ops_total", bdev="Malloc0")
    # perf counts completed I/Os; the target may have seen at most one queue
    # depth more (submitted when perf's clock ran out)
    assert ios <= reads + writes <= ios + qd, (ios, reads, writes)
    assert value(sm, "blockfabric_bdev_read_bytes_total", bdev="Malloc0") == reads * 4096
    assert value(sm, "blockfabric_bdev_write_bytes_total", bdev="Malloc0") == writes * 4096
    assert 0.6 < reads / (reads + writes) < 0.8  # perf's -M 70
    lat = "blockfabric_bdev_read_latency_seconds"
    assert value(sm, lat + "_count", bdev="Malloc0") == reads  # every read completed
    assert value(sm, lat + "_bucket", bdev="Malloc0", le="+Inf") == reads
    assert value(sm, lat + "_sum", bdev="Malloc0") > 0
    assert value(sm, "blockfabric_bdev_write_latency_seconds_count", bdev="Malloc0") == writes
    ns = {"subsystem": "nqn.2016-06.io.blockfabric:obs1", "nsid": "1", "bdev": "Malloc0"}
    assert value(sm, "blockfabric_nvmf_namespace_read_ops_total", **ns) == reads
    done = sum(v for (n, _l), v in sm.items() if n == "blockfabric_nvmf_completed_io_total")
    assert ios <= done <= ios + qd
    cpu = sum(v for (n, _l), v in sm.items() if n == "blockfabric_reactor_cpu_seconds_total")
    assert cpu > 0
    # and the RPC says the same
    b = target.daemon.rpc("bdev_get_iostat", {"name": "Malloc0"})["bdevs"][0]
    assert b["num_read_ops"] == reads and b["num_write_ops"] == writes


def test_servers_read_only_loopback_and_stopped_with_daemon(target: Target) -> None:
    st = target.daemon.rpc("blockfabric_get_status")
    assert st["http"]["metrics"].startswith("127.0.0.1:")
    assert st["http"]["dashboard"].startswith("127.0.0.1:")
    for method in ("POST", "PUT", "DELETE"):
        req = urllib.request.Request(target.metrics_url, data=b"x", method=method)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 405
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(target.http_url + "nothing", timeout=10)
    assert e.value.code == 404
    # the metrics port serves no dashboard, the dashboard port no metrics
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(target.http_url + "metrics", timeout=10)
    target.daemon.stop()
    for url in (target.metrics_url, target.http_url):
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url, timeout=5)


def test_off_by_default(daemon: Any) -> None:
    assert daemon.rpc("blockfabric_get_status")["http"] == {}


def test_bad_metrics_address_fails_start(daemon_factory: Any) -> None:
    d = daemon_factory("0x1", ["--metrics", "127.0.0.1:notaport"])
    p = d.cli("start", "--name", d.name, "-r", d.rpc_addr, "--empty", "--daemon",
              "--metrics", "127.0.0.1:notaport", check=False)  # fmt: skip
    assert p.returncode == 1 and "--metrics" in p.stderr


def test_client_bounds_and_shared_snapshots(target: Target) -> None:
    """However many clients: at most MAX_CLIENTS served at once (the next is
    closed at once), and scrapes closer than MIN_SNAPSHOT_AGE_S share one
    snapshot, so clients cannot make the reactors answer more often."""
    import socket

    from blockfabric.control.http import MAX_CLIENTS

    host, port = target.http_url.split("//")[1].rstrip("/").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(MAX_CLIENTS)]
    try:
        time.sleep(0.5)
        extra = socket.create_connection((host, int(port)), timeout=10)
        extra.sendall(b"GET /api/snapshot HTTP/1.1\r\nHost: x\r\n\r\n")
        assert extra.recv(100) == b"", "a client beyond MAX_CLIENTS was served"
        extra.close()
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # the slots come back once the idle connections are gone
        try:
            a = json.loads(get(target.http_url + "api/snapshot")[2])
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    time.sleep(0.7)
    # four clients at once: they queue for one snapshot and all get it
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as ex:
        views = list(ex.map(lambda _i: json.loads(get(target.http_url + "api/snapshot")[2]),
                            range(4)))  # fmt: skip
    times = {v["time"] for v in views}
    assert len(times) == 1 and times.pop() > a["time"], [v["time"] for v in views]
