"""Read-only view of the iSCSI configuration snapshot (what `IscsiState.snapshot()`
produces): target lookup, the portal group a connection arrived on, and the
access rules (initiator groups: names and netmasks, mapped to portal groups)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any


@dataclass
class AuthPolicy:
    disable_chap: bool = False
    require_chap: bool = False
    mutual_chap: bool = False
    chap_group: int = 0

    def methods(self) -> list[str]:
        """AuthMethod values we accept, in preference order."""
        if self.disable_chap:
            return ["None"]
        if self.require_chap:
            return ["CHAP"]
        return ["CHAP", "None"]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AuthPolicy:
        return cls(
            bool(d.get("disable_chap", False)),
            bool(d.get("require_chap", False)),
            bool(d.get("mutual_chap", False)),
            int(d.get("chap_group", 0)),
        )


@dataclass
class TargetView:
    name: str
    alias: str
    luns: dict[int, str]
    pg_ig_maps: list[tuple[int, int]]
    queue_depth: int
    auth: AuthPolicy
    header_digest: bool
    data_digest: bool
    home_reactor: int
    raw: dict[str, Any] = field(repr=False, default_factory=dict)


def _match_name(pattern: str, name: str) -> bool:
    p = pattern.lower()
    return p in ("any", "all") or p == name.lower()


def _match_addr(mask: str, addr: str) -> bool:
    m = mask.strip()
    if m.upper() in ("ANY", "ALL"):
        return True
    m = m.replace("[", "").replace("]", "")
    a = addr.replace("[", "").replace("]", "")
    if a.startswith("::ffff:") and "." in a:
        a = a[7:]
    try:
        net = ipaddress.ip_network(m, strict=False)
        return ipaddress.ip_address(a) in net
    except ValueError:
        return False


def ig_allows(ig: dict[str, Any], initiator: str, addr: str) -> bool:
    """SPDK semantics: a '!' entry denies, otherwise any matching entry allows;
    both the name and the address must be allowed."""
    name_ok = False
    for pat in ig.get("initiators", []):
        if pat.startswith("!"):
            if _match_name(pat[1:], initiator):
                return False
        elif _match_name(pat, initiator):
            name_ok = True
    if not name_ok:
        return False
    return any(_match_addr(m, addr) for m in ig.get("netmasks", []))


class ConfigView:
    def __init__(self, snap: dict[str, Any]) -> None:
        self.snap = snap or {}
        self.options: dict[str, Any] = self.snap.get("options", {})
        self.portal_groups: dict[int, dict[str, Any]] = {
            int(pg["tag"]): pg for pg in self.snap.get("portal_groups", [])
        }
        self.initiator_groups: dict[int, dict[str, Any]] = {
            int(ig["tag"]): ig for ig in self.snap.get("initiator_groups", [])
        }
        self.auth_groups: dict[int, dict[str, Any]] = {
            int(ag["tag"]): ag for ag in self.snap.get("auth_groups", [])
        }
        self.discovery_auth = AuthPolicy.from_dict(self.snap.get("discovery_auth", {}))
        self.targets: dict[str, TargetView] = {}
        for t in self.snap.get("target_nodes", []):
            tv = TargetView(
                name=t["name"],
                alias=t.get("alias_name", "") or "",
                luns={int(x["lun_id"]): x["bdev_name"] for x in t.get("luns", [])},
                pg_ig_maps=[(int(m["pg_tag"]), int(m["ig_tag"])) for m in t.get("pg_ig_maps", [])],
                queue_depth=int(t.get("queue_depth", 64)),
                auth=AuthPolicy.from_dict(t),
                header_digest=bool(t.get("header_digest", False)),
                data_digest=bool(t.get("data_digest", False)),
                home_reactor=int(t.get("home_reactor", 0)),
                raw=t,
            )
            self.targets[tv.name.lower()] = tv

    def target(self, name: str) -> TargetView | None:
        return self.targets.get(name.lower())

    def pg_of_listener(self, listener: str) -> int | None:
        for tag, pg in self.portal_groups.items():
            for p in pg.get("portals", []):
                if p.get("listener") == listener or f"{p['host']}:{p['port']}" == listener:
                    return tag
        return None

    def may_access(self, t: TargetView, pg_tag: int | None, initiator: str, addr: str) -> bool:
        for pg, ig_tag in t.pg_ig_maps:
            if pg_tag is not None and pg != pg_tag:
                continue
            ig = self.initiator_groups.get(ig_tag)
            if ig is not None and ig_allows(ig, initiator, addr):
                return True
        return False

    def chap_secrets(self, group: int) -> list[dict[str, Any]]:
        ag = self.auth_groups.get(group)
        return list(ag.get("secrets", [])) if ag else []
