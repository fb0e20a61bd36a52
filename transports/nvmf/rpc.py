"""JSON-RPC methods of the NVMe-oF target (SPDK's names, parameters and answers).

Owns: nvmf_create_transport / nvmf_get_transports, nvmf_create_subsystem /
nvmf_delete_subsystem / nvmf_get_subsystems, namespaces (add_ns/remove_ns),
listeners (add/remove/get), hosts (add/remove/allow_any_host),
nvmf_subsystem_get_controllers / get_qpairs, nvmf_get_stats, nvmf_set_config
and nvmf_set_max_subsystems. Handlers validate, mutate ``ctx.nvmf``
(state.NvmfState), then call ``ctx.config_changed()``; controllers that lose
access are torn down through "nvmf.destroy_ctrlr" broadcasts.
"""

from __future__ import annotations

import re
import uuid as uuid_mod
from typing import Any

from ...control.context import RpcContext
from ...control.errors import INVALID_PARAMS, RpcError, invalid_params
from ...control.registry import Param, rpc_method
from .nqn import DISCOVERY_NQN, validate_nqn
from .rdma_opts import RDMA_OPTS
from .rdma_opts import validate as rdma_validate
from .state import (
    DEFAULT_MAX_NAMESPACES,
    DEFAULT_MODEL,
    DEFAULT_SERIAL,
    MAX_CNTLID,
    MIN_CNTLID,
    TCP_DEFAULTS,
    NvmfState,
    new_subsystem,
)

PROTO = "nvmf-tcp"

# option -> (type, min, max)
_TCP_OPTS: dict[str, tuple[type, int | None, int | None]] = {
    "max_queue_depth": (int, 2, 65535),
    "max_io_qpairs_per_ctrlr": (int, 1, 65534),
    "in_capsule_data_size": (int, 0, 131072),
    "max_io_size": (int, 4096, 1 << 24),
    "io_unit_size": (int, 512, 1 << 24),
    "max_aq_depth": (int, 2, 4096),
    "num_shared_buffers": (int, 0, None),
    "buf_cache_size": (int, 0, 0xFFFFFFFF),
    "dif_insert_or_strip": (bool, None, None),
    "zcopy": (bool, None, None),
    "c2h_success": (bool, None, None),
    "sock_priority": (int, 0, 16),
    "abort_timeout_sec": (int, 0, None),
    "control_msg_num": (int, 1, None),
    "acceptor_poll_rate": (int, 0, None),
    "ack_timeout": (int, 0, None),
    "data_wr_pool_size": (int, 0, None),
    "disable_command_passthru": (bool, None, None),
    "kas": (int, 0, 65535),
    "min_kato": (int, 1, None),
    "connect_timeout_ms": (int, 0, 3_600_000),
    "h2c_data_timeout_ms": (int, 0, 3_600_000),
    "max_unsent_bytes": (int, 65536, 1 << 30),
    "max_connections_per_reactor": (int, 1, 1 << 20),
}
# vfio-user only options SPDK's rpc.py may send: accepted, ignored
_IGNORED_TRANSPORT = (
    "disable_mappable_bar0",
    "disable_adaptive_irq",
    "disable_shadow_doorbells",
    "iobuf_small_cache_size",
    "iobuf_large_cache_size",
    "masked_oncs",
    "masked_fuses",
)


def _st(ctx: RpcContext) -> NvmfState:
    if not isinstance(ctx.nvmf, NvmfState):
        raise RpcError(INVALID_PARAMS, "NVMe-oF target is not initialised")
    return ctx.nvmf


def _trtype(t: str) -> str:
    if t.upper() not in ("TCP", "RDMA"):
        raise invalid_params(f"Transport type '{t}' is not supported (TCP, RDMA)")
    return t.upper()


def _subsys(st: NvmfState, nqn: str, allow_discovery: bool = False) -> dict[str, Any]:
    ss = st.subsystems.get(nqn)
    if ss is None:
        raise invalid_params(f"Unable to find subsystem with NQN {nqn}")
    if ss["subtype"] == "Discovery" and not allow_discovery:
        raise invalid_params(f"Operation not permitted on the discovery subsystem {nqn}")
    return ss


def _check_nqn(nqn: str, what: str = "NQN") -> None:
    why = validate_nqn(nqn)
    if why is not None:
        raise invalid_params(f'Invalid {what} "{nqn}": {why}')


def _printable(s: str, name: str, maxlen: int) -> None:
    if len(s) > maxlen or not all(0x20 <= ord(c) <= 0x7E for c in s):
        raise invalid_params(
            f"parameter '{name}' must be at most {maxlen} printable ASCII characters"
        )


# ---------------------------------------------------------------- transports
@rpc_method(
    "nvmf_create_transport",
    Param("trtype", str),
    Param("tgt_name", str, required=False),
    *[Param(k, t, required=False) for k, (t, _lo, _hi) in _TCP_OPTS.items()],
    *[Param(k, t, required=False) for k, (t, _lo, _hi) in RDMA_OPTS.items() if k not in _TCP_OPTS],
    ignored=_IGNORED_TRANSPORT,
)
def nvmf_create_transport(
    ctx: RpcContext, trtype: str, tgt_name: str | None = None, **opts: Any
) -> bool:
    st = _st(ctx)
    tt = _trtype(trtype)
    if tt in st.transports:
        raise invalid_params(f"Transport type '{tt}' already exists")
    if tt == "RDMA":
        return _create_rdma(ctx, st, opts)
    for k, v in opts.items():
        if v is not None and k not in _TCP_OPTS:
            raise invalid_params(f"parameter '{k}' is not an option of the TCP transport")
    conf = dict(TCP_DEFAULTS)
    for k, v in opts.items():
        if v is None:
            continue
        _t, lo, hi = _TCP_OPTS[k]
        if lo is not None and v < lo or hi is not None and v > hi:
            raise invalid_params(
                f"parameter '{k}' must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}"
            )
        conf[k] = v
    if conf["in_capsule_data_size"] % 16:
        raise invalid_params("parameter 'in_capsule_data_size' must be a multiple of 16")
    if conf["max_io_size"] % 4096:
        raise invalid_params("parameter 'max_io_size' must be a multiple of 4096")
    if conf["in_capsule_data_size"] > conf["max_io_size"]:
        raise invalid_params("parameter 'in_capsule_data_size' exceeds 'max_io_size'")
    conf["trtype"] = tt
    st.transports[tt] = conf
    ctx.config_changed()
    return True


def _create_rdma(ctx: RpcContext, st: NvmfState, opts: dict[str, Any]) -> bool:
    from .rdma_verbs import pyverbs_available

    for k, v in opts.items():
        if v is not None and k not in RDMA_OPTS:
            raise invalid_params(f"parameter '{k}' is not an option of the RDMA transport")
    why = pyverbs_available()
    if why is not None:
        raise invalid_params(f"Transport type 'RDMA' is not available: {why}")
    try:
        conf = rdma_validate(opts)
    except ValueError as e:
        raise invalid_params(str(e)) from None
    st.transports["RDMA"] = conf
    ctx.config_changed()
    return True


@rpc_method(
    "nvmf_get_transports",
    Param("trtype", str, required=False),
    Param("tgt_name", str, required=False),
)
def nvmf_get_transports(
    ctx: RpcContext, trtype: str | None = None, tgt_name: str | None = None
) -> list[dict[str, Any]]:
    st = _st(ctx)
    if trtype is not None:
        tt = _trtype(trtype)
        if tt not in st.transports:
            raise invalid_params(f"Transport type '{trtype}' does not exist")
        return [dict(st.transports[tt])]
    return [dict(t) for t in st.transports.values()]


@rpc_method(
    "nvmf_set_config",
    Param("discovery_filter", str, required=False),
    Param("admin_cmd_passthru", dict, required=False),
    ignored=("poll_groups_mask", "dhchap_digests", "dhchap_dhgroups", "dup_host_policy"),
)
def nvmf_set_config(
    ctx: RpcContext,
    discovery_filter: str | None = None,
    admin_cmd_passthru: dict[str, Any] | None = None,
) -> bool:
    st = _st(ctx)
    if discovery_filter is not None:
        if discovery_filter != "match_any":
            raise invalid_params("parameter 'discovery_filter': only 'match_any' is supported")
        st.config["discovery_filter"] = discovery_filter
    if admin_cmd_passthru is not None:
        if any(admin_cmd_passthru.values()):
            raise invalid_params("parameter 'admin_cmd_passthru': pass-through is not supported")
        st.config["admin_cmd_passthru"] = dict(admin_cmd_passthru)
    return True


@rpc_method("nvmf_set_max_subsystems", Param("max_subsystems", int, min=1))
def nvmf_set_max_subsystems(ctx: RpcContext, max_subsystems: int) -> bool:
    _st(ctx).max_subsystems = max_subsystems
    return True


# ---------------------------------------------------------------- subsystems
@rpc_method(
    "nvmf_create_subsystem",
    Param("nqn", str),
    Param("tgt_name", str, required=False),
    Param("serial_number", str, default=DEFAULT_SERIAL),
    Param("model_number", str, default=DEFAULT_MODEL),
    Param("allow_any_host", bool, required=False, default=False),
    Param("max_namespaces", int, required=False, min=0, max=0xFFFFFFFE),
    Param("ana_reporting", bool, required=False, default=False),
    Param("min_cntlid", int, default=MIN_CNTLID, min=MIN_CNTLID, max=MAX_CNTLID),
    Param("max_cntlid", int, default=MAX_CNTLID, min=MIN_CNTLID, max=MAX_CNTLID),
    ignored=("admin_label", "dmrsl", "wzsl", "passthrough", "enable_nssr"),
)
def nvmf_create_subsystem(
    ctx: RpcContext,
    nqn: str,
    tgt_name: str | None = None,
    serial_number: str = DEFAULT_SERIAL,
    model_number: str = DEFAULT_MODEL,
    allow_any_host: bool = False,
    max_namespaces: int | None = None,
    ana_reporting: bool = False,
    min_cntlid: int = MIN_CNTLID,
    max_cntlid: int = MAX_CNTLID,
) -> bool:
    st = _st(ctx)
    _check_nqn(nqn)
    if nqn == DISCOVERY_NQN:
        raise invalid_params(f"NQN {nqn} is reserved for the discovery subsystem")
    if nqn in st.subsystems:
        raise invalid_params(f"Subsystem NQN {nqn} already exists")
    if len(st.subsystems) - 1 >= st.max_subsystems:
        raise invalid_params(f"Maximum number of subsystems ({st.max_subsystems}) reached")
    _printable(serial_number, "serial_number", 20)
    _printable(model_number, "model_number", 40)
    if min_cntlid > max_cntlid:
        raise invalid_params("parameter 'min_cntlid' must not exceed 'max_cntlid'")
    st.subsystems[nqn] = new_subsystem(
        nqn,
        serial_number=serial_number,
        model_number=model_number,
        max_namespaces=DEFAULT_MAX_NAMESPACES if not max_namespaces else max_namespaces,
        allow_any_host=allow_any_host,
        ana_reporting=ana_reporting,
        min_cntlid=min_cntlid,
        max_cntlid=max_cntlid,
    )
    st.bump_genctr()
    ctx.config_changed()
    return True


def _drop_ctrlrs(ctx: RpcContext, st: NvmfState, nqn: str, hostnqn: str | None = None) -> None:
    for e in st.ctrlrs_of(nqn, hostnqn):
        st.drop_ctrlr(ctx, nqn, e.cntlid)


@rpc_method("nvmf_delete_subsystem", Param("nqn", str), Param("tgt_name", str, required=False))
def nvmf_delete_subsystem(ctx: RpcContext, nqn: str, tgt_name: str | None = None) -> bool:
    st = _st(ctx)
    ss = _subsys(st, nqn)
    for li in list(ss["listeners"]):
        _release_listener(ctx, st, li)
    del st.subsystems[nqn]
    _drop_ctrlrs(ctx, st, nqn)
    st.bump_genctr()
    ctx.config_changed()
    return True


def _listener_out(li: dict[str, Any]) -> dict[str, Any]:
    return {k: li[k] for k in ("trtype", "adrfam", "traddr", "trsvcid")}


def subsystem_info(ss: dict[str, Any]) -> dict[str, Any]:
    d: dict[str, Any] = {
        "nqn": ss["nqn"],
        "subtype": ss["subtype"],
        "listen_addresses": [_listener_out(li) for li in ss["listeners"]],
        "allow_any_host": ss["allow_any_host"],
        "hosts": [{"nqn": h} for h in ss["hosts"]],
    }
    if ss["subtype"] != "Discovery":
        d.update(
            {
                "serial_number": ss["serial_number"],
                "model_number": ss["model_number"],
                "max_namespaces": ss["max_namespaces"],
                "min_cntlid": ss["min_cntlid"],
                "max_cntlid": ss["max_cntlid"],
                "namespaces": [
                    {
                        "nsid": nsid,
                        "bdev_name": ns["bdev_name"],
                        "name": ns["bdev_name"],
                        **({"nguid": ns["nguid"].upper()} if ns.get("nguid") else {}),
                        **({"eui64": ns["eui64"].upper()} if ns.get("eui64") else {}),
                        **({"uuid": ns["uuid"]} if ns.get("uuid") else {}),
                    }
                    for nsid, ns in sorted(ss["namespaces"].items())
                ],
            }
        )
    return d


@rpc_method(
    "nvmf_get_subsystems", Param("nqn", str, required=False), Param("tgt_name", str, required=False)
)
def nvmf_get_subsystems(
    ctx: RpcContext, nqn: str | None = None, tgt_name: str | None = None
) -> list[dict[str, Any]]:
    st = _st(ctx)
    if nqn is not None:
        return [subsystem_info(_subsys(st, nqn, allow_discovery=True))]
    return [subsystem_info(ss) for ss in st.subsystems.values()]


# ---------------------------------------------------------------- namespaces
_HEX = re.compile(r"[0-9a-fA-F]+\Z")


def _hex_id(v: Any, name: str, nbytes: int) -> str:
    if not isinstance(v, str):
        raise invalid_params(f"parameter 'namespace.{name}' must be a string")
    s = v.replace("-", "")
    if len(s) != 2 * nbytes or not _HEX.match(s):
        raise invalid_params(
            f"parameter 'namespace.{name}' must be {nbytes} bytes as {2 * nbytes} hex digits"
        )
    if int(s, 16) == 0:
        raise invalid_params(f"parameter 'namespace.{name}' must not be all zeros")
    return s.lower()


@rpc_method(
    "nvmf_subsystem_add_ns",
    Param("nqn", str),
    Param("namespace", dict),
    Param("tgt_name", str, required=False),
    ignored=("no_auto_visible",),
)
def nvmf_subsystem_add_ns(
    ctx: RpcContext, nqn: str, namespace: dict[str, Any], tgt_name: str | None = None
) -> int:
    st = _st(ctx)
    ss = _subsys(st, nqn)
    known = {
        "bdev_name",
        "nsid",
        "uuid",
        "nguid",
        "eui64",
        "ptpl_file",
        "anagrpid",
        "no_auto_visible",
        "hide_metadata",
    }
    for k in namespace:
        if k not in known:
            raise invalid_params(f"unknown parameter 'namespace.{k}'")
    bdev_name = namespace.get("bdev_name")
    if not isinstance(bdev_name, str) or not bdev_name:
        raise invalid_params("missing required parameter 'namespace.bdev_name'")
    bdev = ctx.bdevs.get(bdev_name)
    if bdev is None:
        raise invalid_params(f"Unable to find bdev {bdev_name}")
    nsid = namespace.get("nsid", 0)
    if not isinstance(nsid, int) or isinstance(nsid, bool) or nsid < 0 or nsid >= 0xFFFFFFFF:
        raise invalid_params("parameter 'namespace.nsid' must be an integer in [0, 0xFFFFFFFE]")
    maxn = int(ss["max_namespaces"]) or 0xFFFFFFFE
    for other in ss["namespaces"].values():
        if other["bdev_name"] == bdev_name:
            raise invalid_params(f"bdev {bdev_name} is already namespace {other['nsid']} of {nqn}")
    if nsid == 0:
        nsid = next((n for n in range(1, maxn + 1) if n not in ss["namespaces"]), 0)
        if nsid == 0:
            raise invalid_params(
                f"Subsystem {nqn} has no free namespace ID (max_namespaces {maxn})"
            )
    elif nsid in ss["namespaces"]:
        raise invalid_params(f"Namespace ID {nsid} already exists in {nqn}")
    elif nsid > maxn:
        raise invalid_params(f"Namespace ID {nsid} exceeds max_namespaces {maxn} of {nqn}")
    if "uuid" in namespace:
        try:
            ns_uuid = str(uuid_mod.UUID(str(namespace["uuid"])))
        except ValueError:
            raise invalid_params("parameter 'namespace.uuid' is not a valid UUID") from None
    else:
        ns_uuid = str(uuid_mod.UUID(bdev.uuid))
    nguid = (
        _hex_id(namespace["nguid"], "nguid", 16)
        if "nguid" in namespace
        else uuid_mod.UUID(ns_uuid).hex
    )
    eui64 = _hex_id(namespace["eui64"], "eui64", 8) if "eui64" in namespace else ""
    ss["namespaces"][nsid] = {
        "nsid": nsid,
        "bdev_name": bdev_name,
        "uuid": ns_uuid,
        "nguid": nguid,
        "eui64": eui64,
    }
    ctx.config_changed()
    return nsid


@rpc_method(
    "nvmf_subsystem_remove_ns",
    Param("nqn", str),
    Param("nsid", int, min=1),
    Param("tgt_name", str, required=False),
)
def nvmf_subsystem_remove_ns(
    ctx: RpcContext, nqn: str, nsid: int, tgt_name: str | None = None
) -> bool:
    st = _st(ctx)
    ss = _subsys(st, nqn)
    if nsid not in ss["namespaces"]:
        raise invalid_params(f"Namespace ID {nsid} does not exist in {nqn}")
    del ss["namespaces"][nsid]
    ctx.config_changed()
    return True


# ---------------------------------------------------------------- listeners
def _listen_address(la: dict[str, Any]) -> dict[str, Any]:
    for k in la:
        if k not in ("trtype", "traddr", "trsvcid", "adrfam", "priority"):
            raise invalid_params(f"unknown parameter 'listen_address.{k}'")
    if "trtype" not in la or not isinstance(la["trtype"], str):
        raise invalid_params("missing required parameter 'listen_address.trtype'")
    tt = _trtype(la["trtype"])
    traddr = la.get("traddr")
    if not isinstance(traddr, str) or not traddr:
        raise invalid_params("missing required parameter 'listen_address.traddr'")
    svc = la.get("trsvcid")
    if svc is None:
        raise invalid_params("missing required parameter 'listen_address.trsvcid'")
    try:
        port = int(str(svc))
    except ValueError:
        raise invalid_params(
            f"parameter 'listen_address.trsvcid' must be a port number, got {svc!r}"
        ) from None
    if not 0 <= port <= 65535:
        raise invalid_params(f"parameter 'listen_address.trsvcid' out of range: {port}")
    fam = str(la.get("adrfam", "IPv6" if ":" in traddr else "IPv4"))
    if fam.lower() not in ("ipv4", "ipv6"):
        raise invalid_params(f"parameter 'listen_address.adrfam' must be IPv4 or IPv6, got {fam!r}")
    fam = "IPv4" if fam.lower() == "ipv4" else "IPv6"
    return {"trtype": tt, "adrfam": fam, "traddr": traddr, "trsvcid": str(port)}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (
        a["traddr"] == b["traddr"] and a["trsvcid"] == b["trsvcid"] and a["trtype"] == b["trtype"]
    )


def _release_listener(ctx: RpcContext, st: NvmfState, li: dict[str, Any]) -> None:
    key = li["key"]
    n = st.listener_refs.get(key, 0) - 1
    if n <= 0:
        st.listener_refs.pop(key, None)
        if li["trtype"] == "RDMA":
            return  # the owning reactor drops its cm_id with the next snapshot
        try:
            ctx.remove_listener(PROTO, li["traddr"], int(li["trsvcid"]))
        except RpcError:
            pass
    else:
        st.listener_refs[key] = n


@rpc_method(
    "nvmf_subsystem_add_listener",
    Param("nqn", str),
    Param("listen_address", dict),
    Param("tgt_name", str, required=False),
    Param("secure_channel", bool, required=False, default=False),
    Param("ana_state", str, required=False),
    Param("sock_impl", str, required=False),
)
def nvmf_subsystem_add_listener(
    ctx: RpcContext,
    nqn: str,
    listen_address: dict[str, Any],
    tgt_name: str | None = None,
    secure_channel: bool = False,
    ana_state: str | None = None,
    sock_impl: str | None = None,
) -> bool:
    st = _st(ctx)
    ss = _subsys(st, nqn, allow_discovery=True)
    if secure_channel:
        raise invalid_params("parameter 'secure_channel': TLS is not supported")
    li = _listen_address(listen_address)
    if li["trtype"] not in st.transports:
        raise invalid_params(
            f"Unable to find transport {li['trtype']}: create it with nvmf_create_transport first"
        )
    for other in ss["listeners"]:
        if _same(other, li):
            raise invalid_params(f"Listener {li['traddr']}:{li['trsvcid']} already exists on {nqn}")
    # share the socket when another subsystem already listens there
    key = None
    for s2 in st.subsystems.values():
        for o in s2["listeners"]:
            if _same(o, li):
                key = o["key"]
                li["trsvcid"] = o["trsvcid"]
    if key is None and li["trtype"] == "RDMA":
        # a reactor listens with its own RDMA CM id (rdma_verbs.py); no socket here
        if li["trsvcid"] == "0":
            raise invalid_params("parameter 'listen_address.trsvcid': RDMA needs a fixed port")
        key = f"rdma:{li['traddr']}:{li['trsvcid']}"
    if key is None:
        key = ctx.add_listener(PROTO, li["traddr"], int(li["trsvcid"]), li["adrfam"].lower())
        port = key.rpartition(":")[2]
        if li["trsvcid"] == "0" and port.isdigit():
            li["trsvcid"] = port  # an ephemeral port: advertise the real one
    li["key"] = key
    st.listener_refs[key] = st.listener_refs.get(key, 0) + 1
    ss["listeners"].append(li)
    st.bump_genctr()
    ctx.config_changed()
    return True


@rpc_method(
    "nvmf_subsystem_remove_listener",
    Param("nqn", str),
    Param("listen_address", dict),
    Param("tgt_name", str, required=False),
)
def nvmf_subsystem_remove_listener(
    ctx: RpcContext, nqn: str, listen_address: dict[str, Any], tgt_name: str | None = None
) -> bool:
    st = _st(ctx)
    ss = _subsys(st, nqn, allow_discovery=True)
    li = _listen_address(listen_address)
    for other in ss["listeners"]:
        if _same(other, li):
            ss["listeners"].remove(other)
            _release_listener(ctx, st, other)
            st.bump_genctr()
            ctx.config_changed()
            return True
    raise invalid_params(f"Listener {li['traddr']}:{li['trsvcid']} not found on {nqn}")


@rpc_method(
    "nvmf_subsystem_get_listeners", Param("nqn", str), Param("tgt_name", str, required=False)
)
def nvmf_subsystem_get_listeners(
    ctx: RpcContext, nqn: str, tgt_name: str | None = None
) -> list[dict[str, Any]]:
    ss = _subsys(_st(ctx), nqn, allow_discovery=True)
    return [
        {"address": _listener_out(li), "ana_states": [{"ana_group": 1, "ana_state": "optimized"}]}
        for li in ss["listeners"]
    ]


# ---------------------------------------------------------------- hosts
@rpc_method(
    "nvmf_subsystem_add_host",
    Param("nqn", str),
    Param("host", str),
    Param("tgt_name", str, required=False),
    Param("psk", str, required=False),
    Param("dhchap_key", str, required=False),
    Param("dhchap_ctrlr_key", str, required=False),
)
def nvmf_subsystem_add_host(
    ctx: RpcContext,
    nqn: str,
    host: str,
    tgt_name: str | None = None,
    psk: str | None = None,
    dhchap_key: str | None = None,
    dhchap_ctrlr_key: str | None = None,
) -> bool:
    st = _st(ctx)
    ss = _subsys(st, nqn)
    _check_nqn(host, "host NQN")
    if psk is not None or dhchap_key is not None or dhchap_ctrlr_key is not None:
        raise invalid_params("TLS PSK and DH-HMAC-CHAP keys are not supported")
    if host in ss["hosts"]:
        raise invalid_params(f"Host {host} is already allowed on {nqn}")
    ss["hosts"].append(host)
    st.bump_genctr()
    ctx.config_changed()
    return True


@rpc_method(
    "nvmf_subsystem_remove_host",
    Param("nqn", str),
    Param("host", str),
    Param("tgt_name", str, required=False),
    Param("timeout_ms", int, required=False, min=0),
)
def nvmf_subsystem_remove_host(
    ctx: RpcContext, nqn: str, host: str, tgt_name: str | None = None, timeout_ms: int | None = None
) -> bool:
    st = _st(ctx)
    ss = _subsys(st, nqn)
    if host not in ss["hosts"]:
        raise invalid_params(f"Host {host} is not allowed on {nqn}")
    ss["hosts"].remove(host)
    if not ss["allow_any_host"]:
        _drop_ctrlrs(ctx, st, nqn, host)
    st.bump_genctr()
    ctx.config_changed()
    return True


@rpc_method(
    "nvmf_subsystem_allow_any_host",
    Param("nqn", str),
    Param("allow_any_host", bool),
    Param("tgt_name", str, required=False),
)
def nvmf_subsystem_allow_any_host(
    ctx: RpcContext, nqn: str, allow_any_host: bool, tgt_name: str | None = None
) -> bool:
    st = _st(ctx)
    ss = _subsys(st, nqn)
    ss["allow_any_host"] = allow_any_host
    if not allow_any_host:
        for e in st.ctrlrs_of(nqn):
            if e.hostnqn not in ss["hosts"]:
                st.drop_ctrlr(ctx, nqn, e.cntlid)
    st.bump_genctr()
    ctx.config_changed()
    return True


# ---------------------------------------------------------------- runtime queries
@rpc_method(
    "nvmf_subsystem_get_controllers", Param("nqn", str), Param("tgt_name", str, required=False)
)
def nvmf_subsystem_get_controllers(
    ctx: RpcContext, nqn: str, tgt_name: str | None = None
) -> list[dict[str, Any]]:
    st = _st(ctx)
    _subsys(st, nqn, allow_discovery=True)
    out = []
    for e in sorted(st.ctrlrs_of(nqn), key=lambda e: e.cntlid):
        try:
            hostid = str(uuid_mod.UUID(hex=e.hostid)) if e.hostid else ""
        except ValueError:
            hostid = e.hostid
        out.append(
            {
                "cntlid": e.cntlid,
                "hostnqn": e.hostnqn,
                "hostid": hostid,
                "num_io_qpairs": len(e.qpairs),
            }
        )
    return out


@rpc_method("nvmf_subsystem_get_qpairs", Param("nqn", str), Param("tgt_name", str, required=False))
def nvmf_subsystem_get_qpairs(
    ctx: RpcContext, nqn: str, tgt_name: str | None = None
) -> list[dict[str, Any]]:
    _subsys(_st(ctx), nqn, allow_discovery=True)
    out: list[dict[str, Any]] = []
    for part in ctx.gather("nvmf.get_qpairs", {"nqn": nqn}):
        out.extend(part or [])
    return sorted(out, key=lambda q: (q["cntlid"], q["qid"]))


@rpc_method("nvmf_get_stats", Param("tgt_name", str, required=False))
def nvmf_get_stats(ctx: RpcContext, tgt_name: str | None = None) -> dict[str, Any]:
    _st(ctx)
    groups = [g for g in ctx.gather("nvmf.stats", {}) if g]
    return {"tick_rate": 1_000_000_000, "poll_groups": groups}
