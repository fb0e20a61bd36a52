"""``blockfabric rpc``: an SPDK rpc.py-compatible command line client.

    blockfabric rpc [--name NAME | -s ADDR] [-t TIMEOUT] [--dry-run] METHOD [ARGS] [--params JSON]

Sub-commands, positional arguments, flags and the params they send mirror
SPDK's scripts/rpc.py for the same method, so scripts and guides written for
SPDK work unchanged; the old method names of SPDK's guides (add_portal_group,
construct_target_node, construct_malloc_bdev, ...) are accepted with their old
argument forms and send the old method name (the server registers those as
aliases) with the new method's params.

Differences from rpc.py, on purpose:
* optional values are sent only when given (rpc.py sometimes sends its client
  defaults); the server applies the same SPDK defaults.
* ``--params JSON`` on every method: merged over (object) or replacing (array)
  the params built from the arguments; any other METHOD name is sent as is
  with ``--params``.
* errors go to stderr (rpc.py prints them on stdout); exit code 1.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from typing import Any

from .addresses import DEFAULT_INSTANCE, default_rpc_addr
from .client import RpcClient, RpcClientError, RpcConnectionError

ParamsFn = Callable[[argparse.Namespace], Any]

# output modes, as rpc.py prints each method's result
OUT_NONE = "none"  # rpc.py ignores the result
OUT_DICT = "dict"  # print_dict: json indent=2
OUT_JSON = "json"  # print_json: json indent=2, a plain string without quotes
OUT_ARRAY = "array"  # print_array: shell-quoted words on one line


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    """Drop unset options: None, and store_true flags left False."""
    return {k: v for k, v in d.items() if v is not None and v is not False}


def _pick(*fields: str) -> ParamsFn:
    """params from args: "dest" or "dest:param" (rename), unset ones dropped."""

    def fn(a: argparse.Namespace) -> dict[str, Any]:
        out = {}
        for f in fields:
            dest, _, name = f.partition(":")
            out[name or dest] = getattr(a, dest)
        return _clean(out)

    return fn


def _words(s: str | None) -> list[str] | None:
    return None if s is None else s.strip().split()


def _pg_ig_maps(s: str) -> list[dict[str, int]]:
    out = []
    for u in s.strip().split():
        pg, _, ig = u.partition(":")
        out.append({"pg_tag": int(pg), "ig_tag": int(ig)})
    return out


def _luns(s: str) -> list[dict[str, Any]]:
    out = []
    for u in s.strip().split():
        bdev, _, lun = u.rpartition(":")
        out.append({"bdev_name": bdev, "lun_id": int(lun)})
    return out


def _portals(s: str) -> list[dict[str, str]]:
    out = []
    for p in s.strip().split():
        host, _, port = p.rpartition(":")
        port = port.split("@", 1)[0]  # old "IP:PORT@CPUMASK": the mask is ignored, as rpc.py does
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        out.append({"host": host, "port": port})
    return out


class _Builder:
    def __init__(self, sub: argparse._SubParsersAction) -> None:
        self.sub = sub
        self.names: list[str] = []

    def cmd(
        self, name: str, help: str, params: ParamsFn | None = None, out: str = OUT_NONE
    ) -> argparse.ArgumentParser:
        p = self.sub.add_parser(name, help=help, description=help)
        p.add_argument(
            "--params",
            dest="params_json",
            metavar="JSON",
            help="JSON params merged over (object) or replacing (array) the ones from the arguments",
        )
        p.set_defaults(rpc_method=name, to_params=params or (lambda a: {}), out=out)
        self.names.append(name)
        return p


# --- method definitions ---------------------------------------------------------


def _framework(b: _Builder) -> None:
    b.cmd("spdk_get_version", "Get the target's version", out=OUT_JSON)
    p = b.cmd(
        "rpc_get_methods",
        "Get list of supported RPC methods",
        _pick("current", "include_aliases"),
        OUT_DICT,
    )
    p.add_argument(
        "-c", "--current", action="store_true", help="only methods callable in the current state"
    )
    p.add_argument("-i", "--include-aliases", action="store_true", help="include RPC aliases")
    b.cmd("framework_get_reactors", "Display list of all reactors", out=OUT_DICT)
    b.cmd(
        "framework_get_subsystems", "Print subsystems array in initialization order", out=OUT_DICT
    )
    p = b.cmd("framework_get_config", "Print subsystem configuration", _pick("name"), OUT_DICT)
    p.add_argument("name", help="Name of subsystem to query")
    p = b.cmd("save_config", "Write the live configuration to stdout", out="config")
    p.add_argument("-i", "--indent", type=int, default=2, help="indent level; < 0 means compact")

    def load_params(a: argparse.Namespace) -> Any:
        src = a.json_conf
        text = sys.stdin.read() if src is None else open(src, encoding="utf-8").read()
        doc = json.loads(text)
        if a.include_aliases and isinstance(doc, dict):
            doc = {**doc, "include_aliases": True}
        return doc

    p = b.cmd("load_config", "Configure subsystems and targets from a JSON config", load_params)
    p.add_argument("-i", "--include-aliases", action="store_true", help="include RPC aliases")
    p.add_argument("-j", "--json-conf", help="JSON configuration file (default: stdin)")
    p = b.cmd("log_set_level", "set log level", _pick("level"))
    p.add_argument("level", help='log level we want to set. (for example "DEBUG").')
    b.cmd("log_get_level", "get log level", out=OUT_DICT)


def _malloc_create(b: _Builder, name: str) -> None:
    def params(a: argparse.Namespace) -> dict[str, Any]:
        num_blocks = int((a.total_size * 1024 * 1024) // a.block_size)
        return _clean(
            {
                "num_blocks": num_blocks,
                "block_size": a.block_size,
                "name": a.name,
                "uuid": a.uuid,
                "optimal_io_boundary": a.optimal_io_boundary,
            }
        )

    p = b.cmd(name, "Create a bdev with malloc backend", params, OUT_JSON)
    p.add_argument("-b", "--name", help="Name of the bdev")
    p.add_argument("-u", "--uuid", help="UUID of the bdev")
    p.add_argument("total_size", type=float, help="Size of malloc bdev in MB (float > 0)")
    p.add_argument("block_size", type=int, help="Block size for this bdev")
    p.add_argument(
        "-o", "--optimal-io-boundary", type=int, help="Split on optimal IO boundary, in blocks"
    )


def _bdev(b: _Builder) -> None:
    p = b.cmd(
        "bdev_get_bdevs",
        "Display current blockdev list or required blockdev",
        _pick("name", "timeout_ms:timeout"),
        OUT_DICT,
    )
    p.add_argument("-b", "--name", help="Name of the Blockdev. Example: Nvme0n1")
    p.add_argument("-t", "--timeout-ms", type=int, help="Time in ms to wait for the bdev to appear")
    p = b.cmd(
        "bdev_get_iostat", "Display I/O statistics of all or one blockdev", _pick("name"), OUT_DICT
    )
    p.add_argument("-b", "--name", help="Name of the Blockdev. Example: Nvme0n1")
    _malloc_create(b, "bdev_malloc_create")
    _malloc_create(b, "construct_malloc_bdev")
    for kind in ("malloc", "null", "aio"):
        p = b.cmd(f"bdev_{kind}_delete", f"Delete a {kind} bdev", _pick("name"))
        p.add_argument("name", help=f"{kind} bdev name")

    def null_params(a: argparse.Namespace) -> dict[str, Any]:
        num_blocks = (a.total_size * 1024 * 1024) // a.block_size
        return _clean(
            {
                "name": a.name,
                "num_blocks": num_blocks,
                "block_size": a.block_size,
                "uuid": a.uuid,
                "md_size": a.md_size,
                "dif_type": a.dif_type or None,
                "dif_is_head_of_md": a.dif_is_head_of_md,
            }
        )

    p = b.cmd("bdev_null_create", "Add a bdev with null backend", null_params, OUT_JSON)
    p.add_argument("name", help="Block device name")
    p.add_argument("-u", "--uuid", help="UUID of the bdev")
    p.add_argument("total_size", type=int, help="Size of null bdev in MB (int > 0)")
    p.add_argument("block_size", type=int, help="Block size for this bdev")
    p.add_argument("-m", "--md-size", type=int, help="Metadata size for this bdev")
    p.add_argument(
        "-t",
        "--dif-type",
        type=int,
        default=0,
        choices=[0, 1, 2, 3],
        help="Protection information type",
    )
    p.add_argument(
        "-d",
        "--dif-is-head-of-md",
        action="store_true",
        help="PI is in the first 8 bytes of metadata",
    )

    def aio_params(a: argparse.Namespace) -> dict[str, Any]:
        return _clean(
            {
                "filename": a.filename,
                "name": a.name,
                "block_size": a.block_size or None,
                "direct": a.direct,
            }
        )

    p = b.cmd("bdev_aio_create", "Add a bdev with aio backend", aio_params, OUT_JSON)
    p.add_argument("filename", help="Path to device or file (ex: /dev/sda)")
    p.add_argument("name", help="Block device name")
    p.add_argument("block_size", type=int, nargs="?", default=0, help="Block size for this bdev")
    p.add_argument("--direct", action="store_true", help="Open the file with O_DIRECT")

    p = b.cmd(
        "bdev_wcache_create",
        "Add a volatile write-cache bdev in front of another (power-loss testing)",
        _pick("base_bdev_name", "name", "max_dirty_mb", "ignore_fua", "uuid"),
        OUT_JSON,
    )
    p.add_argument("-b", "--base-bdev-name", required=True, help="Name of the base bdev")
    p.add_argument("-p", "--name", required=True, help="Name of the wcache bdev")
    p.add_argument("--max-dirty-mb", type=int, help="Cache size in MiB (default 16)")
    p.add_argument(
        "--ignore-fua",
        action="store_true",
        help="TEST ONLY: treat FUA writes and flushes as ordinary cached writes",
    )
    p.add_argument("-u", "--uuid", help="UUID of the bdev")
    p = b.cmd("bdev_wcache_delete", "Delete a wcache bdev", _pick("name"))
    p.add_argument("name", help="wcache bdev name")
    p = b.cmd(
        "bdev_wcache_power_fail",
        "Drop every write of a wcache bdev that is not yet durable",
        _pick("name", "reorder", "seed"),
        OUT_DICT,
    )
    p.add_argument("name", help="wcache bdev name")
    p.add_argument(
        "--reorder", action="store_true", help="a random subset of dirty writes persists first"
    )
    p.add_argument("--seed", type=int, help="seed of the random choice")

    nvme_attach = (
        "name",
        "trtype",
        "traddr",
        "adrfam",
        "trsvcid",
        "priority",
        "subnqn",
        "hostnqn",
        "hostaddr",
        "hostsvcid",
        "prchk_reftag",
        "prchk_guard",
        "hdgst",
        "ddgst",
        "fabrics_timeout",
        "multipath",
        "num_io_queues",
        "ctrlr_loss_timeout_sec",
        "reconnect_delay_sec",
        "fast_io_fail_timeout_sec",
    )
    p = b.cmd(
        "bdev_nvme_attach_controller", "Add bdevs with nvme backend", _pick(*nvme_attach), OUT_ARRAY
    )
    p.add_argument(
        "-b", "--name", required=True, help="Name of the NVMe controller, prefix for each bdev name"
    )
    p.add_argument(
        "-t", "--trtype", required=True, help="NVMe-oF target trtype: e.g., tcp, rdma, pcie"
    )
    p.add_argument(
        "-a", "--traddr", required=True, help="NVMe-oF target address: e.g., an ip address or BDF"
    )
    p.add_argument("-f", "--adrfam", help="NVMe-oF target adrfam: e.g., ipv4, ipv6")
    p.add_argument("-s", "--trsvcid", help="NVMe-oF target trsvcid: e.g., a port number")
    p.add_argument("-p", "--priority", help="NVMe-oF connection priority")
    p.add_argument("-n", "--subnqn", help="NVMe-oF target subnqn")
    p.add_argument("-q", "--hostnqn", help="NVMe-oF host subnqn")
    p.add_argument("-i", "--hostaddr", help="NVMe-oF host address")
    p.add_argument("-c", "--hostsvcid", help="NVMe-oF host svcid")
    p.add_argument(
        "-r", "--prchk-reftag", action="store_true", help="Enable checking of PI reference tag"
    )
    p.add_argument("-g", "--prchk-guard", action="store_true", help="Enable checking of PI guard")
    p.add_argument("-e", "--hdgst", action="store_true", help="Enable TCP header digest")
    p.add_argument("-d", "--ddgst", action="store_true", help="Enable TCP data digest")
    p.add_argument("--fabrics-timeout", type=int, help="Fabrics connect timeout in microseconds")
    p.add_argument(
        "-x", "--multipath", help="Set multipath behavior (disable, failover, multipath)"
    )
    p.add_argument("--num-io-queues", type=int, help="Number of IO queues to request")
    p.add_argument(
        "-l",
        "--ctrlr-loss-timeout-sec",
        type=int,
        help="Time to wait until ctrlr is reconnected before deleting it",
    )
    p.add_argument("-o", "--reconnect-delay-sec", type=int, help="Time to delay a reconnect retry")
    p.add_argument(
        "-u",
        "--fast-io-fail-timeout-sec",
        type=int,
        help="Time to wait before failing I/O to a lost ctrlr",
    )
    p = b.cmd(
        "bdev_nvme_detach_controller",
        "Detach an NVMe controller and delete its bdevs",
        _pick("name", "trtype", "traddr", "adrfam", "trsvcid", "subnqn", "hostaddr", "hostsvcid"),
    )
    p.add_argument("name", help="Name of the controller")
    p.add_argument("-t", "--trtype", help="NVMe-oF target trtype")
    p.add_argument("-a", "--traddr", help="NVMe-oF target address")
    p.add_argument("-f", "--adrfam", help="NVMe-oF target adrfam")
    p.add_argument("-s", "--trsvcid", help="NVMe-oF target trsvcid")
    p.add_argument("-n", "--subnqn", help="NVMe-oF target subnqn")
    p.add_argument("-i", "--hostaddr", help="NVMe-oF host address")
    p.add_argument("-c", "--hostsvcid", help="NVMe-oF host svcid")
    p = b.cmd("bdev_nvme_get_controllers", "Display NVMe controllers", _pick("name"), OUT_DICT)
    p.add_argument("-n", "--name", help="Name of the NVMe controller. Example: Nvme0")


def _tgt(p: argparse.ArgumentParser, flag: str = "-t") -> None:
    p.add_argument(flag, "--tgt-name", help="The name of the parent NVMe-oF target (optional)")


def _nvmf(b: _Builder) -> None:
    transport = (
        "trtype",
        "tgt_name",
        "max_queue_depth",
        "max_io_qpairs_per_ctrlr",
        "in_capsule_data_size",
        "max_io_size",
        "io_unit_size",
        "max_aq_depth",
        "num_shared_buffers",
        "buf_cache_size",
        "zcopy",
        "num_cqe",
        "max_srq_depth",
        "no_srq",
        "dif_insert_or_strip",
        "sock_priority",
        "acceptor_backlog",
        "abort_timeout_sec",
        "no_wr_batching",
        "control_msg_num",
        "acceptor_poll_rate",
    )

    def transport_params(a: argparse.Namespace) -> dict[str, Any]:
        d = _pick(*transport)(a)
        if not a.c2h_success:  # -o/--c2h-success is rpc.py's store_false switch
            d["c2h_success"] = False
        return d

    p = b.cmd("nvmf_create_transport", "Create NVMf transport", transport_params)
    p.add_argument("-t", "--trtype", required=True, help="Transport type (ex. TCP)")
    p.add_argument("-g", "--tgt-name", help="The name of the parent NVMe-oF target (optional)")
    p.add_argument(
        "-q", "--max-queue-depth", type=int, help="Max number of outstanding I/O per queue"
    )
    p.add_argument(
        "-m", "--max-io-qpairs-per-ctrlr", type=int, help="Max number of IO qpairs per controller"
    )
    p.add_argument(
        "-c", "--in-capsule-data-size", type=int, help="Max number of in-capsule data size"
    )
    p.add_argument("-i", "--max-io-size", type=int, help="Max I/O size (bytes)")
    p.add_argument("-u", "--io-unit-size", type=int, help="I/O unit size (bytes)")
    p.add_argument("-a", "--max-aq-depth", type=int, help="Max number of admin cmds per AQ")
    p.add_argument("-n", "--num-shared-buffers", type=int, help="The number of pooled data buffers")
    p.add_argument(
        "-b", "--buf-cache-size", type=int, help="Shared buffers reserved per poll group"
    )
    p.add_argument(
        "-z",
        "--zcopy",
        action="store_true",
        help="Use zero-copy operations if the bdev supports them",
    )
    p.add_argument("-d", "--num-cqe", type=int, help="The number of CQ entries (RDMA)")
    p.add_argument("-s", "--max-srq-depth", type=int, help="Max outstanding I/O per SRQ (RDMA)")
    p.add_argument(
        "-r", "--no-srq", action="store_true", help="Disable per-thread shared receive queue (RDMA)"
    )
    p.add_argument(
        "-o", "--c2h-success", action="store_false", help="Disable C2H success optimization (TCP)"
    )
    p.add_argument(
        "-f", "--dif-insert-or-strip", action="store_true", help="Enable DIF insert/strip (TCP)"
    )
    p.add_argument(
        "-y", "--sock-priority", type=int, help="The sock priority of the tcp connection (TCP)"
    )
    p.add_argument(
        "-l", "--acceptor-backlog", type=int, help="Pending connections allowed at one time (RDMA)"
    )
    p.add_argument(
        "-x", "--abort-timeout-sec", type=int, help="Abort execution timeout value, in seconds"
    )
    p.add_argument(
        "-w", "--no-wr-batching", action="store_true", help="Disable work requests batching (RDMA)"
    )
    p.add_argument(
        "-e",
        "--control-msg-num",
        type=int,
        help="The number of control messages per poll group (TCP)",
    )
    p.add_argument("--acceptor-poll-rate", type=int, help="Polling interval of the acceptor (usec)")
    p = b.cmd(
        "nvmf_get_transports", "Display nvmf transports", _pick("trtype", "tgt_name"), OUT_DICT
    )
    p.add_argument("--trtype", help="Transport type (optional)")
    _tgt(p)
    p = b.cmd("nvmf_get_subsystems", "Display nvmf subsystems", _pick("nqn", "tgt_name"), OUT_DICT)
    p.add_argument("nqn", nargs="?", default=None, help="Subsystem NQN (optional)")
    _tgt(p)
    p = b.cmd(
        "nvmf_create_subsystem",
        "Create an NVMe-oF subsystem",
        _pick(
            "nqn",
            "tgt_name",
            "serial_number",
            "model_number",
            "allow_any_host",
            "max_namespaces",
            "ana_reporting",
            "min_cntlid",
            "max_cntlid",
        ),
    )
    p.add_argument("nqn", help="Subsystem NQN (ASCII)")
    _tgt(p)
    p.add_argument("-s", "--serial-number", help="Serial number, e.g. SPDK00000000000001")
    p.add_argument("-d", "--model-number", help="Model number, e.g. 'SPDK Controller'")
    p.add_argument("-a", "--allow-any-host", action="store_true", help="Allow any host to connect")
    p.add_argument("-m", "--max-namespaces", type=int, help="Maximum number of namespaces allowed")
    p.add_argument(
        "-r", "--ana-reporting", action="store_true", help="Enable ANA reporting feature"
    )
    p.add_argument("-i", "--min-cntlid", type=int, help="Minimum controller ID")
    p.add_argument("-I", "--max-cntlid", type=int, help="Maximum controller ID")
    p = b.cmd(
        "nvmf_delete_subsystem", "Delete a nvmf subsystem", _pick("subsystem_nqn:nqn", "tgt_name")
    )
    p.add_argument("subsystem_nqn", help="subsystem nqn to be deleted")
    _tgt(p)

    def listener(a: argparse.Namespace) -> dict[str, Any]:
        la = _clean(
            {"trtype": a.trtype, "traddr": a.traddr, "trsvcid": a.trsvcid, "adrfam": a.adrfam}
        )
        return _clean({"nqn": a.nqn, "listen_address": la, "tgt_name": a.tgt_name})

    for name, verb in (
        ("nvmf_subsystem_add_listener", "Add a listener to"),
        ("nvmf_subsystem_remove_listener", "Remove a listener from"),
    ):
        p = b.cmd(name, f"{verb} an NVMe-oF subsystem", listener)
        p.add_argument("nqn", help="NVMe-oF subsystem NQN ('discovery' for the discovery NQN)")
        p.add_argument("-t", "--trtype", required=True, help="NVMe-oF transport type: e.g., tcp")
        p.add_argument(
            "-a", "--traddr", required=True, help="NVMe-oF transport address: e.g., an ip address"
        )
        _tgt(p, "-p")
        p.add_argument("-f", "--adrfam", help="NVMe-oF transport adrfam: e.g., ipv4, ipv6")
        p.add_argument("-s", "--trsvcid", help="NVMe-oF transport service id: e.g., a port number")

    def add_ns(a: argparse.Namespace) -> dict[str, Any]:
        ns = _clean(
            {
                "bdev_name": a.bdev_name,
                "ptpl_file": a.ptpl_file,
                "nsid": a.nsid,
                "nguid": a.nguid,
                "eui64": a.eui64,
                "uuid": a.uuid,
                "anagrpid": a.anagrpid,
            }
        )
        return _clean({"nqn": a.nqn, "namespace": ns, "tgt_name": a.tgt_name})

    p = b.cmd("nvmf_subsystem_add_ns", "Add a namespace to an NVMe-oF subsystem", add_ns, OUT_JSON)
    p.add_argument("nqn", help="NVMe-oF subsystem NQN")
    p.add_argument("bdev_name", help="The name of the bdev that will back this namespace")
    _tgt(p)
    p.add_argument(
        "-p", "--ptpl-file", help="The persistent reservation storage location (optional)"
    )
    p.add_argument("-n", "--nsid", type=int, help="The requested NSID (optional)")
    p.add_argument("-g", "--nguid", help="Namespace globally unique identifier (optional)")
    p.add_argument("-e", "--eui64", help="Namespace EUI-64 identifier (optional)")
    p.add_argument("-u", "--uuid", help="Namespace UUID (optional)")
    p.add_argument("-a", "--anagrpid", type=int, help="ANA group ID (optional)")
    p = b.cmd(
        "nvmf_subsystem_remove_ns",
        "Remove a namespace from an NVMe-oF subsystem",
        _pick("nqn", "nsid", "tgt_name"),
    )
    p.add_argument("nqn", help="NVMe-oF subsystem NQN")
    p.add_argument("nsid", type=int, help="The requested NSID")
    _tgt(p)
    for name, verb in (
        ("nvmf_subsystem_add_host", "Add a host to"),
        ("nvmf_subsystem_remove_host", "Remove a host from"),
    ):
        p = b.cmd(name, f"{verb} an NVMe-oF subsystem", _pick("nqn", "host", "tgt_name"))
        p.add_argument("nqn", help="NVMe-oF subsystem NQN")
        p.add_argument("host", help="Host NQN")
        _tgt(p)

    def allow_any(a: argparse.Namespace) -> dict[str, Any]:
        return _clean({"nqn": a.nqn, "tgt_name": a.tgt_name}) | {"allow_any_host": not a.disable}

    p = b.cmd(
        "nvmf_subsystem_allow_any_host", "Allow any host to connect to the subsystem", allow_any
    )
    p.add_argument("nqn", help="NVMe-oF subsystem NQN")
    p.add_argument("-e", "--enable", action="store_true", help="Enable allowing any host")
    p.add_argument("-d", "--disable", action="store_true", help="Disable allowing any host")
    _tgt(p)
    for name, what in (
        ("nvmf_subsystem_get_controllers", "controllers"),
        ("nvmf_subsystem_get_qpairs", "queue pairs"),
        ("nvmf_subsystem_get_listeners", "listeners"),
    ):
        p = b.cmd(
            name, f"Display {what} of an NVMe-oF subsystem", _pick("nqn", "tgt_name"), OUT_DICT
        )
        p.add_argument("nqn", help="NVMe-oF subsystem NQN")
        _tgt(p)
    p = b.cmd(
        "nvmf_get_stats",
        "Display current statistics for NVMf subsystem",
        _pick("tgt_name"),
        OUT_DICT,
    )
    _tgt(p)


def _chap_flags(p: argparse.ArgumentParser, group_default: int | None = None) -> None:
    p.add_argument(
        "-g", "--chap-group", type=int, default=group_default, help="Authentication group ID"
    )
    p.add_argument(
        "-d", "--disable-chap", action="store_true", help="CHAP authentication should be disabled"
    )
    p.add_argument(
        "-r", "--require-chap", action="store_true", help="CHAP authentication should be required"
    )
    p.add_argument(
        "-m", "--mutual-chap", action="store_true", help="CHAP authentication should be mutual"
    )


_CHAP = ("chap_group", "disable_chap", "require_chap", "mutual_chap")


def _iscsi_portal_group(b: _Builder, name: str) -> None:
    def params(a: argparse.Namespace) -> dict[str, Any]:
        return _clean(
            {"tag": a.tag, "portals": _portals(a.portal_list), "private": a.private, "wait": a.wait}
        )

    p = b.cmd(name, "Add a portal group", params)
    p.add_argument("tag", type=int, help="Portal group tag (unique, integer > 0)")
    p.add_argument("portal_list", help="Whitespace-separated list of portals in host:port format")
    p.add_argument(
        "-p",
        "--private",
        action="store_true",
        help="Private portal group (not returned by discovery)",
    )
    p.add_argument(
        "-w",
        "--wait",
        action="store_true",
        help="Do not listen on portals until started explicitly",
    )


def _iscsi_initiator_group(b: _Builder, name: str) -> None:
    def params(a: argparse.Namespace) -> dict[str, Any]:
        return {
            "tag": a.tag,
            "initiators": _words(a.initiator_list),
            "netmasks": _words(a.netmask_list),
        }

    p = b.cmd(name, "Add an initiator group", params)
    p.add_argument("tag", type=int, help="Initiator group tag (unique, integer > 0)")
    p.add_argument(
        "initiator_list", help="Whitespace-separated initiator names or IP addresses, e.g. 'ANY'"
    )
    p.add_argument(
        "netmask_list", help="Whitespace-separated initiator netmasks, e.g. '127.0.0.1/32'"
    )


def _iscsi_ig_initiators(b: _Builder, name: str, help: str) -> None:
    def params(a: argparse.Namespace) -> dict[str, Any]:
        return _clean(
            {
                "tag": a.tag,
                "initiators": _words(a.initiator_list),
                "netmasks": _words(a.netmask_list),
            }
        )

    p = b.cmd(name, help, params)
    p.add_argument("tag", type=int, help="Initiator group tag (unique, integer > 0)")
    p.add_argument(
        "-n", dest="initiator_list", help="Whitespace-separated initiator names or IP addresses"
    )
    p.add_argument("-m", dest="netmask_list", help="Whitespace-separated initiator netmasks")


def _iscsi_target_node(b: _Builder, name: str) -> None:
    def params(a: argparse.Namespace) -> dict[str, Any]:
        d = {
            "name": a.name,
            "alias_name": a.alias_name,
            "pg_ig_maps": _pg_ig_maps(a.pg_ig_mappings),
            "luns": _luns(a.bdev_name_id_pairs),
            "queue_depth": a.queue_depth,
        }
        return d | _pick(*_CHAP, "header_digest", "data_digest")(a)

    p = b.cmd(name, "Add a target node", params)
    p.add_argument("name", help="Target node name (ASCII)")
    p.add_argument("alias_name", help="Target node alias name (ASCII)")
    p.add_argument(
        "bdev_name_id_pairs",
        help="Whitespace-separated <bdev name:LUN ID> pairs, e.g. 'Malloc0:0 Malloc1:1'",
    )
    p.add_argument(
        "pg_ig_mappings",
        help="Whitespace-separated <portal group tag:initiator group tag> maps, e.g. '1:2'",
    )
    p.add_argument("queue_depth", type=int, help="Desired target queue depth")
    _chap_flags(p)
    p.add_argument(
        "-H", "--header-digest", action="store_true", help="Header Digest should be required"
    )
    p.add_argument(
        "-D", "--data-digest", action="store_true", help="Data Digest should be required"
    )


def _iscsi_pg_ig_maps(b: _Builder, name: str, help: str) -> None:
    p = b.cmd(name, help, lambda a: {"name": a.name, "pg_ig_maps": _pg_ig_maps(a.pg_ig_mappings)})
    p.add_argument("name", help="Target node name (ASCII)")
    p.add_argument(
        "pg_ig_mappings", help="Whitespace-separated <pg tag:ig tag> maps, e.g. '1:1 2:2'"
    )


def _iscsi(b: _Builder) -> None:
    for new, old in (("iscsi_create_portal_group", "add_portal_group"),):
        _iscsi_portal_group(b, new)
        _iscsi_portal_group(b, old)
    for name in ("iscsi_delete_portal_group", "delete_portal_group"):
        p = b.cmd(name, "Delete a portal group", _pick("tag"))
        p.add_argument("tag", type=int, help="Portal group tag (unique, integer > 0)")
    for name in ("iscsi_get_portal_groups", "get_portal_groups"):
        b.cmd(name, "Display current portal group configuration", out=OUT_DICT)
    for name in ("iscsi_create_initiator_group", "add_initiator_group"):
        _iscsi_initiator_group(b, name)
    for name in ("iscsi_initiator_group_add_initiators", "add_initiators_to_initiator_group"):
        _iscsi_ig_initiators(b, name, "Add initiators to an existing initiator group")
    for name in (
        "iscsi_initiator_group_remove_initiators",
        "delete_initiators_from_initiator_group",
    ):
        _iscsi_ig_initiators(b, name, "Delete initiators from an existing initiator group")
    for name in ("iscsi_delete_initiator_group", "delete_initiator_group"):
        p = b.cmd(name, "Delete an initiator group", _pick("tag"))
        p.add_argument("tag", type=int, help="Initiator group tag (unique, integer > 0)")
    for name in ("iscsi_get_initiator_groups", "get_initiator_groups"):
        b.cmd(name, "Display current initiator group configuration", out=OUT_DICT)
    for name in ("iscsi_create_target_node", "construct_target_node"):
        _iscsi_target_node(b, name)
    for name in ("iscsi_delete_target_node", "delete_target_node"):
        p = b.cmd(name, "Delete a target node", _pick("target_node_name:name"))
        p.add_argument("target_node_name", help="Target node name to be deleted")
    for name in ("iscsi_target_node_add_lun", "target_node_add_lun"):
        p = b.cmd(name, "Add LUN to the target node", _pick("name", "bdev_name", "lun_id"))
        p.add_argument("name", help="Target node name (ASCII)")
        p.add_argument("bdev_name", help="bdev name")
        p.add_argument(
            "-i", dest="lun_id", type=int, help="LUN ID (integer >= 0); lowest free one if omitted"
        )
    for name in ("iscsi_target_node_add_pg_ig_maps", "add_pg_ig_maps"):
        _iscsi_pg_ig_maps(b, name, "Add PG-IG maps to the target node")
    for name in ("iscsi_target_node_remove_pg_ig_maps", "delete_pg_ig_maps"):
        _iscsi_pg_ig_maps(b, name, "Delete PG-IG maps from the target node")
    for name in ("iscsi_get_target_nodes", "get_target_nodes"):
        b.cmd(name, "Display target nodes", out=OUT_DICT)
    b.cmd("iscsi_get_connections", "Display iSCSI connections", out=OUT_DICT)
    b.cmd("iscsi_get_options", "Display iSCSI global parameters", out=OUT_DICT)

    opts = (
        "auth_file",
        "node_base",
        "nop_timeout",
        "nop_in_interval",
        *_CHAP,
        "max_sessions",
        "max_queue_depth",
        "max_connections_per_session",
        "default_time2wait",
        "default_time2retain",
        "first_burst_length",
        "immediate_data",
        "error_recovery_level",
        "allow_duplicated_isid",
        "max_large_datain_per_connection",
        "max_r2t_per_connection",
        "pdu_pool_size",
        "immediate_data_pool_size",
        "data_out_pool_size",
    )
    p = b.cmd("iscsi_set_options", "Set options of iSCSI subsystem", _pick(*opts))
    p.add_argument("-f", "--auth-file", help="Path to CHAP shared secret file")
    p.add_argument("-b", "--node-base", help="Prefix of the name of iSCSI target node")
    p.add_argument(
        "-o",
        "--nop-timeout",
        type=int,
        help="Timeout in seconds to nop-in request to the initiator",
    )
    p.add_argument(
        "-n", "--nop-in-interval", type=int, help="Time interval in secs between nop-in requests"
    )
    _chap_flags(p)
    p.add_argument("-a", "--max-sessions", type=int, help="Maximum number of sessions in the host")
    p.add_argument(
        "-q", "--max-queue-depth", type=int, help="Max number of outstanding I/Os per queue"
    )
    p.add_argument(
        "-c", "--max-connections-per-session", type=int, help="Negotiated parameter, MaxConnections"
    )
    p.add_argument(
        "-w", "--default-time2wait", type=int, help="Negotiated parameter, DefaultTime2Wait"
    )
    p.add_argument(
        "-v", "--default-time2retain", type=int, help="Negotiated parameter, DefaultTime2Retain"
    )
    p.add_argument(
        "-s", "--first-burst-length", type=int, help="Negotiated parameter, FirstBurstLength"
    )
    p.add_argument(
        "-i", "--immediate-data", action="store_true", help="Negotiated parameter, ImmediateData"
    )
    p.add_argument(
        "-l", "--error-recovery-level", type=int, help="Negotiated parameter, ErrorRecoveryLevel"
    )
    p.add_argument(
        "-p",
        "--allow-duplicated-isid",
        action="store_true",
        help="Allow duplicated initiator session ID",
    )
    p.add_argument(
        "-x",
        "--max-large-datain-per-connection",
        type=int,
        help="Max outstanding split read I/Os per connection",
    )
    p.add_argument(
        "-k", "--max-r2t-per-connection", type=int, help="Max outstanding R2Ts per connection"
    )
    p.add_argument("-u", "--pdu-pool-size", type=int, help="Number of PDUs in the pool")
    p.add_argument(
        "-j",
        "--immediate-data-pool-size",
        type=int,
        help="Number of immediate data buffers in the pool",
    )
    p.add_argument(
        "-z", "--data-out-pool-size", type=int, help="Number of data out buffers in the pool"
    )
    p = b.cmd(
        "iscsi_set_discovery_auth", "Set CHAP authentication for discovery session", _pick(*_CHAP)
    )
    _chap_flags(p)
    p = b.cmd(
        "iscsi_target_node_set_auth",
        "Set CHAP authentication for the target node",
        _pick("name", *_CHAP),
    )
    p.add_argument("name", help="Target node name (ASCII)")
    _chap_flags(p)

    def auth_group(a: argparse.Namespace) -> dict[str, Any]:
        secrets = None
        if a.secrets:
            secrets = [dict(u.split(":", 1) for u in s.split()) for s in a.secrets.split(",")]
        return _clean({"tag": a.tag, "secrets": secrets})

    p = b.cmd(
        "iscsi_create_auth_group", "Create authentication group for CHAP authentication", auth_group
    )
    p.add_argument("tag", type=int, help="Authentication group tag (unique, integer > 0)")
    p.add_argument(
        "-c", "--secrets", help="Comma-separated 'user:u1 secret:s1 muser:mu1 msecret:ms1' entries"
    )
    p = b.cmd("iscsi_delete_auth_group", "Delete an authentication group", _pick("tag"))
    p.add_argument("tag", type=int, help="Authentication group tag")
    p = b.cmd(
        "iscsi_auth_group_add_secret",
        "Add a secret to an authentication group",
        _pick("tag", "user", "secret", "muser", "msecret"),
    )
    p.add_argument("tag", type=int, help="Authentication group tag")
    p.add_argument("-u", "--user", required=True, help="User name for one-way CHAP authentication")
    p.add_argument("-s", "--secret", required=True, help="Secret for one-way CHAP authentication")
    p.add_argument("-m", "--muser", help="User name for mutual CHAP authentication")
    p.add_argument("-r", "--msecret", help="Secret for mutual CHAP authentication")
    p = b.cmd(
        "iscsi_auth_group_remove_secret",
        "Remove a secret from an authentication group",
        _pick("tag", "user"),
    )
    p.add_argument("tag", type=int, help="Authentication group tag")
    p.add_argument("-u", "--user", required=True, help="User name for one-way CHAP authentication")
    b.cmd(
        "iscsi_get_auth_groups", "Display current authentication group configuration", out=OUT_DICT
    )


def build_method_parser(prog: str = "blockfabric rpc") -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser of ``METHOD [ARGS]`` and the list of method names it knows."""
    parser = argparse.ArgumentParser(prog=prog, add_help=True)
    sub = parser.add_subparsers(dest="called_rpc_name", metavar="METHOD")
    b = _Builder(sub)
    _framework(b)
    _bdev(b)
    _nvmf(b)
    _iscsi(b)
    return parser, b.names


class CliError(Exception):
    pass


def _fix_underscores(argv: list[str]) -> list[str]:
    # rpc.py accepts --tgt_name for --tgt-name (older SPDK spelled options both ways)
    return [a.replace("_", "-") if a.startswith("--") and "=" not in a else a for a in argv]


def parse_method_args(argv: list[str]) -> tuple[str, Any, str]:
    """``METHOD [ARGS]`` -> (method, params, output mode); params None = none sent."""
    if not argv:
        raise CliError("no METHOD given (blockfabric rpc -h lists them)")
    parser, names = build_method_parser()
    method = argv[0]
    rest = _fix_underscores(argv[1:])
    if method not in names:
        gp = argparse.ArgumentParser(prog=f"blockfabric rpc {method}")
        gp.add_argument("--params", dest="params_json", metavar="JSON")
        ga = gp.parse_args(rest)
        params = _json_params(ga.params_json) if ga.params_json is not None else None
        return method, params, OUT_DICT
    a = parser.parse_args([method, *rest])
    params = a.to_params(a)
    if a.params_json is not None:
        extra = _json_params(a.params_json)
        params = (
            {**params, **extra} if isinstance(extra, dict) and isinstance(params, dict) else extra
        )
    if isinstance(params, dict) and not params:
        params = None  # rpc.py leaves "params" out when empty
    out = a.out
    if out == "config":
        out = f"config:{a.indent}"
    return a.rpc_method, params, out


def _json_params(text: str) -> Any:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(
            f"--params: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from e
    if not isinstance(v, dict | list):
        raise CliError("--params must be a JSON object or array")
    return v


def format_result(result: Any, out: str) -> str | None:
    if out == OUT_NONE:
        return None
    if out.startswith("config:"):
        indent = int(out.split(":", 1)[1])
        return json.dumps(result, indent=indent if indent >= 0 else None)
    if out == OUT_ARRAY and isinstance(result, list):
        return " ".join(shlex.quote(str(v)) for v in result)
    text = json.dumps(result, indent=2)
    if out == OUT_JSON:
        text = text.strip('"')
    return text


def format_error(method: str, params: Any, req_id: int, err: RpcClientError) -> str:
    # rpc.py's layout: the request (params plus method and req_id), then the error object
    req = (
        dict(params)
        if isinstance(params, dict)
        else ({"params": params} if params is not None else {})
    )
    req["method"] = method
    req["req_id"] = req_id
    return "\n".join(
        [
            "request:",
            json.dumps(req, indent=2),
            "Got JSON-RPC error response",
            "response:",
            json.dumps(err.to_dict(), indent=2),
        ]
    )


def _add_global_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--name",
        dest="instance",
        default=None,
        help=f"instance name (default: {DEFAULT_INSTANCE}); RPC address {default_rpc_addr()}",
    )
    g.add_argument(
        "-s",
        dest="server_addr",
        default=None,
        help="RPC address: ipc://PATH, tcp://HOST:PORT, or a unix socket path speaking SPDK's protocol",
    )
    p.add_argument(
        "-t",
        dest="timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the answer (default 60, like rpc.py)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the request and exit")
    p.add_argument("rpc_args", nargs=argparse.REMAINDER, metavar="METHOD [ARGS]")


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``blockfabric rpc`` command line; returns the exit code."""
    argv = list(args.rpc_args)
    if not argv or argv[0] in ("-h", "--help"):
        parser, _ = build_method_parser()
        parser.print_help()
        return 0 if argv else 1
    try:
        method, params, out = parse_method_args(argv)
        addr = args.server_addr or default_rpc_addr(args.instance or DEFAULT_INSTANCE)
    except (CliError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.dry_run:
        print("Request:\n" + json.dumps({"method": method, "params": params}, indent=2))
        return 0
    try:
        with RpcClient(addr, timeout=args.timeout) as c:
            try:
                result = c.call(method, params)
            except RpcClientError as e:
                print(format_error(method, params, 1, e), file=sys.stderr)
                return 1
    except (TimeoutError, RpcConnectionError, RpcClientError, OSError, ValueError) as e:
        print(str(e), file=sys.stderr)
        return 1
    text = format_result(result, out)
    if text is not None:
        print(text)
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``rpc`` to the top-level CLI; it sets ``func=run`` (run(args) -> exit code)."""
    p = subparsers.add_parser(
        "rpc",
        help="send a JSON-RPC method to a running target (SPDK rpc.py syntax)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(p)
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="blockfabric rpc",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
