"""Who claims a bdev: a stacked bdev built on it, a write cache in front of
it, an NVMe-oF namespace or an iSCSI LUN exporting it.

``bdev_get_bdevs`` reports ``claimed: true`` (with SPDK's ``claim_type``) for
a claimed bdev, and deleting one is refused with the claimer's name
(``bdevs/rpc.py``). ``save_order`` puts every bdev after the bdevs it is
built on, so a restart from save_config creates them in dependency order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .base import Bdev


def stacked_on(b: Bdev) -> list[str]:
    """The bdevs ``b`` is built on."""
    names = getattr(b, "base_names", None)
    if callable(names):
        return list(names())
    base = getattr(b, "base_name", "")  # the write cache
    return [base] if base else []


def bdev_claimers(ctx: Any, name: str) -> list[str]:
    """Every bdev claiming ``name``, as "MODULE bdev NAME"."""
    return [f"{x.MODULE} bdev {x.name}" for x in ctx.bdevs.values() if name in stacked_on(x)]


def export_claimers(ctx: Any, name: str) -> list[str]:
    out = []
    nvmf = getattr(ctx, "nvmf", None)
    for nqn, ss in (getattr(nvmf, "subsystems", None) or {}).items():
        for nsid, ns in sorted(ss.get("namespaces", {}).items()):
            if ns.get("bdev_name") == name:
                out.append(f"NVMe-oF subsystem {nqn} namespace {nsid}")
    iscsi = getattr(ctx, "iscsi", None)
    for t in (getattr(iscsi, "target_nodes", None) or {}).values():
        for lid, b in sorted(t.luns.items()):
            if b == name:
                out.append(f"iSCSI target node {t.name} LUN {lid}")
    return out


def claimers(ctx: Any, name: str) -> list[str]:
    return bdev_claimers(ctx, name) + export_claimers(ctx, name)


def save_order(bdevs: Iterable[Bdev]) -> list[Bdev]:
    """Bases before what is built on them (stable otherwise)."""
    todo = list(bdevs)
    by_name = {b.name: b for b in todo}
    done: set[str] = set()
    out: list[Bdev] = []

    def visit(b: Bdev, path: set[str]) -> None:
        if b.name in done or b.name in path:
            return
        path.add(b.name)
        for n in stacked_on(b):
            if n in by_name:
                visit(by_name[n], path)
        done.add(b.name)
        out.append(b)

    for b in todo:
        visit(b, set())
    return out
