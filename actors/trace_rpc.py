"""Tracepoint RPCs with SPDK's names and shapes (lib/trace/trace_rpc.c):
``trace_enable_tpoint_group``, ``trace_disable_tpoint_group``,
``trace_get_tpoint_group_mask``, ``trace_get_info``.

The group mask is one word in the trace segment's header (shm/trace.py): the
RPC writes it, then asks every reactor to reload it (``framework.trace_mask``)
and answers once all did, so when it returns every reactor traces (or stops
tracing) the group. A reactor that is restarting meanwhile reads the word
when it attaches its ring.
"""

from __future__ import annotations

from typing import Any

from ..control.errors import INTERNAL_ERROR, RpcError, invalid_params
from ..control.registry import OUT_DICT, Param, rpc_method
from ..shm import trace as tr


def _seg(ctx: Any) -> Any:
    seg = getattr(ctx, "trace_seg", None)
    if seg is None or seg.closed:
        raise RpcError(INTERNAL_ERROR, "this instance has no trace segment")
    return seg


def _set(ctx: Any, mask: int) -> None:
    seg = _seg(ctx)
    tr.set_mask(seg.buf, mask)
    tr.TRACE.reload()  # the supervisor's own ring (RPC tracepoints)
    gather = getattr(ctx, "gather", None)
    if gather is not None:
        gather("framework.trace_mask", {})


def _mask_of(name: str) -> int:
    try:
        return tr.group_mask(name)
    except ValueError as e:
        raise invalid_params(str(e)) from None


_NAME_HELP = (
    'trace group name we want to enable in tpoint_group_mask. (for example "bdev" for bdev '
    'trace group, "all" for all trace groups).'
)


@rpc_method(
    "trace_enable_tpoint_group",
    Param("name", str, pos=0, help=_NAME_HELP),
)
def trace_enable_tpoint_group(ctx: Any, name: str) -> bool:
    """Enable a tracepoint group (or "all") on every reactor and the supervisor."""
    add = _mask_of(name)
    _set(ctx, tr.get_mask(_seg(ctx).buf) | add)
    return True


@rpc_method(
    "trace_disable_tpoint_group",
    Param(
        "name",
        str,
        pos=0,
        help='trace group name we want to disable in tpoint_group_mask. (for example "bdev").',
    ),
)
def trace_disable_tpoint_group(ctx: Any, name: str) -> bool:
    """Disable a tracepoint group (or "all") on every reactor and the supervisor."""
    drop = _mask_of(name)
    _set(ctx, tr.get_mask(_seg(ctx).buf) & ~drop)
    return True


def _groups(mask: int) -> dict[str, dict[str, Any]]:
    return {
        name: {"enabled": bool(mask >> gid & 1), "mask": f"{1 << gid:#x}"}
        for name, gid in tr.GROUPS.items()
    }


@rpc_method("trace_get_tpoint_group_mask", cli_out=OUT_DICT)
def trace_get_tpoint_group_mask(ctx: Any) -> dict[str, Any]:
    """The group mask and, per group, whether it is enabled and its bit."""
    mask = tr.get_mask(_seg(ctx).buf)
    return {"tpoint_group_mask": f"{mask:#x}", **_groups(mask)}


@rpc_method("trace_get_info", cli_out=OUT_DICT)
def trace_get_info(ctx: Any) -> dict[str, Any]:
    """Where the trace is (``tpoint_shm_path``), the group mask, per group its
    bit and tracepoint mask (all tracepoints of an enabled group are on), and
    (blockfabric extension) the rings: one per reactor and the supervisor's,
    with their writer pid and records written so far."""
    seg = _seg(ctx)
    mask = tr.get_mask(seg.buf)
    h = tr.Header.parse(seg.buf)
    out: dict[str, Any] = {"tpoint_shm_path": seg.path, "tpoint_group_mask": f"{mask:#x}"}
    for name, gid in tr.GROUPS.items():
        ids = [t for t in tr.TPOINTS if t >> 6 == gid]
        tp_mask = sum(1 << (t & 63) for t in ids) if mask >> gid & 1 else 0
        out[name] = {"mask": f"{1 << gid:#x}", "tpoint_mask": f"{tp_mask:#x}"}
    out["num_entries"] = h.entries
    out["rings"] = [
        {"ring": i.index, "role": i.label, "pid": i.pid, "records": i.widx}
        for i in (tr.ring_info(seg.buf, n) for n in range(h.rings))
    ]
    return out
