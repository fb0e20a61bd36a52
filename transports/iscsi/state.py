"""Supervisor-side iSCSI configuration (the single source of truth): global
options, portal groups, initiator groups, CHAP auth groups, target nodes and
discovery auth, with SPDK's names and defaults. Reactors get `snapshot()`;
`save_config()` replays it as SPDK RPC calls."""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from ...control.errors import EBUSY, EEXIST, EINVAL, ENODEV, RpcError, invalid_params

DEFAULT_NODE_BASE = "iqn.2016-06.io.blockfabric"
MAX_LUNS = 64

DEFAULT_OPTIONS: dict[str, Any] = {
    "node_base": DEFAULT_NODE_BASE,
    "auth_file": "",
    "nop_timeout": 60,
    "nop_in_interval": 30,
    "disable_chap": False,
    "require_chap": False,
    "mutual_chap": False,
    "chap_group": 0,
    "max_sessions": 128,
    "max_connections_per_session": 2,
    "max_queue_depth": 64,
    "default_time2wait": 2,
    "default_time2retain": 20,
    "first_burst_length": 8192,
    "immediate_data": True,
    "allow_duplicated_isid": False,
    "error_recovery_level": 0,
    "max_large_datain_per_connection": 64,
    "max_r2t_per_connection": 4,
    "pdu_pool_size": 36864,
    "immediate_data_pool_size": 16384,
    "data_out_pool_size": 2048,
    # blockfabric extensions (bounds against hostile hosts)
    "login_timeout": 15,
    "data_out_timeout": 30,
    "max_connections_per_reactor": 1024,
    "max_transfer_length": 32 * 1024 * 1024,
}

# (min, max) for numeric options, as SPDK validates them (iscsi_subsystem.c)
OPTION_RANGES: dict[str, tuple[int, int]] = {
    "nop_timeout": (0, 60),
    "nop_in_interval": (0, 60),
    "max_sessions": (1, 65535),
    "max_connections_per_session": (1, 65535),
    "max_queue_depth": (1, 256),
    "default_time2wait": (0, 3600),
    "default_time2retain": (0, 3600),
    "first_burst_length": (512, 16777215),
    "error_recovery_level": (0, 0),
    "max_large_datain_per_connection": (1, 65536),
    "max_r2t_per_connection": (1, 65535),
    "chap_group": (0, 2**31 - 1),
    "pdu_pool_size": (1, 2**31 - 1),
    "immediate_data_pool_size": (1, 2**31 - 1),
    "data_out_pool_size": (1, 2**31 - 1),
    "login_timeout": (0, 3600),
    "data_out_timeout": (0, 3600),
    "max_connections_per_reactor": (1, 65536),
    "max_transfer_length": (64 * 1024, 64 * 1024 * 1024),
}


def err(code: int, msg: str) -> RpcError:
    return RpcError(code, msg)


def check_chap(disable: bool, require: bool, mutual: bool, group: int) -> None:
    if disable and require:
        raise invalid_params("disable_chap and require_chap are mutually exclusive")
    if mutual and not require:
        raise invalid_params("mutual_chap needs require_chap")
    if group < 0:
        raise invalid_params("chap_group must be >= 0")


def check_netmask(m: str) -> None:
    if m.upper() in ("ANY", "ALL"):
        return
    try:
        ipaddress.ip_network(m.replace("[", "").replace("]", ""), strict=False)
    except ValueError as e:
        raise invalid_params(f"invalid netmask {m!r}") from e


def check_initiator(n: str) -> None:
    if not n or len(n) > 223 or any(c.isspace() for c in n):
        raise invalid_params(f"invalid initiator name {n!r}")


@dataclass
class Portal:
    host: str
    port: str
    listener: str = ""

    def to_json(self) -> dict[str, str]:
        return {"host": self.host, "port": self.port}


@dataclass
class TargetNode:
    name: str
    alias_name: str
    luns: dict[int, str]
    pg_ig_maps: list[tuple[int, int]]
    queue_depth: int
    disable_chap: bool = False
    require_chap: bool = False
    mutual_chap: bool = False
    chap_group: int = 0
    header_digest: bool = False
    data_digest: bool = False
    home_reactor: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, with_home: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "alias_name": self.alias_name,
            "pg_ig_maps": [{"pg_tag": p, "ig_tag": i} for p, i in self.pg_ig_maps],
            "luns": [{"bdev_name": b, "lun_id": lid} for lid, b in sorted(self.luns.items())],
            "queue_depth": self.queue_depth,
            "disable_chap": self.disable_chap,
            "require_chap": self.require_chap,
            "mutual_chap": self.mutual_chap,
            "chap_group": self.chap_group,
            "header_digest": self.header_digest,
            "data_digest": self.data_digest,
        }
        if with_home:
            d["home_reactor"] = self.home_reactor
        return d


class IscsiState:
    def __init__(self, num_reactors: int = 1) -> None:
        self.num_reactors = max(1, num_reactors)
        self.options: dict[str, Any] = dict(DEFAULT_OPTIONS)
        self.options_set = False
        self.portal_groups: dict[
            int, dict[str, Any]
        ] = {}  # tag -> {"portals": [Portal], "private": bool}
        self.initiator_groups: dict[int, dict[str, list[str]]] = {}
        self.auth_groups: dict[int, list[dict[str, str]]] = {}
        self.target_nodes: dict[str, TargetNode] = {}
        self._rr = 0

    # ---------------------------------------------------------------- options
    def set_options(self, **opts: Any) -> None:
        for k, v in opts.items():
            if v is None:
                continue
            if k not in DEFAULT_OPTIONS:
                raise invalid_params(f"unknown option '{k}'")
            rng = OPTION_RANGES.get(k)
            if rng is not None and not rng[0] <= v <= rng[1]:
                if k == "error_recovery_level":
                    raise invalid_params("error_recovery_level: only 0 is supported")
                raise invalid_params(f"{k} must be in [{rng[0]}, {rng[1]}], got {v}")
        merged = {**self.options, **{k: v for k, v in opts.items() if v is not None}}
        check_chap(
            merged["disable_chap"],
            merged["require_chap"],
            merged["mutual_chap"],
            merged["chap_group"],
        )
        if merged["nop_in_interval"] > merged["nop_timeout"] and merged["nop_timeout"]:
            pass  # SPDK allows it; pings are just rarer than the timeout
        self.options = merged
        self.options_set = True

    def get_options(self) -> dict[str, Any]:
        return dict(self.options)

    def set_discovery_auth(
        self, disable_chap: bool, require_chap: bool, mutual_chap: bool, chap_group: int
    ) -> None:
        check_chap(disable_chap, require_chap, mutual_chap, chap_group)
        self.options.update(
            disable_chap=disable_chap,
            require_chap=require_chap,
            mutual_chap=mutual_chap,
            chap_group=chap_group,
        )

    # ----------------------------------------------------------- portal groups
    def add_portal_group(self, tag: int, portals: list[Portal], private: bool = False) -> None:
        if tag in self.portal_groups:
            raise err(EEXIST, f"portal group {tag} already exists")
        if not portals:
            raise invalid_params("portals must not be empty")
        for p in portals:
            for otag, pg in self.portal_groups.items():
                if any(q.host == p.host and q.port == p.port for q in pg["portals"]):
                    raise err(EEXIST, f"portal {p.host}:{p.port} already in portal group {otag}")
        self.portal_groups[tag] = {"portals": portals, "private": private}

    def delete_portal_group(self, tag: int) -> list[Portal]:
        if tag not in self.portal_groups:
            raise err(ENODEV, f"portal group {tag} not found")
        users = [
            t.name for t in self.target_nodes.values() if any(p == tag for p, _ in t.pg_ig_maps)
        ]
        if users:
            raise err(EBUSY, f"portal group {tag} is used by target node {users[0]}")
        return self.portal_groups.pop(tag)["portals"]

    def get_portal_groups(self) -> list[dict[str, Any]]:
        return [
            {"tag": tag, "portals": [p.to_json() for p in pg["portals"]], "private": pg["private"]}
            for tag, pg in sorted(self.portal_groups.items())
        ]

    # -------------------------------------------------------- initiator groups
    def add_initiator_group(self, tag: int, initiators: list[str], netmasks: list[str]) -> None:
        if tag in self.initiator_groups:
            raise err(EEXIST, f"initiator group {tag} already exists")
        if not initiators or not netmasks:
            raise invalid_params("initiators and netmasks must not be empty")
        for n in initiators:
            check_initiator(n.lstrip("!"))
        for m in netmasks:
            check_netmask(m)
        self.initiator_groups[tag] = {"initiators": list(initiators), "netmasks": list(netmasks)}

    def _ig(self, tag: int) -> dict[str, list[str]]:
        ig = self.initiator_groups.get(tag)
        if ig is None:
            raise err(ENODEV, f"initiator group {tag} not found")
        return ig

    def ig_add(self, tag: int, initiators: list[str] | None, netmasks: list[str] | None) -> None:
        ig = self._ig(tag)
        for n in initiators or []:
            check_initiator(n.lstrip("!"))
            if n in ig["initiators"]:
                raise err(EEXIST, f"initiator {n} already in group {tag}")
        for m in netmasks or []:
            check_netmask(m)
            if m in ig["netmasks"]:
                raise err(EEXIST, f"netmask {m} already in group {tag}")
        ig["initiators"] += list(initiators or [])
        ig["netmasks"] += list(netmasks or [])

    def ig_remove(self, tag: int, initiators: list[str] | None, netmasks: list[str] | None) -> None:
        ig = self._ig(tag)
        for n in initiators or []:
            if n not in ig["initiators"]:
                raise err(ENODEV, f"initiator {n} not in group {tag}")
        for m in netmasks or []:
            if m not in ig["netmasks"]:
                raise err(ENODEV, f"netmask {m} not in group {tag}")
        ig["initiators"] = [n for n in ig["initiators"] if n not in (initiators or [])]
        ig["netmasks"] = [m for m in ig["netmasks"] if m not in (netmasks or [])]

    def delete_initiator_group(self, tag: int) -> None:
        self._ig(tag)
        users = [
            t.name for t in self.target_nodes.values() if any(i == tag for _, i in t.pg_ig_maps)
        ]
        if users:
            raise err(EBUSY, f"initiator group {tag} is used by target node {users[0]}")
        del self.initiator_groups[tag]

    def get_initiator_groups(self) -> list[dict[str, Any]]:
        return [
            {"tag": tag, "initiators": list(ig["initiators"]), "netmasks": list(ig["netmasks"])}
            for tag, ig in sorted(self.initiator_groups.items())
        ]

    # ------------------------------------------------------------- auth groups
    def add_auth_group(self, tag: int, secrets: list[dict[str, Any]] | None) -> None:
        if tag <= 0:
            raise invalid_params("auth group tag must be > 0")
        if tag in self.auth_groups:
            raise err(EEXIST, f"auth group {tag} already exists")
        self.auth_groups[tag] = []
        try:
            for s in secrets or []:
                if not isinstance(s, dict):
                    raise invalid_params("each secret must be an object")
                unknown = set(s) - {"user", "secret", "muser", "msecret"}
                if unknown:
                    raise invalid_params(f"unknown secret field '{sorted(unknown)[0]}'")
                self.add_secret(
                    tag, s.get("user"), s.get("secret"), s.get("muser"), s.get("msecret")
                )
        except RpcError:
            del self.auth_groups[tag]
            raise

    def _ag(self, tag: int) -> list[dict[str, str]]:
        ag = self.auth_groups.get(tag)
        if ag is None:
            raise err(ENODEV, f"auth group {tag} not found")
        return ag

    def add_secret(
        self, tag: int, user: Any, secret: Any, muser: Any = None, msecret: Any = None
    ) -> None:
        ag = self._ag(tag)
        for n, v in (("user", user), ("secret", secret)):
            if not isinstance(v, str) or not v:
                raise invalid_params(f"secret '{n}' is required")
            if len(v) > 255:
                raise invalid_params(f"secret '{n}' is longer than 255 characters")
        if (muser is None) != (msecret is None) or (
            muser is not None and (not muser or not msecret)
        ):
            raise invalid_params("muser and msecret must be given together")
        if any(s["user"] == user for s in ag):
            raise err(EEXIST, f"user {user} already in auth group {tag}")
        entry = {"user": user, "secret": secret}
        if muser:
            entry.update(muser=muser, msecret=msecret)
        ag.append(entry)

    def remove_secret(self, tag: int, user: str) -> None:
        ag = self._ag(tag)
        for i, s in enumerate(ag):
            if s["user"] == user:
                del ag[i]
                return
        raise err(ENODEV, f"user {user} not in auth group {tag}")

    def delete_auth_group(self, tag: int) -> None:
        self._ag(tag)
        del self.auth_groups[tag]

    def get_auth_groups(self) -> list[dict[str, Any]]:
        return [
            {"tag": t, "secrets": [dict(s) for s in ag]}
            for t, ag in sorted(self.auth_groups.items())
        ]

    # ------------------------------------------------------------ target nodes
    def full_name(self, name: str) -> str:
        low = name.lower()
        if low.startswith(("iqn.", "eui.", "naa.")):
            return name
        return f"{self.options['node_base']}:{name}"

    def node(self, name: str) -> TargetNode:
        t = self.target_nodes.get(self.full_name(name))
        if t is None:
            raise err(ENODEV, f"target node {name} not found")
        return t

    def _check_maps(self, maps: list[tuple[int, int]]) -> None:
        for p, i in maps:
            if p not in self.portal_groups:
                raise err(ENODEV, f"portal group {p} not found")
            if i not in self.initiator_groups:
                raise err(ENODEV, f"initiator group {i} not found")

    def create_target_node(
        self,
        name: str,
        alias_name: str,
        luns: dict[int, str],
        pg_ig_maps: list[tuple[int, int]],
        queue_depth: int,
        disable_chap: bool = False,
        require_chap: bool = False,
        mutual_chap: bool = False,
        chap_group: int = 0,
        header_digest: bool = False,
        data_digest: bool = False,
    ) -> TargetNode:
        full = self.full_name(name)
        if len(full) > 223:
            raise invalid_params("target name is longer than 223 bytes")
        if any(c.isspace() for c in full):
            raise invalid_params(f"invalid target name {full!r}")
        if full in self.target_nodes:
            raise err(EEXIST, f"target node {full} already exists")
        if not luns:
            raise invalid_params("luns must not be empty")
        for lid in luns:
            if not 0 <= lid < MAX_LUNS:
                raise invalid_params(f"lun_id {lid} out of range [0, {MAX_LUNS - 1}]")
        self._check_maps(pg_ig_maps)
        check_chap(disable_chap, require_chap, mutual_chap, chap_group)
        if chap_group and chap_group not in self.auth_groups:
            raise err(ENODEV, f"auth group {chap_group} not found")
        if queue_depth < 1:
            raise invalid_params("queue_depth must be >= 1")
        home = self._rr % self.num_reactors
        self._rr += 1
        t = TargetNode(
            full, alias_name, dict(luns), list(pg_ig_maps), queue_depth,
            disable_chap, require_chap, mutual_chap, chap_group, header_digest, data_digest, home,
        )  # fmt: skip
        self.target_nodes[full] = t
        return t

    def delete_target_node(self, name: str) -> None:
        t = self.node(name)
        del self.target_nodes[t.name]

    def add_lun(self, name: str, bdev_name: str, lun_id: int | None) -> int:
        t = self.node(name)
        if lun_id is None or lun_id < 0:
            lun_id = next((i for i in range(MAX_LUNS) if i not in t.luns), -1)
            if lun_id < 0:
                raise invalid_params(f"target node {t.name} has no free LUN id")
        if lun_id >= MAX_LUNS:
            raise invalid_params(f"lun_id {lun_id} out of range [0, {MAX_LUNS - 1}]")
        if lun_id in t.luns:
            raise err(EEXIST, f"LUN {lun_id} already exists in {t.name}")
        t.luns[lun_id] = bdev_name
        return lun_id

    def add_pg_ig_maps(self, name: str, maps: list[tuple[int, int]]) -> None:
        t = self.node(name)
        self._check_maps(maps)
        for m in maps:
            if m in t.pg_ig_maps:
                raise err(EEXIST, f"map {m[0]}:{m[1]} already exists in {t.name}")
        t.pg_ig_maps += maps

    def remove_pg_ig_maps(self, name: str, maps: list[tuple[int, int]]) -> None:
        t = self.node(name)
        for m in maps:
            if m not in t.pg_ig_maps:
                raise err(ENODEV, f"map {m[0]}:{m[1]} not found in {t.name}")
        t.pg_ig_maps = [m for m in t.pg_ig_maps if m not in maps]

    def set_target_auth(
        self, name: str, disable_chap: bool, require_chap: bool, mutual_chap: bool, chap_group: int
    ) -> None:
        t = self.node(name)
        check_chap(disable_chap, require_chap, mutual_chap, chap_group)
        if chap_group and chap_group not in self.auth_groups:
            raise err(ENODEV, f"auth group {chap_group} not found")
        t.disable_chap, t.require_chap, t.mutual_chap, t.chap_group = (
            disable_chap,
            require_chap,
            mutual_chap,
            chap_group,
        )

    def get_target_nodes(self) -> list[dict[str, Any]]:
        return [t.to_json() for t in self.target_nodes.values()]

    def on_bdev_removed(self, name: str) -> list[tuple[str, int]]:
        """Drop every LUN backed by bdev ``name`` (hot remove). Returns the
        (target, lun_id) pairs removed."""
        gone: list[tuple[str, int]] = []
        for t in self.target_nodes.values():
            for lid, b in list(t.luns.items()):
                if b == name:
                    del t.luns[lid]
                    gone.append((t.name, lid))
        return gone

    def uses_bdev(self, name: str) -> bool:
        return any(name in t.luns.values() for t in self.target_nodes.values())

    # --------------------------------------------------------------- snapshot
    def snapshot(self) -> dict[str, Any]:
        o = self.options
        return {
            "options": dict(o),
            "portal_groups": [
                {
                    "tag": tag,
                    "private": pg["private"],
                    "portals": [
                        {"host": p.host, "port": p.port, "listener": p.listener}
                        for p in pg["portals"]
                    ],
                }
                for tag, pg in sorted(self.portal_groups.items())
            ],
            "initiator_groups": self.get_initiator_groups(),
            "auth_groups": copy.deepcopy(self.get_auth_groups()),
            "discovery_auth": {
                "disable_chap": o["disable_chap"],
                "require_chap": o["require_chap"],
                "mutual_chap": o["mutual_chap"],
                "chap_group": o["chap_group"],
            },
            "target_nodes": [t.to_json(with_home=True) for t in self.target_nodes.values()],
        }

    def save_config(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"method": "iscsi_set_options", "params": self.get_options()}]
        for ag in self.get_auth_groups():
            out.append({"method": "iscsi_create_auth_group", "params": ag})
        for pg in self.get_portal_groups():
            out.append({"method": "iscsi_create_portal_group", "params": pg})
        for ig in self.get_initiator_groups():
            out.append({"method": "iscsi_create_initiator_group", "params": ig})
        for t in self.get_target_nodes():
            out.append({"method": "iscsi_create_target_node", "params": t})
        return out


__all__ = ["IscsiState", "Portal", "TargetNode", "DEFAULT_OPTIONS", "EINVAL"]
