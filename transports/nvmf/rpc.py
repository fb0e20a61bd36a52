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

import os
import re
import time
import uuid as uuid_mod
from dataclasses import replace
from typing import Any

from ...control import cli_forms
from ...control.context import RpcContext
from ...control.errors import INVALID_PARAMS, RpcError, invalid_params
from ...control.registry import OUT_DICT, OUT_JSON, Param, rpc_method
from . import ana, auth_config, reservation_sup  # reservation_sup registers its supervisor ops
from .nqn import DISCOVERY_NQN, validate_nqn
from .state import (
    DEFAULT_MAX_NAMESPACES,
    DEFAULT_MODEL,
    DEFAULT_SERIAL,
    MAX_CNTLID,
    MIN_CNTLID,
    NvmfState,
    new_subsystem,
)
from .transport import (
    ListenAddress,
    NvmfTransportOps,
    OptSpec,
    UnknownTransport,
    get_transport,
    loadable,
)

# options SPDK's rpc.py may send that no transport of this build takes:
# accepted, ignored (a loaded transport that declares one takes it over)
_SPDK_OTHER_TRANSPORT_OPTS = (
    Param("num_cqe", int, required=False, short="-d", help="The number of CQ entries (RDMA)"),
    Param(
        "max_srq_depth",
        int,
        required=False,
        short="-s",
        help="Max number of outstanding I/O per SRQ (RDMA)",
    ),
    Param(
        "no_srq",
        bool,
        required=False,
        short="-r",
        help="Disable per-thread shared receive queue (RDMA)",
    ),
    Param(
        "acceptor_backlog",
        int,
        required=False,
        short="-l",
        help="Pending connections allowed at one time (RDMA)",
    ),
    Param(
        "no_wr_batching",
        bool,
        required=False,
        short="-w",
        help="Disable work requests batching (RDMA)",
    ),
    Param("disable_mappable_bar0", bool, required=False, short="-M", help="(VFIO-USER)"),
    Param("disable_adaptive_irq", bool, required=False, short="-I", help="(VFIO-USER)"),
    Param("disable_shadow_doorbells", bool, required=False, short="-S", help="(VFIO-USER)"),
    "iobuf_small_cache_size",
    "iobuf_large_cache_size",
    "masked_oncs",
    "masked_fuses",
)


def _declared_options() -> tuple[dict[str, OptSpec], tuple[Param | str, ...]]:
    """The union of the options of every transport that loads here (each
    with its CLI form), and the options SPDK's rpc.py may send that none of
    them takes (accepted, ignored)."""
    opts: dict[str, OptSpec] = {}
    ignored: list[str] = []
    for ops in loadable():
        for k, o in ops.options.items():
            opts.setdefault(k, o)
        ignored += ops.ignored_options
    extra: list[Param | str] = [
        x for x in _SPDK_OTHER_TRANSPORT_OPTS if (x if isinstance(x, str) else x.name) not in opts
    ]
    named = {x if isinstance(x, str) else x.name for x in extra}
    extra += sorted(set(ignored) - set(opts) - named)
    return opts, tuple(extra)


def _opt_param(name: str, o: OptSpec) -> Param:
    return Param(
        name,
        o.type,
        required=False,
        short=o.short,
        help=o.help,
        negate=o.negate,
        spdk=o.spdk,
    )


_TRANSPORT_OPTS, _IGNORED_TRANSPORT = _declared_options()


_LISTEN_ADDRESS = Param(
    "listen_address",
    dict,
    fields=(
        Param("trtype", str, short="-t", help="NVMe-oF transport type: e.g., tcp"),
        Param("traddr", str, short="-a", help="NVMe-oF transport address: e.g., an ip address"),
        Param(
            "adrfam",
            str,
            required=False,
            short="-f",
            help="NVMe-oF transport adrfam: e.g., ipv4, ipv6",
        ),
        Param(
            "trsvcid",
            str,
            required=False,
            short="-s",
            help="NVMe-oF transport service id: e.g., a port number",
        ),
    ),
)

_NQN = Param("nqn", str, pos=0, help="NVMe-oF subsystem NQN")

_TGT_NAME = Param(
    "tgt_name",
    str,
    required=False,
    short="-t",
    help="The name of the parent NVMe-oF target (optional)",
)


def _st(ctx: RpcContext) -> NvmfState:
    if not isinstance(ctx.nvmf, NvmfState):
        raise RpcError(INVALID_PARAMS, "NVMe-oF target is not initialised")
    return ctx.nvmf


def _transport(t: str) -> NvmfTransportOps:
    """The ops of transport type ``t`` (case-insensitive) or the RPC error."""
    try:
        return get_transport(t)
    except UnknownTransport as e:
        raise invalid_params(str(e)) from None


def _trtype(t: str) -> str:
    return _transport(t).trtype


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
    Param("trtype", str, short="-t", help="Transport type (ex. TCP)"),
    replace(_TGT_NAME, short="-g"),
    *[_opt_param(k, o) for k, o in _TRANSPORT_OPTS.items()],
    ignored=_IGNORED_TRANSPORT,
)
def nvmf_create_transport(
    ctx: RpcContext, trtype: str, tgt_name: str | None = None, **opts: Any
) -> bool:
    """Create a transport (TCP, RDMA, FC) with its own option set and defaults."""
    st = _st(ctx)
    ops = _transport(trtype)
    tt = ops.trtype
    if tt in st.transports:
        raise invalid_params(f"Transport type '{tt}' already exists")
    why = ops.unavailable()
    if why is not None:
        raise invalid_params(f"Transport type '{tt}' is not available: {why}")
    # an option another transport declares: accepted and ignored, as
    # SPDK's rpc.py sends every option it was given to any transport
    mine = {k: v for k, v in opts.items() if k in ops.options}
    try:
        conf = ops.validate(mine)
    except ValueError as e:
        raise invalid_params(str(e)) from None
    st.transports[tt] = dict(conf)
    ctx.config_changed()
    return True


@rpc_method(
    "nvmf_get_transports",
    Param("trtype", str, required=False, help="Transport type (optional)"),
    _TGT_NAME,
    cli_out=OUT_DICT,
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


def _set_config_cli(args: dict[str, Any]) -> dict[str, Any]:
    """rpc.py's -i: the old spelling of -p identify_ctrlr."""
    if args.pop("passthru_identify_ctrlr", False):
        args["admin_cmd_passthru"] = {**args.get("admin_cmd_passthru", {}), "identify_ctrlr": True}
    return args


@rpc_method(
    "nvmf_set_config",
    Param(
        "discovery_filter",
        str,
        required=False,
        short="-d",
        help="Set discovery filter (only match_any)",
    ),
    Param(
        "admin_cmd_passthru",
        dict,
        required=False,
        short="-p",
        long="--passthru-admin-cmds",
        parse=cli_forms.flag_set,
        help="Comma-separated list of admin commands to be passthru (not supported)",
    ),
    Param(
        "dhchap_digests",
        list,
        required=False,
        parse=cli_forms.commas,
        help="Comma-separated list of allowed DH-HMAC-CHAP digests (sha256,sha384,sha512)",
    ),
    Param(
        "dhchap_dhgroups",
        list,
        required=False,
        parse=cli_forms.commas,
        help="Comma-separated list of allowed DH-HMAC-CHAP DH groups (null,ffdhe2048,...,ffdhe8192)",
    ),
    ignored=(
        Param("poll_groups_mask", str, required=False, short="-m", help="(no effect)"),
        "dup_host_policy",
    ),
    cli_extra=(
        Param(
            "passthru_identify_ctrlr",
            bool,
            required=False,
            short="-i",
            help="deprecated form of -p identify_ctrlr",
        ),
    ),
    cli_build=_set_config_cli,
)
def nvmf_set_config(
    ctx: RpcContext,
    discovery_filter: str | None = None,
    admin_cmd_passthru: dict[str, Any] | None = None,
    dhchap_digests: list[str] | None = None,
    dhchap_dhgroups: list[str] | None = None,
) -> bool:
    st = _st(ctx)
    # validate everything before changing anything
    digests = dhgroups = None
    if dhchap_digests is not None:
        digests = auth_config.check_names(dhchap_digests, auth_config.ALL_DIGESTS, "dhchap_digests")
    if dhchap_dhgroups is not None:
        dhgroups = auth_config.check_names(
            dhchap_dhgroups, auth_config.ALL_DHGROUPS, "dhchap_dhgroups"
        )
    if discovery_filter is not None:
        if discovery_filter != "match_any":
            raise invalid_params("parameter 'discovery_filter': only 'match_any' is supported")
        st.config["discovery_filter"] = discovery_filter
    if admin_cmd_passthru is not None:
        if any(admin_cmd_passthru.values()):
            raise invalid_params("parameter 'admin_cmd_passthru': pass-through is not supported")
        st.config["admin_cmd_passthru"] = dict(admin_cmd_passthru)
    if digests is not None:
        st.config["dhchap_digests"] = digests
    if dhgroups is not None:
        st.config["dhchap_dhgroups"] = dhgroups
    if digests is not None or dhgroups is not None:
        ctx.config_changed()  # reactors offer the new lists from the next Negotiate on
    return True


@rpc_method(
    "nvmf_set_max_subsystems",
    Param("max_subsystems", int, min=1, short="-x", help="Max number of NVMf subsystems"),
)
def nvmf_set_max_subsystems(ctx: RpcContext, max_subsystems: int) -> bool:
    _st(ctx).max_subsystems = max_subsystems
    return True


# ---------------------------------------------------------------- subsystems
@rpc_method(
    "nvmf_create_subsystem",
    Param("nqn", str, pos=0, help="Subsystem NQN (ASCII)"),
    _TGT_NAME,
    Param(
        "serial_number",
        str,
        default=DEFAULT_SERIAL,
        short="-s",
        help="Serial number, e.g. SPDK00000000000001",
    ),
    Param(
        "model_number",
        str,
        default=DEFAULT_MODEL,
        short="-d",
        help="Model number, e.g. 'SPDK Controller'",
    ),
    Param(
        "allow_any_host",
        bool,
        required=False,
        default=False,
        short="-a",
        help="Allow any host to connect",
    ),
    Param(
        "max_namespaces",
        int,
        required=False,
        min=0,
        max=0xFFFFFFFE,
        short="-m",
        help="Maximum number of namespaces allowed",
    ),
    Param(
        "ana_reporting",
        bool,
        required=False,
        default=False,
        short="-r",
        help="Enable ANA reporting feature",
    ),
    Param(
        "min_cntlid",
        int,
        default=MIN_CNTLID,
        min=MIN_CNTLID,
        max=MAX_CNTLID,
        short="-i",
        help="Minimum controller ID",
    ),
    Param(
        "max_cntlid",
        int,
        default=MAX_CNTLID,
        min=MIN_CNTLID,
        max=MAX_CNTLID,
        short="-I",
        help="Maximum controller ID",
    ),
    ignored=(
        "admin_label",
        "dmrsl",
        "wzsl",
        Param("passthrough", bool, required=False, short="-p", help="NVMe passthrough (no effect)"),
        Param("enable_nssr", bool, required=False, short="-n", help="NSSR support (no effect)"),
    ),
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


@rpc_method(
    "nvmf_delete_subsystem",
    Param("nqn", str, pos=0, metavar="subsystem_nqn", help="subsystem nqn to be deleted"),
    _TGT_NAME,
)
def nvmf_delete_subsystem(ctx: RpcContext, nqn: str, tgt_name: str | None = None) -> bool:
    st = _st(ctx)
    ss = _subsys(st, nqn)
    for li in list(ss["listeners"]):
        _release_listener(ctx, st, li)
    for h in list(ss.get("host_psks") or {}):
        _drop_host_psk(ctx, st, ss, h)
    del st.subsystems[nqn]
    auth_config.clear_subsystem(ctx, ss)
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
        "hosts": [
            {
                "nqn": h,
                **({"psk": ss["host_psks"][h]} if h in ss.get("host_psks", {}) else {}),
                **auth_config.host_params(ss, h),
            }
            for h in ss["hosts"]
        ],
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
                        # as SPDK: only when the subsystem reports ANA
                        **(
                            {"anagrpid": int(ns.get("anagrpid") or nsid)}
                            if ss.get("ana_reporting")
                            else {}
                        ),
                    }
                    for nsid, ns in sorted(ss["namespaces"].items())
                ],
            }
        )
    return d


@rpc_method(
    "nvmf_get_subsystems",
    Param("nqn", str, required=False, pos=0, help="Subsystem NQN (optional)"),
    _TGT_NAME,
    cli_out=OUT_DICT,
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
    _NQN,
    Param(
        "namespace",
        dict,
        fields=(
            Param(
                "bdev_name", str, pos=1, help="The name of the bdev that will back this namespace"
            ),
            Param(
                "ptpl_file",
                str,
                required=False,
                short="-p",
                help="The persistent reservation storage location (optional)",
            ),
            Param("nsid", int, required=False, short="-n", help="The requested NSID (optional)"),
            Param(
                "nguid",
                str,
                required=False,
                short="-g",
                help="Namespace globally unique identifier (optional)",
            ),
            Param(
                "eui64",
                str,
                required=False,
                short="-e",
                help="Namespace EUI-64 identifier (optional)",
            ),
            Param("uuid", str, required=False, short="-u", help="Namespace UUID (optional)"),
            Param("anagrpid", int, required=False, short="-a", help="ANA group ID (optional)"),
            Param(
                "no_auto_visible",
                bool,
                required=False,
                short="-i",
                help="Do not auto make namespace visible to controllers (optional)",
            ),
            Param(
                "hide_metadata",
                bool,
                required=False,
                short="-N",
                help="Enable hide_metadata option to the bdev (optional)",
            ),
        ),
    ),
    _TGT_NAME,
    ignored=("no_auto_visible",),
    cli_out=OUT_JSON,
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
    anagrpid = _anagrpid(ss, namespace.get("anagrpid") or nsid, "namespace.anagrpid")
    ss["namespaces"][nsid] = {
        "nsid": nsid,
        "bdev_name": bdev_name,
        "uuid": ns_uuid,
        "nguid": nguid,
        "eui64": eui64,
        "anagrpid": anagrpid,
    }
    ptpl = namespace.get("ptpl_file")
    if ptpl:
        if not isinstance(ptpl, str) or not os.path.isdir(os.path.dirname(os.path.abspath(ptpl))):
            del ss["namespaces"][nsid]
            raise invalid_params(f"ptpl_file {ptpl!r}: its folder does not exist")
        ss["namespaces"][nsid]["ptpl_file"] = ptpl
    reservation_sup.namespace_added(st, nqn, nsid, ss["namespaces"][nsid])
    _ana_log_changed(ss)
    ctx.config_changed()
    return nsid


def _anagrpid(ss: dict[str, Any], v: Any, name: str) -> int:
    gmax = ana.anagrpmax(int(ss["max_namespaces"]))
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= gmax:
        raise invalid_params(f"parameter '{name}' must be an ANA group ID in [1, {gmax}]")
    return v


def _ana_log_changed(ss: dict[str, Any]) -> None:
    """A namespace came or went: every listener's ANA log page changed."""
    if ss.get("ana_reporting"):
        for li in ss["listeners"]:
            ana.bump(li.setdefault("ana", ana.new_listener_ana()))


@rpc_method(
    "nvmf_subsystem_remove_ns",
    _NQN,
    Param("nsid", int, min=1, pos=1, help="The requested NSID"),
    _TGT_NAME,
)
def nvmf_subsystem_remove_ns(
    ctx: RpcContext, nqn: str, nsid: int, tgt_name: str | None = None
) -> bool:
    st = _st(ctx)
    ss = _subsys(st, nqn)
    if nsid not in ss["namespaces"]:
        raise invalid_params(f"Namespace ID {nsid} does not exist in {nqn}")
    del ss["namespaces"][nsid]
    reservation_sup.namespace_removed(st, nqn, nsid)
    _ana_log_changed(ss)
    ctx.config_changed()
    return True


# ---------------------------------------------------------------- listeners
def _listen_address(la: dict[str, Any]) -> dict[str, Any]:
    """Validate a listen_address with its transport's rules (IP transports:
    adrfam and a port; FC: WWNN/WWPN)."""
    for k in la:
        if k not in ("trtype", "traddr", "trsvcid", "adrfam", "priority"):
            raise invalid_params(f"unknown parameter 'listen_address.{k}'")
    if "trtype" not in la or not isinstance(la["trtype"], str):
        raise invalid_params("missing required parameter 'listen_address.trtype'")
    ops = _transport(la["trtype"])
    try:
        addr = ops.check_address(la)
    except ValueError as e:
        raise invalid_params(str(e)) from None
    return dict(addr.as_dict())


def _addr(li: dict[str, Any]) -> ListenAddress:
    return ListenAddress(li["trtype"], li["adrfam"], li["traddr"], li["trsvcid"])


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (
        a["traddr"] == b["traddr"] and a["trsvcid"] == b["trsvcid"] and a["trtype"] == b["trtype"]
    )


def _release_listener(ctx: RpcContext, st: NvmfState, li: dict[str, Any]) -> None:
    key = li["key"]
    n = st.listener_refs.get(key, 0) - 1
    if n <= 0:
        st.listener_refs.pop(key, None)
        try:
            _transport(li["trtype"]).stop_listen(ctx, _addr(li), key)
        except RpcError:
            pass
    else:
        st.listener_refs[key] = n


@rpc_method(
    "nvmf_subsystem_add_listener",
    replace(_NQN, help="NVMe-oF subsystem NQN ('discovery' for the discovery NQN)"),
    _LISTEN_ADDRESS,
    replace(_TGT_NAME, short="-p"),
    Param(
        "secure_channel",
        bool,
        required=False,
        default=False,
        short="-k",
        help="Immediately establish a secure channel",
    ),
    Param(
        "ana_state",
        str,
        required=False,
        short="-n",
        help="ANA state to set: optimized, non_optimized, or inaccessible",
    ),
    Param(
        "sock_impl",
        str,
        required=False,
        short="-S",
        help="The socket implementation to use for the listener (ex. posix)",
    ),
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
    if ana_state is not None:
        _ana_state_name(ss, ana_state)
    li = _listen_address(listen_address)
    tt = li["trtype"]
    if secure_channel:
        _check_secure_listener(ss, tt)
        li["secure_channel"] = True
    if tt not in st.transports:
        raise invalid_params(
            f"Unable to find transport {tt}: create it with nvmf_create_transport first"
        )
    for other in ss["listeners"]:
        if _same(other, li):
            raise invalid_params(f"Listener {li['traddr']}:{li['trsvcid']} already exists on {nqn}")
    # share the socket when another subsystem already listens there
    key = None
    for s2 in st.subsystems.values():
        for o in s2["listeners"]:
            if _same(o, li):
                if bool(o.get("secure_channel")) != secure_channel:
                    raise invalid_params(
                        f"Listener {li['traddr']}:{li['trsvcid']} is "
                        f"{'' if o.get('secure_channel') else 'not '}a secure channel "
                        f"on {s2['nqn']}: one address is TLS or plain for every subsystem"
                    )
                key = o["key"]
                li["trsvcid"] = o["trsvcid"]
    if key is None:
        try:
            key, svc = _transport(tt).listen(ctx, _addr(li))
        except ValueError as e:
            raise invalid_params(str(e)) from None
        li["trsvcid"] = svc  # e.g. the real port when 0 (ephemeral) was asked for
    li["key"] = key
    li["ana"] = ana.new_listener_ana(ana_state or "optimized")
    st.listener_refs[key] = st.listener_refs.get(key, 0) + 1
    ss["listeners"].append(li)
    st.bump_genctr()
    ctx.config_changed()
    return True


@rpc_method(
    "nvmf_subsystem_remove_listener",
    replace(_NQN, help="NVMe-oF subsystem NQN ('discovery' for the discovery NQN)"),
    _LISTEN_ADDRESS,
    replace(_TGT_NAME, short="-p"),
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
    "nvmf_subsystem_get_listeners",
    _NQN,
    _TGT_NAME,
    cli_out=OUT_DICT,
)
def nvmf_subsystem_get_listeners(
    ctx: RpcContext, nqn: str, tgt_name: str | None = None
) -> list[dict[str, Any]]:
    ss = _subsys(_st(ctx), nqn, allow_discovery=True)
    groups = sorted({int(ns.get("anagrpid") or n) for n, ns in ss["namespaces"].items()})
    out = []
    for li in ss["listeners"]:
        view = ana.ListenerAna(li.get("ana"))
        now = time.monotonic()
        out.append(
            {
                "address": _listener_out(li),
                "ana_states": [
                    {"ana_group": g, "ana_state": ana.STATE_NAMES[view.state(g, now)]}
                    for g in groups
                ],
            }
        )
    return out


def _ana_state_name(ss: dict[str, Any], name: Any) -> str:
    if not ss.get("ana_reporting"):
        raise invalid_params(f"ANA reporting is disabled on {ss['nqn']} (nvmf_create_subsystem -r)")
    if name not in ana.SETTABLE:
        raise invalid_params(
            f"parameter 'ana_state' must be one of {', '.join(ana.SETTABLE)}, not {name!r}"
        )
    return str(name)


@rpc_method(
    "nvmf_subsystem_listener_set_ana_state",
    _NQN,
    _LISTEN_ADDRESS,
    Param(
        "ana_state",
        str,
        short="-n",
        help="ANA state to set: optimized, non_optimized, or inaccessible",
    ),
    replace(_TGT_NAME, short="-p"),
    Param("anagrpid", int, required=False, short="-g", help="ANA group ID (optional)"),
    Param(
        "transition_ms",
        int,
        required=False,
        default=0,
        min=0,
        max=ana.MAX_TRANSITION_MS,
        spdk=False,
        help="report ANA Change (I/O: ANA Transition) for this long before the new "
        "state; at most ANATT (10 s); 0: at once, as SPDK",
    ),
)
def nvmf_subsystem_listener_set_ana_state(
    ctx: RpcContext,
    nqn: str,
    listen_address: dict[str, Any],
    ana_state: str,
    tgt_name: str | None = None,
    anagrpid: int | None = None,
    transition_ms: int = 0,
) -> bool:
    """The ANA state of one listener (a path) for one ANA group, or for every
    group when anagrpid is not given; the hosts connected there get the ANA
    change notice."""
    st = _st(ctx)
    ss = _subsys(st, nqn)
    name = _ana_state_name(ss, ana_state)
    grp = None if anagrpid is None else _anagrpid(ss, anagrpid, "anagrpid")
    want = _listen_address(listen_address)
    for li in ss["listeners"]:
        if _same(li, want):
            try:
                ana.set_state(
                    li.setdefault("ana", ana.new_listener_ana()), name, grp, transition_ms
                )
            except ValueError as e:
                raise invalid_params(str(e)) from None
            ctx.config_changed()
            return True
    raise invalid_params(f"Listener {want['traddr']}:{want['trsvcid']} not found on {nqn}")


# ---------------------------------------------------------------- hosts
def _check_secure_listener(ss: dict[str, Any], trtype: str) -> None:
    if trtype != "TCP":
        raise invalid_params("parameter 'secure_channel': TLS is for the TCP transport only")
    if ss["allow_any_host"]:
        raise invalid_params(
            f"{ss['nqn']} allows any host: a secure channel needs hosts with PSKs "
            "(nvmf_subsystem_allow_any_host -d first)"
        )


def _add_host_psk(ctx: RpcContext, st: NvmfState, ss: dict[str, Any], host: str, psk: str) -> None:
    """--psk NAME: derive the TLS PSK and identity for (host, subsystem) now;
    reactors get them in the snapshot (transports/tls/psk.py)."""
    from ...control.keyring import keyring_of
    from ..tls.psk import PskError, derive

    kr = keyring_of(ctx)
    try:
        entry = derive(kr.tls_psk(psk), host, ss["nqn"])
    except PskError as e:
        raise invalid_params(f"parameter 'psk': {e}") from None
    kr.acquire(psk, f"host {host} on {ss['nqn']}")
    ss.setdefault("host_psks", {})[host] = psk
    st.tls_psks[entry.identity] = entry


def _drop_host_psk(ctx: RpcContext, st: NvmfState, ss: dict[str, Any], host: str) -> None:
    from ...control.keyring import keyring_of

    name = (ss.get("host_psks") or {}).pop(host, None)
    if name is None:
        return
    keyring_of(ctx).release(name, f"host {host} on {ss['nqn']}")
    for ident in [i for i in st.tls_psks if i.endswith(f" {host} {ss['nqn']}")]:
        del st.tls_psks[ident]


@rpc_method(
    "nvmf_subsystem_add_host",
    _NQN,
    Param("host", str, pos=1, help="Host NQN"),
    _TGT_NAME,
    Param("psk", str, required=False, help="Name of the TLS PSK (keyring_file_add_key)"),
    Param("dhchap_key", str, required=False, help="DH-HMAC-CHAP key name (keyring)"),
    Param(
        "dhchap_ctrlr_key",
        str,
        required=False,
        help="DH-HMAC-CHAP controller key name (bidirectional authentication)",
    ),
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
    if host in ss["hosts"]:
        raise invalid_params(f"Host {host} is already allowed on {nqn}")
    if psk is not None:
        _add_host_psk(ctx, st, ss, host, psk)
    auth_config.set_host_keys(ctx, ss, host, dhchap_key, dhchap_ctrlr_key)
    ss["hosts"].append(host)
    st.bump_genctr()
    ctx.config_changed()
    return True


@rpc_method(
    "nvmf_subsystem_remove_host",
    _NQN,
    Param("host", str, pos=1, help="Host NQN"),
    _TGT_NAME,
    Param("timeout_ms", int, required=False, min=0, spdk=False),
)
def nvmf_subsystem_remove_host(
    ctx: RpcContext, nqn: str, host: str, tgt_name: str | None = None, timeout_ms: int | None = None
) -> bool:
    st = _st(ctx)
    ss = _subsys(st, nqn)
    if host not in ss["hosts"]:
        raise invalid_params(f"Host {host} is not allowed on {nqn}")
    ss["hosts"].remove(host)
    _drop_host_psk(ctx, st, ss, host)
    auth_config.clear_host(ctx, ss, host)
    if not ss["allow_any_host"]:
        _drop_ctrlrs(ctx, st, nqn, host)
    st.bump_genctr()
    ctx.config_changed()
    return True


@rpc_method(
    "nvmf_subsystem_set_keys",
    _NQN,
    Param("host", str, pos=1, help="Host NQN"),
    _TGT_NAME,
    Param("dhchap_key", str, required=False, help="DH-HMAC-CHAP key name"),
    Param("dhchap_ctrlr_key", str, required=False, help="DH-HMAC-CHAP controller key name"),
)
def nvmf_subsystem_set_keys(
    ctx: RpcContext,
    nqn: str,
    host: str,
    tgt_name: str | None = None,
    dhchap_key: str | None = None,
    dhchap_ctrlr_key: str | None = None,
) -> bool:
    """New DH-HMAC-CHAP keys for a host already allowed on the subsystem
    (rotation): connected queues stay, the next (re-)authentication of any of
    them uses the new keys. Without dhchap_key the host needs no
    authentication from now on."""
    st = _st(ctx)
    ss = _subsys(st, nqn)
    if host not in ss["hosts"]:
        raise invalid_params(f"Host {host} is not allowed on {nqn}")
    auth_config.set_host_keys(ctx, ss, host, dhchap_key, dhchap_ctrlr_key)
    ctx.config_changed()
    return True


def _allow_any_cli(args: dict[str, Any]) -> dict[str, Any]:
    """rpc.py's -e/-d: allow unless -d is given."""
    disable = args.pop("disable", False)
    args.pop("enable", None)
    return {**args, "allow_any_host": not disable}


@rpc_method(
    "nvmf_subsystem_allow_any_host",
    _NQN,
    Param("allow_any_host", bool, cli=False),
    _TGT_NAME,
    cli_extra=(
        Param("enable", bool, required=False, short="-e", help="Enable allowing any host"),
        Param("disable", bool, required=False, short="-d", help="Disable allowing any host"),
    ),
    cli_build=_allow_any_cli,
)
def nvmf_subsystem_allow_any_host(
    ctx: RpcContext, nqn: str, allow_any_host: bool, tgt_name: str | None = None
) -> bool:
    st = _st(ctx)
    ss = _subsys(st, nqn)
    if allow_any_host and any(li.get("secure_channel") for li in ss["listeners"]):
        raise invalid_params(
            f"{nqn} has a secure-channel listener: allowing any host would bypass its PSKs"
        )
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
    "nvmf_subsystem_get_controllers",
    _NQN,
    _TGT_NAME,
    cli_out=OUT_DICT,
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


@rpc_method(
    "nvmf_subsystem_get_qpairs",
    _NQN,
    _TGT_NAME,
    cli_out=OUT_DICT,
)
def nvmf_subsystem_get_qpairs(
    ctx: RpcContext, nqn: str, tgt_name: str | None = None
) -> list[dict[str, Any]]:
    _subsys(_st(ctx), nqn, allow_discovery=True)
    out: list[dict[str, Any]] = []
    for part in ctx.gather("nvmf.get_qpairs", {"nqn": nqn}):
        out.extend(part or [])
    return sorted(out, key=lambda q: (q["cntlid"], q["qid"]))


@rpc_method(
    "nvmf_get_stats",
    _TGT_NAME,
    cli_out=OUT_DICT,
)
def nvmf_get_stats(ctx: RpcContext, tgt_name: str | None = None) -> dict[str, Any]:
    _st(ctx)
    groups = [g for g in ctx.gather("nvmf.stats", {}) if g]
    return {"tick_rate": 1_000_000_000, "poll_groups": groups}
