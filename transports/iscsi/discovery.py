"""SendTargets (RFC 7143 appendix C): the targets an initiator may see and
their portals, as TargetName / TargetAddress text pairs."""

from __future__ import annotations

from .nodes import ConfigView, TargetView, ig_allows

_WILDCARDS = ("0.0.0.0", "::", "[::]", "*", "")


def _fmt_host(host: str) -> str:
    h = host.strip("[]")
    return f"[{h}]" if ":" in h else h


def _portal_addresses(
    view: ConfigView, t: TargetView, initiator: str, peer: str, local: str
) -> list[str]:
    out: list[str] = []
    for pg_tag, ig_tag in t.pg_ig_maps:
        ig = view.initiator_groups.get(ig_tag)
        pg = view.portal_groups.get(pg_tag)
        if ig is None or pg is None or not ig_allows(ig, initiator, peer):
            continue
        if pg.get("private"):
            continue  # private portal groups are for redirection only, never advertised
        for p in pg.get("portals", []):
            host = p["host"]
            if host in _WILDCARDS:
                host = local  # the address this connection arrived on
            addr = f"{_fmt_host(host)}:{p['port']},{pg_tag}"
            if addr not in out:
                out.append(addr)
    return out


def send_targets(
    view: ConfigView,
    value: str,
    initiator: str,
    peer: str,
    local: str,
    session_target: str | None = None,
) -> list[tuple[str, str]]:
    """Answer ``SendTargets=value``. In a Normal session (``session_target``
    set) only that target is reported, as RFC 7143 asks."""
    if session_target is not None:
        if value not in ("", "All") and value.lower() != session_target.lower():
            return []
        names = [session_target]
    elif value == "All":
        names = [t.name for t in view.targets.values()]
    elif value == "":
        return []
    else:
        names = [value]
    out: list[tuple[str, str]] = []
    for name in names:
        t = view.target(name)
        if t is None:
            continue
        addrs = _portal_addresses(view, t, initiator, peer, local)
        if not addrs:
            continue  # not visible to this initiator
        out.append(("TargetName", t.name))
        out.extend(("TargetAddress", a) for a in addrs)
    return out
