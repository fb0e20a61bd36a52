"""Cost of DH-HMAC-CHAP: ``python -m bench.auth``.

One blockfabric target (busy-polling reactor on --cpus-target) exports one
malloc namespace in two subsystems on one listener: ``plain`` (any host, the
peer) and ``auth`` (one host NQN with a host and a controller key). Rows:

* connect time of one association (admin queue + one I/O queue, Identify,
  our blocking host on --cpus-load): plain (the peer), then with
  DH-HMAC-CHAP SHA-512 and each DH group null, ffdhe2048, ffdhe4096,
  ffdhe8192 (nvmf_set_config narrows what the target offers), bidirectional;
  median of --reps connects each, interleaved row by row so that drift hits
  every row alike; the ratio is the row's median over plain's;
* 4 KiB random read QD32 IOPS (`blockfabric perf`, 1 worker) on plain and on
  auth (--dhchap-key/--dhchap-ctrlr-key): authentication is per queue at
  connect time, so the ratio should be ~1.0 (the data path only checks one
  attribute per command on the general path; the fast path is unchanged).

Writes bench/results/auth.md and auth.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .systems import BF_CLI, CLEANUPS, BlockfabricTarget, Recorder, free_port, parse_cpus

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PLAIN = "nqn.2016-06.io.blockfabric:auth-plain"
SECURE = "nqn.2016-06.io.blockfabric:auth-secure"
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:5b1f0d2c-7a3e-4c9d-8e61-0f2a4b6c8d10"
GROUPS = ["null", "ffdhe2048", "ffdhe4096", "ffdhe8192"]


def _keyfile(d: Path, name: str, text: str) -> str:
    p = d / name
    p.write_text(text + "\n")
    os.chmod(p, 0o600)
    return str(p)


def _connect_s(port: int, nqn: str, dhchap: Any) -> float:
    from blockfabric.transports.nvmf_host.controller import Controller

    t0 = time.perf_counter()
    c = Controller("127.0.0.1", port, nqn, hostnqn=HOSTNQN, nr_io_queues=1, dhchap=dhchap)
    c.connect()
    dt_s = time.perf_counter() - t0
    c.close()
    return dt_s


def _perf_iops(trid: str, extra: list[str], secs: int, cpus: list[int]) -> float:
    fd, out = tempfile.mkstemp(prefix="bf-perf-", suffix=".json")
    os.close(fd)
    cmd = ["taskset", "-c", ",".join(map(str, cpus)), *BF_CLI, "perf", "-r", trid]
    cmd += ["-q", "32", "-o", "4096", "-w", "randread", "-t", str(secs), "-P", "1", "--json", out]
    p = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=secs + 60)
    if p.returncode != 0:
        raise RuntimeError(f"perf failed: {p.stderr[-500:]}")
    doc = json.loads(Path(out).read_text())
    os.unlink(out)
    return float(doc["total"]["iops"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.auth", description=__doc__.split("\n")[0])
    ap.add_argument("--cpus-target", default="0")
    ap.add_argument("--cpus-load", default="1")
    ap.add_argument("--reps", type=int, default=15, help="connects per row")
    ap.add_argument("--time", type=int, default=10, help="seconds per perf run")
    ap.add_argument("--perf-reps", type=int, default=3, help="perf runs per row (median)")
    ap.add_argument("--quick", action="store_true", help="3 connects per row, one 2 s perf run")
    a = ap.parse_args(argv)
    if a.quick:
        a.reps, a.time, a.perf_reps = 3, 2, 1
    from blockfabric.control.keyring import format_interchange
    from blockfabric.transports.nvmf_host.auth import HostAuthConfig

    rec = Recorder()
    tcpus, lcpus = parse_cpus(a.cpus_target), parse_cpus(a.cpus_load)
    os.sched_setaffinity(0, set(lcpus))
    tmp = Path(tempfile.mkdtemp(prefix="bf-bench-auth-"))
    hk = format_interchange("DHHC-1", 1, os.urandom(32))
    ck = format_interchange("DHHC-1", 2, os.urandom(48))
    t = BlockfabricTarget(tcpus, tcpus, rec, "auth")
    try:
        t.start()
        t.setup_malloc()
        port = free_port()
        t.rpc("nvmf_create_transport", {"trtype": "TCP"})
        addr = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}
        for nqn, any_host in ((PLAIN, True), (SECURE, False)):
            t.rpc("nvmf_create_subsystem", {"nqn": nqn, "allow_any_host": any_host})
            t.rpc("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {"bdev_name": "Malloc0"}})
            t.rpc("nvmf_subsystem_add_listener", {"nqn": nqn, "listen_address": addr})
        t.rpc("keyring_file_add_key", {"name": "hk", "path": _keyfile(tmp, "hk", hk)})
        t.rpc("keyring_file_add_key", {"name": "ck", "path": _keyfile(tmp, "ck", ck)})
        t.rpc(
            "nvmf_subsystem_add_host",
            {"nqn": SECURE, "host": HOSTNQN, "dhchap_key": "hk", "dhchap_ctrlr_key": "ck"},
        )
        cfg = HostAuthConfig.from_strings(hk, ck)
        rows: dict[str, list[float]] = {"plain": [], **{g: [] for g in GROUPS}}
        for _ in range(a.reps):  # interleaved: one connect of every row per round
            rows["plain"].append(_connect_s(port, PLAIN, None))
            for g in GROUPS:
                t.rpc(
                    "nvmf_set_config",
                    {"dhchap_digests": ["sha512"], "dhchap_dhgroups": [g]},
                    record=False,
                )
                rows[g].append(_connect_s(port, SECURE, cfg))
        base = statistics.median(rows["plain"])
        conn = {
            k: {"median_ms": statistics.median(v) * 1e3, "ratio": statistics.median(v) / base}
            for k, v in rows.items()
        }
        t.rpc("nvmf_set_config", {"dhchap_dhgroups": ["ffdhe2048"]})
        trid = f"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port}"
        keys = [
            "--dhchap-key",
            _keyfile(tmp, "h-hk", hk),
            "--dhchap-ctrlr-key",
            _keyfile(tmp, "h-ck", ck),
        ]
        plain_runs: list[float] = []
        auth_runs: list[float] = []
        for _ in range(a.perf_reps):  # interleaved, medians
            plain_runs.append(
                _perf_iops(f"{trid} subnqn:{PLAIN} hostnqn:{HOSTNQN}", [], a.time, lcpus)
            )
            auth_runs.append(
                _perf_iops(f"{trid} subnqn:{SECURE} hostnqn:{HOSTNQN}", keys, a.time, lcpus)
            )
        iops_plain = statistics.median(plain_runs)
        iops_auth = statistics.median(auth_runs)
    finally:
        t.stop()
        for fn in CLEANUPS:
            try:
                fn()
            except Exception:  # noqa: BLE001 - best effort
                pass
    res = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus_target": tcpus,
        "cpus_load": lcpus,
        "reps": a.reps,
        "connect": conn,
        "randread_4k_qd32": {
            "plain_iops": iops_plain,
            "auth_iops": iops_auth,
            "ratio": iops_auth / iops_plain,
            "plain_runs": plain_runs,
            "auth_runs": auth_runs,
        },
        "commands": rec.commands,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "auth.json").write_text(json.dumps(res, indent=1))
    lines = [
        "### DH-HMAC-CHAP cost (python -m bench.auth)",
        "",
        f"{res['date']}, target CPUs {tcpus}, load CPUs {lcpus}, {a.reps} connects per row (median).",
        "",
        "| association (admin + 1 I/O queue, Identify) | connect ms | ratio to plain |",
        "|---|---:|---:|",
    ]
    for k, v in conn.items():
        label = "plain (peer)" if k == "plain" else f"DH-HMAC-CHAP sha512 {k}, bidirectional"
        lines.append(f"| {label} | {v['median_ms']:.1f} | {v['ratio']:.2f} |")
    r = res["randread_4k_qd32"]
    lines += [
        "",
        f"| 4 KiB random read QD32, 1 worker (median of {a.perf_reps}) | IOPS | ratio |",
        "|---|---:|---:|",
        f"| plain (peer) | {r['plain_iops']:,.0f} | 1.00 |",
        f"| DH-HMAC-CHAP (ffdhe2048, bidirectional) | {r['auth_iops']:,.0f} | {r['ratio']:.2f} |",
    ]
    (RESULTS / "auth.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
