"""The `blockfabric` command: start, stop, status, rpc, shm, perf."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..shm import names


def _add_name(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--name",
        "-n",
        default=os.environ.get("BLOCKFABRIC_NAME", "default"),
        help="instance name (default: %(default)s)",
    )


def cmd_start(a: argparse.Namespace) -> int:
    from ..actors.supervisor import Options, StartupError, run_supervisor

    opts = Options(
        name=a.name,
        core_mask=a.cpumask,
        mem_mb=a.mem_size,
        rpc_addr=a.rpc_socket,
        spdk_rpc=a.spdk_rpc,
        json_config=a.json,
        ini_config=a.config,
        default_config=not a.empty,
        poll_mode=a.poll_mode,
        spin_us=a.spin_us,
        hugepages=a.hugepages,
        log_level=a.log_level,
        max_restarts=a.max_restarts,
        restart_window_s=a.restart_window,
        heartbeat_s=a.heartbeat_interval,
        heartbeat_timeout_s=a.heartbeat_timeout,
        log_file=a.log_file,
        log_max_mb=a.log_max_mb,
        log_count=a.log_count,
        tpoint_group=a.tpoint_group,
        num_trace_entries=a.num_trace_entries,
        metrics_addr=a.metrics,
        http_addr=a.http,
    )
    if a.daemon:
        return _daemonize(a, opts)

    def ready() -> None:
        print(
            f"blockfabric[{a.name}] started; stop with Ctrl-C or `blockfabric stop --name {a.name}`",
            file=sys.stderr,
            flush=True,
        )
        if not (a.json or a.config or a.empty):
            from ..actors.default_config import host_instructions

            print(host_instructions(), file=sys.stderr, flush=True)

    try:
        return run_supervisor(opts, ready)
    except (StartupError, ValueError, OSError) as e:
        print(f"blockfabric start: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        from ..control.config import ConfigError

        if isinstance(e, ConfigError):
            print(f"blockfabric start: {e}", file=sys.stderr)
            return 1
        raise


def _daemonize(a: argparse.Namespace, opts: Any) -> int:
    """Re-run ourselves in the foreground in a new session; return once the
    RPC server answers (or the child failed)."""
    from ..control.addresses import default_rpc_addr
    from ..control.client import RpcClient

    argv = [sys.executable, "-m", "blockfabric.tools.cli"] + [
        x for x in sys.argv[1:] if x not in ("--daemon", "-D")
    ]
    # The daemon logs through one size-capped, rotated file (--log-max-mb,
    # --log-count); only what bypasses logging (a fatal crash) lands in
    # NAME.out, which is truncated at every start.
    log_path = Path(a.log_file) if a.log_file else names.run_dir() / f"{a.name}.log"
    if not a.log_file:
        argv += ["--log-file", str(log_path)]
    out_path = names.run_dir() / f"{a.name}.out"
    with open(out_path, "wb") as outf:
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=outf, stderr=outf, start_new_session=True
        )
    addr = opts.rpc_addr or default_rpc_addr(a.name)
    deadline = time.monotonic() + a.wait
    while time.monotonic() < deadline:
        if child.poll() is not None:
            print(
                f"blockfabric start: daemon exited with status {child.returncode}; see {log_path}:",
                file=sys.stderr,
            )
            for p in (log_path, out_path):
                with contextlib.suppress(OSError), open(p, errors="replace") as f:
                    sys.stderr.write("".join(f.readlines()[-15:]))
            return 1
        try:
            RpcClient(addr, timeout=0.5).call("spdk_get_version")
            print(
                f"blockfabric[{a.name}] running as pid {child.pid}, RPC at {addr}, log {log_path}"
            )
            return 0
        except Exception:
            time.sleep(0.1)
    print(
        f"blockfabric start: no RPC answer from {addr} within {a.wait}s; stopping", file=sys.stderr
    )
    child.terminate()
    return 1


def cmd_stop(a: argparse.Namespace) -> int:
    from ..shm.lock import InstanceLock

    if not InstanceLock.is_held(a.name):
        print(f"blockfabric[{a.name}] is not running", file=sys.stderr)
        return 1
    pid = InstanceLock.holder_pid(a.name)
    if not pid:
        print(f"blockfabric[{a.name}]: running but its pid is unknown", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + a.timeout
    while time.monotonic() < deadline:
        if not InstanceLock.is_held(a.name):
            print(f"blockfabric[{a.name}] stopped")
            return 0
        time.sleep(0.05)
    print(f"blockfabric[{a.name}] (pid {pid}) did not stop within {a.timeout}s", file=sys.stderr)
    return 1


def cmd_status(a: argparse.Namespace) -> int:
    import psutil

    from ..control.addresses import default_rpc_addr
    from ..control.client import RpcClient

    addr = a.rpc_socket or default_rpc_addr(a.name)
    try:
        st = RpcClient(addr, timeout=a.timeout).call("blockfabric_get_status")
    except Exception as e:
        print(
            f"blockfabric[{a.name}] is not running or not answering at {addr}: {e}", file=sys.stderr
        )
        return 1
    rows = []

    def proc_row(role: str, pid: int, core: str) -> dict[str, Any]:
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                return {
                    "role": role,
                    "pid": pid,
                    "core": core,
                    "state": p.status(),
                    "uptime_s": round(time.time() - p.create_time(), 1),
                    "rss_mib": round(p.memory_info().rss / 2**20, 1),
                    "cpu_affinity": p.cpu_affinity(),
                    "title": " ".join(p.cmdline()[:1]),
                }
        except psutil.Error as e:
            return {
                "role": role,
                "pid": pid,
                "core": core,
                "state": f"gone ({e.__class__.__name__})",
            }

    rows.append(proc_row("supervisor", st["pid"], "-"))
    for r in st["reactors"]:
        row = proc_row(f"reactor {r['id']}", r["pid"], str(r["core"]))
        for k in ("restarts", "last_cause", "last_restart"):
            row[k] = r.get(k)
        rows.append(row)
    try:
        iobuf = RpcClient(addr, timeout=a.timeout).call("iobuf_get_stats")
    except Exception as err:  # an older daemon, or a reactor restarting
        iobuf = {"error": str(err)}
    if a.json:
        print(json.dumps({**st, "processes": rows, "iobuf": iobuf}, indent=2))
        return 0
    print(f"instance {st['instance']}  rpc {st['rpc_addr']}")
    print(
        f"{'ROLE':<12} {'PID':>7} {'CORE':>4} {'STATE':<10} {'UPTIME':>9} {'RSS MiB':>8} "
        f"{'RESTARTS':>8}  LAST CAUSE"
    )
    for r in rows:
        last = r.get("last_cause") or ""
        if last and r.get("last_restart"):
            last += time.strftime(" at %Y-%m-%d %H:%M:%S", time.localtime(r["last_restart"]))
        print(
            f"{r['role']:<12} {r['pid']:>7} {r['core']:>4} {r['state']:<10} "
            f"{r.get('uptime_s', '-'):>9} {r.get('rss_mib', '-'):>8} "
            f"{'-' if r.get('restarts') is None else r['restarts']:>8}  {last}"
        )
    for lst in st.get("listeners", []):
        print(f"listening: {lst['proto']} {lst['addr']}:{lst['port']}")
    pool = st.get("pool")
    if pool:
        sm, lg = pool["small"], pool["large"]
        hp = " hugetlbfs" if pool["hugepage"] else ""
        print(
            f"buffer pool {pool['name']}: {pool['size'] >> 20} MiB{hp}; "
            f"small {sm['in_use']}/{sm['count']} in use, "
            f"large {lg['in_use']}/{lg['count']} in use; "
            f"reserve free {sm['reserve_free']} small, {lg['reserve_free']} large"
        )
    if isinstance(iobuf, list) and iobuf:
        print(
            f"{'IOBUF':<12} {'IN USE':>7} {'HIGH':>6} {'WAITS':>7} {'QUEUED':>6} "
            f"{'GETS':>9} {'PUTS':>9} {'NOMEM':>7}"
        )
        for ent in iobuf:
            gets = ent["small_pool"]["gets"] + ent["large_pool"]["gets"]
            puts = ent["small_pool"]["puts"] + ent["large_pool"]["puts"]
            print(
                f"{ent['module']:<12} {ent['in_use']:>7} {ent['high_water']:>6} "
                f"{ent['waits']:>7} {ent['queued']:>6} {gets:>9} {puts:>9} {ent['nomem']:>7}"
            )
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="blockfabric", description="User-space NVMe-oF/TCP and iSCSI target"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("start", help="start a target instance (foreground unless --daemon)")
    _add_name(s)
    s.add_argument(
        "-m", "--cpumask", default="0x1", help="core mask: one reactor per core (hex or [0,1])"
    )
    s.add_argument(
        "-s",
        "--mem-size",
        type=int,
        default=0,
        metavar="MEM_MB",
        help="size of the shared transfer buffer pool in MiB "
        "(default: 64, or 16 per reactor beyond 4)",
    )
    s.add_argument(
        "-r",
        "--rpc-socket",
        default=None,
        metavar="RPC_ADDR",
        help="ZeroMQ RPC address (default ipc:///var/tmp/blockfabric[.NAME].sock)",
    )
    s.add_argument(
        "--spdk-rpc",
        default=None,
        metavar="PATH",
        help="also serve SPDK's JSON-RPC wire protocol on this Unix socket (for SPDK's rpc.py)",
    )
    s.add_argument(
        "--json", default=None, metavar="CONFIG", help="SPDK JSON config file to load at start-up"
    )
    s.add_argument(
        "-c", "--config", default=None, metavar="INI", help="legacy iSCSI INI config file"
    )
    s.add_argument(
        "--empty",
        action="store_true",
        help="start with no configuration (not the built-in default)",
    )
    s.add_argument("--poll-mode", default="adaptive", choices=("adaptive", "busy", "blocking"))
    s.add_argument(
        "--spin-us", type=int, default=200, help="adaptive mode: spin this long before blocking"
    )
    s.add_argument("--hugepages", default="auto", choices=("auto", "never", "require"))
    s.add_argument("--log-level", default=os.environ.get("BLOCKFABRIC_LOG_LEVEL", "INFO"))
    s.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        metavar="N",
        help="restart a dead reactor at most N times per --restart-window (0: a reactor "
        "death stops the target; default %(default)s)",
    )
    s.add_argument(
        "--restart-window",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="window of the restart policy (default %(default)s)",
    )
    s.add_argument(
        "--heartbeat-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="the supervisor pings every reactor this often (default %(default)s)",
    )
    s.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a reactor that does not answer for this long is killed and restarted "
        "(default %(default)s)",
    )
    s.add_argument(
        "--log-file",
        default=None,
        metavar="PATH",
        help="log to this size-capped, rotated file instead of stderr "
        "(--daemon: RUN_DIR/NAME.log by default)",
    )
    s.add_argument(
        "--log-max-mb",
        type=float,
        default=64.0,
        metavar="MB",
        help="rotate the log file at this size (default %(default)s)",
    )
    s.add_argument(
        "--log-count",
        type=int,
        default=4,
        metavar="N",
        help="rotated log files kept: NAME.log.1 .. NAME.log.N (default %(default)s)",
    )
    s.add_argument(
        "-e",
        "--tpoint-group",
        default="",
        metavar="GROUPS",
        help="tracepoint groups to record from the start, comma separated "
        "(nvmf_tcp, nvmf_rdma, nvmf_fc, nvmf, bdev, scsi, iscsi_conn (or iscsi), rpc, all, "
        "or a mask like SPDK's -e); decode with `blockfabric trace`",
    )
    s.add_argument(
        "--num-trace-entries",
        type=int,
        default=32768,
        metavar="N",
        help="trace ring entries per reactor, a power of 2 (default %(default)s)",
    )
    s.add_argument(
        "--metrics",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default; "
        "a bare PORT binds 127.0.0.1)",
    )
    s.add_argument(
        "--http",
        default=None,
        metavar="HOST:PORT",
        help="serve the read-only web dashboard at http://HOST:PORT/ (off by default; "
        "a bare PORT binds 127.0.0.1)",
    )
    s.add_argument(
        "-D", "--daemon", action="store_true", help="detach; return once the RPC server answers"
    )
    s.add_argument(
        "--wait", type=float, default=30.0, help="--daemon: seconds to wait for the RPC server"
    )
    s.set_defaults(func=cmd_start)

    s = sub.add_parser("stop", help="stop an instance (SIGTERM, wait for a clean exit)")
    _add_name(s)
    s.add_argument("--timeout", type=float, default=30.0)
    s.set_defaults(func=cmd_stop)

    s = sub.add_parser("status", help="show an instance's processes")
    _add_name(s)
    s.add_argument("-r", "--rpc-socket", default=None)
    s.add_argument("--json", action="store_true")
    s.add_argument("--timeout", type=float, default=5.0)
    s.set_defaults(func=cmd_status)

    from ..control import rpc_cli

    rpc_cli.register(sub)
    from . import shm_cmd

    shm_cmd.register(sub)
    from . import trace_cmd

    trace_cmd.register(sub)
    from . import top

    top.register(sub)
    try:
        from . import perf

        perf.register(sub)
    except ImportError:
        pass
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    rc = a.func(a)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
