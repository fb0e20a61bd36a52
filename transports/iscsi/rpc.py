"""iSCSI JSON-RPC methods with SPDK's names, parameters and result shapes
(python/spdk/rpc/iscsi.py, lib/iscsi/iscsi_rpc.c); SPDK's pre-20.x names are
aliases. Handlers validate, mutate ``ctx.iscsi`` (an `IscsiState`), then call
``ctx.config_changed()`` so every reactor has the change when the RPC returns."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...control import cli_forms
from ...control.errors import ENODEV, RpcError, invalid_params
from ...control.registry import OUT_DICT, Param, rpc_method
from .state import IscsiState, Portal

# iscsi_initiator_group_add/remove_initiators: rpc.py's -n/-m
# the object a method names (positional, as in rpc.py)
_PG_TAG = Param("tag", int, min=1, pos=0, help="Portal group tag (unique, integer > 0)")
_IG_TAG = Param("tag", int, min=1, pos=0, help="Initiator group tag (unique, integer > 0)")
_AUTH_TAG = Param("tag", int, min=1, pos=0, help="Authentication group tag (unique, integer > 0)")
_NODE_NAME = Param("name", str, pos=0, help="Target node name (ASCII)")

# an initiator group's members: positional in iscsi_create_initiator_group,
# rpc.py's -n/-m in iscsi_initiator_group_add/remove_initiators
_INITIATORS = Param(
    "initiators",
    list,
    item=str,
    parse=cli_forms.words,
    help="Whitespace-separated list of initiator hostnames or IP addresses, e.g. 'ANY'",
)
_NETMASKS = Param(
    "netmasks",
    list,
    item=str,
    parse=cli_forms.words,
    help="Whitespace-separated list of initiator netmasks, e.g. '127.0.0.1/32'",
)
_IG_MEMBERS = (
    replace(_INITIATORS, required=False, short="-n", long=None),
    replace(_NETMASKS, required=False, short="-m", long=None),
)

_PG_IG_MAPS = Param(
    "pg_ig_maps",
    list,
    item=dict,
    pos=1,
    parse=cli_forms.pg_ig_maps,
    help="Whitespace-separated list of <pg tag:ig tag> maps, e.g. '1:1 2:2'",
)

# the CHAP settings of discovery, a target node (default: off) and the global
# options (absent: unchanged); rpc.py's -g/-d/-r/-m
_CHAP = (
    Param("chap_group", int, default=0, min=0, short="-g", help="Authentication group ID"),
    Param(
        "disable_chap",
        bool,
        default=False,
        short="-d",
        help="CHAP authentication should be disabled",
    ),
    Param(
        "require_chap",
        bool,
        default=False,
        short="-r",
        help="CHAP authentication should be required",
    ),
    Param(
        "mutual_chap", bool, default=False, short="-m", help="CHAP authentication should be mutual"
    ),
)
_CHAP_OPTIONAL = tuple(replace(p, default=None, required=False) for p in _CHAP)


def _state(ctx: Any) -> IscsiState:
    st = getattr(ctx, "iscsi", None)
    if st is None:
        raise RpcError(ENODEV, "iSCSI target is not initialized")
    return st


def _split_host(host: str) -> tuple[str, str]:
    if host.startswith("["):
        return host[1:].split("]")[0], "ipv6"
    return host, ("ipv6" if ":" in host else "ipv4")


def _portals(raw: list[Any]) -> list[Portal]:
    out: list[Portal] = []
    for i, p in enumerate(raw):
        if not isinstance(p, dict) or "host" not in p:
            raise invalid_params(
                f"parameter 'portals[{i}]' must be an object with 'host' and 'port'"
            )
        unknown = set(p) - {"host", "port"}
        if unknown:
            raise invalid_params(f"unknown parameter 'portals[{i}].{sorted(unknown)[0]}'")
        host, port = p["host"], p.get("port", "3260")
        if not isinstance(host, str) or not host:
            raise invalid_params(f"parameter 'portals[{i}].host' must be a non-empty string")
        if isinstance(port, bool) or not isinstance(port, str | int) or not str(port).isdigit():
            raise invalid_params(f"parameter 'portals[{i}].port' must be a port number")
        if not 0 < int(port) < 65536:
            raise invalid_params(f"parameter 'portals[{i}].port' out of range: {port}")
        out.append(Portal(host, str(port)))
    return out


def _maps(raw: list[Any], pname: str = "pg_ig_maps") -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or set(m) != {"pg_tag", "ig_tag"}:
            raise invalid_params(
                f"parameter '{pname}[{i}]' must be {{'pg_tag': int, 'ig_tag': int}}"
            )
        p, g = m["pg_tag"], m["ig_tag"]
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in (p, g)):
            raise invalid_params(f"parameter '{pname}[{i}]' tags must be integers >= 1")
        out.append((p, g))
    return out


def _luns(raw: list[Any]) -> dict[int, str]:
    out: dict[int, str] = {}
    for i, lun in enumerate(raw):
        if not isinstance(lun, dict) or "bdev_name" not in lun or "lun_id" not in lun:
            raise invalid_params(
                f"parameter 'luns[{i}]' must be {{'bdev_name': str, 'lun_id': int}}"
            )
        b, lid = lun["bdev_name"], lun["lun_id"]
        if not isinstance(b, str) or not isinstance(lid, int) or isinstance(lid, bool):
            raise invalid_params(f"parameter 'luns[{i}]' has the wrong types")
        if lid in out:
            raise invalid_params(f"lun_id {lid} given twice")
        out[lid] = b
    return out


def _check_bdev(ctx: Any, name: str) -> None:
    bdevs = getattr(ctx, "bdevs", None)
    if bdevs is not None and name not in bdevs:
        raise RpcError(ENODEV, f"bdev {name} not found")


# ------------------------------------------------------------------ options
@rpc_method(
    "iscsi_set_options",
    Param("auth_file", str, required=False, short="-f", help="Path to CHAP shared secret file"),
    Param(
        "node_base", str, required=False, short="-b", help="Prefix of the name of iSCSI target node"
    ),
    Param(
        "nop_timeout",
        int,
        required=False,
        short="-o",
        help="Timeout in seconds to nop-in request to the initiator",
    ),
    Param(
        "nop_in_interval",
        int,
        required=False,
        short="-n",
        help="Time interval in secs between nop-in requests",
    ),
    *_CHAP_OPTIONAL,
    Param(
        "max_sessions",
        int,
        required=False,
        short="-a",
        help="Maximum number of sessions in the host",
    ),
    Param(
        "max_queue_depth",
        int,
        required=False,
        short="-q",
        help="Max number of outstanding I/Os per queue",
    ),
    Param(
        "max_connections_per_session",
        int,
        required=False,
        short="-c",
        help="Negotiated parameter, MaxConnections",
    ),
    Param(
        "default_time2wait",
        int,
        required=False,
        short="-w",
        help="Negotiated parameter, DefaultTime2Wait",
    ),
    Param(
        "default_time2retain",
        int,
        required=False,
        short="-v",
        help="Negotiated parameter, DefaultTime2Retain",
    ),
    Param(
        "first_burst_length",
        int,
        required=False,
        short="-s",
        help="Negotiated parameter, FirstBurstLength",
    ),
    Param(
        "immediate_data",
        bool,
        required=False,
        short="-i",
        help="Negotiated parameter, ImmediateData",
    ),
    Param(
        "error_recovery_level",
        int,
        required=False,
        short="-l",
        help="Negotiated parameter, ErrorRecoveryLevel",
    ),
    Param(
        "allow_duplicated_isid",
        bool,
        required=False,
        short="-p",
        help="Allow duplicated initiator session ID",
    ),
    Param(
        "max_large_datain_per_connection",
        int,
        required=False,
        short="-x",
        help="Max outstanding split read I/Os per connection",
    ),
    Param(
        "max_r2t_per_connection",
        int,
        required=False,
        short="-k",
        help="Max outstanding R2Ts per connection",
    ),
    Param("pdu_pool_size", int, required=False, short="-u", help="Number of PDUs in the pool"),
    Param(
        "immediate_data_pool_size",
        int,
        required=False,
        short="-j",
        help="Number of immediate data buffers in the pool",
    ),
    Param(
        "data_out_pool_size",
        int,
        required=False,
        short="-z",
        help="Number of data out buffers in the pool",
    ),
    Param("login_timeout", int, required=False, spdk=False),
    Param("data_out_timeout", int, required=False, spdk=False),
    Param("max_connections_per_reactor", int, required=False, spdk=False),
    Param("max_transfer_length", int, required=False, spdk=False),
    aliases=("set_iscsi_options",),
)
def iscsi_set_options(ctx: Any, **opts: Any) -> bool:
    _state(ctx).set_options(**opts)
    ctx.config_changed()
    return True


@rpc_method("iscsi_get_options", aliases=("get_iscsi_global_params",), cli_out=OUT_DICT)
def iscsi_get_options(ctx: Any) -> dict[str, Any]:
    return _state(ctx).get_options()


@rpc_method(
    "iscsi_set_discovery_auth",
    *_CHAP,
    aliases=("set_iscsi_discovery_auth",),
)
def iscsi_set_discovery_auth(
    ctx: Any, disable_chap: bool, require_chap: bool, mutual_chap: bool, chap_group: int
) -> bool:
    st = _state(ctx)
    if chap_group and chap_group not in st.auth_groups:
        raise RpcError(ENODEV, f"auth group {chap_group} not found")
    st.set_discovery_auth(disable_chap, require_chap, mutual_chap, chap_group)
    ctx.config_changed()
    return True


# ------------------------------------------------------------ portal groups
@rpc_method(
    "iscsi_create_portal_group",
    _PG_TAG,
    Param(
        "portals",
        list,
        item=dict,
        pos=1,
        parse=cli_forms.portals,
        help="Whitespace-separated list of portals in host:port format",
    ),
    Param(
        "private",
        bool,
        default=False,
        short="-p",
        help="Private portal group (not returned by discovery)",
    ),
    Param(
        "wait",
        bool,
        default=False,
        short="-w",
        help="Do not listen on portals until started explicitly",
    ),
    aliases=("add_portal_group",),
)
def iscsi_create_portal_group(
    ctx: Any, tag: int, portals: list[Any], private: bool, wait: bool
) -> bool:
    st = _state(ctx)
    ps = _portals(portals)
    if tag in st.portal_groups:
        raise RpcError(-17, f"portal group {tag} already exists")
    opened: list[Portal] = []
    try:
        for p in ps:
            host, fam = _split_host(p.host)
            p.listener = ctx.add_listener("iscsi", host, int(p.port), fam)
            opened.append(p)
        st.add_portal_group(tag, ps, private)
    except Exception:
        for p in opened:
            ctx.remove_listener("iscsi", _split_host(p.host)[0], int(p.port))
        raise
    ctx.config_changed()
    return True


@rpc_method(
    "iscsi_delete_portal_group",
    _PG_TAG,
    aliases=("delete_portal_group",),
)
def iscsi_delete_portal_group(ctx: Any, tag: int) -> bool:
    portals = _state(ctx).delete_portal_group(tag)
    ctx.config_changed()
    for p in portals:
        ctx.remove_listener("iscsi", _split_host(p.host)[0], int(p.port))
    return True


@rpc_method("iscsi_get_portal_groups", aliases=("get_portal_groups",), cli_out=OUT_DICT)
def iscsi_get_portal_groups(ctx: Any) -> list[dict[str, Any]]:
    return _state(ctx).get_portal_groups()


# --------------------------------------------------------- initiator groups
@rpc_method(
    "iscsi_create_initiator_group",
    _IG_TAG,
    replace(_INITIATORS, pos=1),
    replace(_NETMASKS, pos=2),
    aliases=("add_initiator_group",),
)
def iscsi_create_initiator_group(
    ctx: Any, tag: int, initiators: list[str], netmasks: list[str]
) -> bool:
    _state(ctx).add_initiator_group(tag, initiators, netmasks)
    ctx.config_changed()
    return True


@rpc_method(
    "iscsi_initiator_group_add_initiators",
    _IG_TAG,
    *_IG_MEMBERS,
    aliases=("add_initiators_to_initiator_group",),
)
def iscsi_initiator_group_add_initiators(
    ctx: Any, tag: int, initiators: Any = None, netmasks: Any = None
) -> bool:
    _state(ctx).ig_add(tag, initiators, netmasks)
    ctx.config_changed()
    return True


@rpc_method(
    "iscsi_initiator_group_remove_initiators",
    _IG_TAG,
    *_IG_MEMBERS,
    aliases=("delete_initiators_from_initiator_group",),
)
def iscsi_initiator_group_remove_initiators(
    ctx: Any, tag: int, initiators: Any = None, netmasks: Any = None
) -> bool:
    _state(ctx).ig_remove(tag, initiators, netmasks)
    ctx.config_changed()
    return True


@rpc_method(
    "iscsi_delete_initiator_group",
    _IG_TAG,
    aliases=("delete_initiator_group",),
)
def iscsi_delete_initiator_group(ctx: Any, tag: int) -> bool:
    _state(ctx).delete_initiator_group(tag)
    ctx.config_changed()
    return True


@rpc_method("iscsi_get_initiator_groups", aliases=("get_initiator_groups",), cli_out=OUT_DICT)
def iscsi_get_initiator_groups(ctx: Any) -> list[dict[str, Any]]:
    return _state(ctx).get_initiator_groups()


# -------------------------------------------------------------- auth groups
@rpc_method(
    "iscsi_create_auth_group",
    _AUTH_TAG,
    Param(
        "secrets",
        list,
        item=dict,
        required=False,
        short="-c",
        parse=cli_forms.chap_secrets,
        help="Comma-separated list of CHAP secrets "
        "<user:user_name secret:chap_secret muser:mutual_user_name msecret:mutual_chap_secret>",
    ),
    aliases=("add_iscsi_auth_group",),
)
def iscsi_create_auth_group(ctx: Any, tag: int, secrets: Any = None) -> bool:
    _state(ctx).add_auth_group(tag, secrets)
    ctx.config_changed()
    return True


@rpc_method(
    "iscsi_delete_auth_group",
    _AUTH_TAG,
    aliases=("delete_iscsi_auth_group",),
)
def iscsi_delete_auth_group(ctx: Any, tag: int) -> bool:
    _state(ctx).delete_auth_group(tag)
    ctx.config_changed()
    return True


@rpc_method(
    "iscsi_auth_group_add_secret",
    _AUTH_TAG,
    Param("user", str, short="-u", help="User name for one-way CHAP authentication"),
    Param("secret", str, short="-s", help="Secret for one-way CHAP authentication"),
    Param(
        "muser", str, required=False, short="-m", help="User name for mutual CHAP authentication"
    ),
    Param("msecret", str, required=False, short="-r", help="Secret for mutual CHAP authentication"),
    aliases=("add_secret_to_iscsi_auth_group",),
)
def iscsi_auth_group_add_secret(
    ctx: Any, tag: int, user: str, secret: str, muser: Any = None, msecret: Any = None
) -> bool:
    _state(ctx).add_secret(tag, user, secret, muser, msecret)
    ctx.config_changed()
    return True


@rpc_method(
    "iscsi_auth_group_remove_secret",
    _AUTH_TAG,
    Param("user", str, short="-u", help="User name for one-way CHAP authentication"),
    aliases=("delete_secret_from_iscsi_auth_group",),
)
def iscsi_auth_group_remove_secret(ctx: Any, tag: int, user: str) -> bool:
    _state(ctx).remove_secret(tag, user)
    ctx.config_changed()
    return True


@rpc_method("iscsi_get_auth_groups", aliases=("get_iscsi_auth_groups",), cli_out=OUT_DICT)
def iscsi_get_auth_groups(ctx: Any) -> list[dict[str, Any]]:
    return _state(ctx).get_auth_groups()


# ------------------------------------------------------------- target nodes
@rpc_method(
    "iscsi_create_target_node",
    _NODE_NAME,
    Param("alias_name", str, pos=1, help="Target node alias name (ASCII)"),
    Param(
        "luns",
        list,
        item=dict,
        pos=2,
        parse=cli_forms.luns,
        help="Whitespace-separated list of <bdev name:LUN ID> pairs, e.g. 'Malloc0:0 Malloc1:1'",
    ),
    replace(_PG_IG_MAPS, pos=3),
    Param("queue_depth", int, min=1, pos=4, help="Desired target queue depth"),
    *_CHAP,
    Param(
        "header_digest", bool, default=False, short="-H", help="Header Digest should be required"
    ),
    Param("data_digest", bool, default=False, short="-D", help="Data Digest should be required"),
    aliases=("construct_target_node",),
)
def iscsi_create_target_node(
    ctx: Any,
    name: str,
    alias_name: str,
    luns: list[Any],
    pg_ig_maps: list[Any],
    queue_depth: int,
    chap_group: int,
    disable_chap: bool,
    require_chap: bool,
    mutual_chap: bool,
    header_digest: bool,
    data_digest: bool,
) -> bool:
    st = _state(ctx)
    lmap = _luns(luns)
    for b in lmap.values():
        _check_bdev(ctx, b)
    n = getattr(ctx, "num_reactors", None)
    if isinstance(n, int) and n > 0:
        st.num_reactors = n
    st.create_target_node(
        name, alias_name, lmap, _maps(pg_ig_maps), queue_depth,
        disable_chap, require_chap, mutual_chap, chap_group, header_digest, data_digest,
    )  # fmt: skip
    ctx.config_changed()
    return True


@rpc_method(
    "iscsi_delete_target_node",
    Param("name", str, pos=0, help="Target node name to be deleted"),
    aliases=("delete_target_node",),
)
def iscsi_delete_target_node(ctx: Any, name: str) -> bool:
    _state(ctx).delete_target_node(name)
    ctx.config_changed()
    return True


@rpc_method(
    "iscsi_target_node_add_lun",
    _NODE_NAME,
    Param("bdev_name", str, pos=1, help="bdev name"),
    Param(
        "lun_id",
        int,
        required=False,
        short="-i",
        long=None,
        help="LUN ID (integer >= 0); lowest free one if omitted",
    ),
    aliases=("target_node_add_lun",),
)
def iscsi_target_node_add_lun(ctx: Any, name: str, bdev_name: str, lun_id: Any = None) -> bool:
    _check_bdev(ctx, bdev_name)
    _state(ctx).add_lun(name, bdev_name, lun_id)
    ctx.config_changed()
    return True


@rpc_method(
    "iscsi_target_node_add_pg_ig_maps",
    _NODE_NAME,
    _PG_IG_MAPS,
    aliases=("add_pg_ig_maps",),
)
def iscsi_target_node_add_pg_ig_maps(ctx: Any, name: str, pg_ig_maps: list[Any]) -> bool:
    _state(ctx).add_pg_ig_maps(name, _maps(pg_ig_maps))
    ctx.config_changed()
    return True


@rpc_method(
    "iscsi_target_node_remove_pg_ig_maps",
    _NODE_NAME,
    _PG_IG_MAPS,
    aliases=("delete_pg_ig_maps",),
)
def iscsi_target_node_remove_pg_ig_maps(ctx: Any, name: str, pg_ig_maps: list[Any]) -> bool:
    _state(ctx).remove_pg_ig_maps(name, _maps(pg_ig_maps))
    ctx.config_changed()
    return True


@rpc_method(
    "iscsi_target_node_set_auth",
    _NODE_NAME,
    *_CHAP,
    aliases=("set_iscsi_target_node_auth",),
)
def iscsi_target_node_set_auth(
    ctx: Any, name: str, chap_group: int, disable_chap: bool, require_chap: bool, mutual_chap: bool
) -> bool:
    _state(ctx).set_target_auth(name, disable_chap, require_chap, mutual_chap, chap_group)
    ctx.config_changed()
    return True


@rpc_method("iscsi_get_target_nodes", aliases=("get_target_nodes",), cli_out=OUT_DICT)
def iscsi_get_target_nodes(ctx: Any) -> list[dict[str, Any]]:
    return _state(ctx).get_target_nodes()


@rpc_method("iscsi_get_connections", aliases=("get_iscsi_connections",), cli_out=OUT_DICT)
def iscsi_get_connections(ctx: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in ctx.gather("iscsi.connections", {}):
        if isinstance(part, list):
            out.extend(part)
    return out


@rpc_method("iscsi_get_stats", cli_out=OUT_DICT)
def iscsi_get_stats(ctx: Any) -> list[dict[str, Any]]:
    """blockfabric extension: per-reactor iSCSI counters of the hostile-host
    bounds: connections, refused (max_connections_per_reactor),
    login_timeouts, exceptions (contained: each closed one connection),
    cmdsn_dropped (outside the window), immediate_refused (TASK SET FULL),
    unsent_bytes (output waiting for slow readers), rejects (Reject PDUs
    sent), digest_errors (header/data digest mismatches), r2t_timeouts
    (these three: of every connection the reactor has had)."""
    out: list[dict[str, Any]] = []
    for i, part in enumerate(ctx.gather("iscsi.stats", {})):
        if isinstance(part, dict):
            out.append({"reactor": i, **part})
    return out
