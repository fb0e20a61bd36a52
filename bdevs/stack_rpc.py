"""RPC methods of the stackable bdevs, with SPDK's names and parameters:
bdev_raid_*, bdev_split_*, bdev_passthru_*, bdev_delay_*, bdev_error_*."""

from __future__ import annotations

import logging
from typing import Any

from ..control.cli_forms import words
from ..control.errors import ENODEV, RpcError, invalid_params
from ..control.registry import OUT_ARRAY, OUT_JSON, Param, rpc_method
from .base import Bdev
from .claims import claimers
from .delay import LATENCY_TYPES, MAX_LATENCY_US, DelayBdev
from .error import ERROR_TYPES, IO_TYPES, MAX_NUM, ErrorBdev
from .passthru import PassthruBdev
from .raid import LEVELS, MAX_MEMBERS, ONLINE, RAID1, RaidBdev
from .rpc import EBUSY, _check_new_name, _delete, _uuid, get_bdev
from .split import SplitBdev
from .stacked import StackedBdev

log = logging.getLogger(__name__)

REBUILD_TICK_S = 0.0  # one chunk per supervisor loop turn (RPCs run in between)


def _claimable(ctx: Any, name: str, what: str) -> Bdev:
    """A base for a new stacked bdev: it exists and nobody claims it."""
    b = get_bdev(ctx, name)
    owners = claimers(ctx, b.name)
    if owners:
        raise RpcError(EBUSY, f"bdev {b.name} is already claimed by {', '.join(owners)}")
    if b.removed:
        raise RpcError(ENODEV, f"bdev {b.name} is being removed")
    del what
    return b


def _of(ctx: Any, name: str, cls: type[Bdev], what: str) -> Any:
    b = get_bdev(ctx, name)
    if not isinstance(b, cls):
        raise RpcError(ENODEV, f"bdev {name} is a {b.product_name}, not a {what} bdev")
    return b


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    # checked here, not with Param(choices=): argparse would show the choices
    # instead of the positional's name in the CLI's help
    if value not in choices:
        raise invalid_params(
            f"parameter '{name}' must be one of {', '.join(choices)}, got {value!r}"
        )


def _create(ctx: Any, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ValueError as e:
        raise invalid_params(str(e)) from None
    except OSError as e:
        raise RpcError(-12, f"cannot create the shared state: {e}") from None


# ------------------------------------------------------------------ passthru
@rpc_method(
    "bdev_passthru_create",
    Param("base_bdev_name", str, short="-b", help="Name of the existing bdev"),
    Param("name", str, short="-p", help="Name of the pass through bdev"),
    Param("uuid", str, required=False, short="-u", help="UUID of the bdev"),
    aliases=("construct_passthru_bdev",),
    cli_out=OUT_JSON,
)
def bdev_passthru_create(ctx: Any, base_bdev_name: str, name: str, uuid: str | None = None) -> str:
    base = _claimable(ctx, base_bdev_name, "passthru")
    _check_new_name(ctx, name)
    ctx.add_bdev(PassthruBdev.create(name, base, _uuid(uuid)))
    return name


@rpc_method(
    "bdev_passthru_delete",
    Param("name", str, pos=0, help="pass through bdev name"),
    aliases=("delete_passthru_bdev",),
)
def bdev_passthru_delete(ctx: Any, name: str) -> bool:
    return _delete(ctx, name, PassthruBdev)


# ------------------------------------------------------------------ split
@rpc_method(
    "bdev_split_create",
    Param("base_bdev", str, pos=0, help="base bdev name"),
    Param("split_count", int, min=1, max=128, pos=1, help="number of split bdevs to create"),
    Param(
        "split_size_mb", int, required=False, min=0, short="-s", help="size in MiB for each bdev"
    ),
    aliases=("construct_split_vbdev",),
    cli_out=OUT_ARRAY,
)
def bdev_split_create(
    ctx: Any, base_bdev: str, split_count: int, split_size_mb: int | None = None
) -> list[str]:
    base = _claimable(ctx, base_bdev, "split")
    parts = _create(ctx, SplitBdev.create_parts, base, split_count, split_size_mb or None)
    for p in parts:
        _check_new_name(ctx, p.name)
    for p in parts:
        ctx.bdevs[p.name] = p
    ctx.config_changed()
    return [p.name for p in parts]


@rpc_method(
    "bdev_split_delete",
    Param("base_bdev", str, pos=0, help="base bdev name"),
    aliases=("destruct_split_vbdev",),
)
def bdev_split_delete(ctx: Any, base_bdev: str) -> bool:
    parts = [
        b for b in ctx.bdevs.values() if isinstance(b, SplitBdev) and b.base_names() == [base_bdev]
    ]
    if not parts:
        raise RpcError(ENODEV, f"bdev {base_bdev} is not split")
    for p in parts:  # all or none
        owners = claimers(ctx, p.name)
        if owners:
            raise RpcError(
                EBUSY, f"bdev {p.name} is claimed by {', '.join(owners)}: remove that first"
            )
    for p in parts:
        ctx.remove_bdev(p.name)
    return True


# ------------------------------------------------------------------ delay
@rpc_method(
    "bdev_delay_create",
    Param("base_bdev_name", str, short="-b", help="Name of the existing bdev"),
    Param("name", str, short="-d", help="Name of the delay bdev"),
    Param(
        "avg_read_latency",
        int,
        min=0,
        max=MAX_LATENCY_US,
        short="-r",
        help="Average latency to apply before completing read ops (in microseconds)",
    ),
    Param(
        "p99_read_latency",
        int,
        min=0,
        max=MAX_LATENCY_US,
        short="-t",
        long="--nine-nine-read-latency",
        help="latency to apply to 1 in 100 read ops (in microseconds)",
    ),
    Param(
        "avg_write_latency",
        int,
        min=0,
        max=MAX_LATENCY_US,
        short="-w",
        help="Average latency to apply before completing write ops (in microseconds)",
    ),
    Param(
        "p99_write_latency",
        int,
        min=0,
        max=MAX_LATENCY_US,
        short="-n",
        long="--nine-nine-write-latency",
        help="latency to apply to 1 in 100 write ops (in microseconds)",
    ),
    Param("uuid", str, required=False, short="-u", help="UUID of the bdev (optional)"),
    aliases=("construct_delay_bdev",),
    cli_out=OUT_JSON,
)
def bdev_delay_create(
    ctx: Any,
    base_bdev_name: str,
    name: str,
    avg_read_latency: int,
    p99_read_latency: int,
    avg_write_latency: int,
    p99_write_latency: int,
    uuid: str | None = None,
) -> str:
    """Latencies in microseconds."""
    base = _claimable(ctx, base_bdev_name, "delay")
    _check_new_name(ctx, name)
    lat = {
        "avg_read_latency": avg_read_latency,
        "p99_read_latency": p99_read_latency,
        "avg_write_latency": avg_write_latency,
        "p99_write_latency": p99_write_latency,
    }
    ctx.add_bdev(DelayBdev.create(name, base, lat, _uuid(uuid)))
    return name


@rpc_method(
    "bdev_delay_update_latency",
    Param("delay_bdev_name", str, pos=0, help="The name of the given delay bdev"),
    Param(
        "latency_type",
        str,
        pos=1,
        help="one of: avg_read, avg_write, p99_read, p99_write",
    ),
    Param(
        "latency_us",
        int,
        min=0,
        max=MAX_LATENCY_US,
        pos=2,
        help="new latency value in microseconds",
    ),
    cli_out=OUT_JSON,
)
def bdev_delay_update_latency(
    ctx: Any, delay_bdev_name: str, latency_type: str, latency_us: int
) -> bool:
    _choice("latency_type", latency_type, LATENCY_TYPES)
    b: DelayBdev = _of(ctx, delay_bdev_name, DelayBdev, "delay")
    b.set_latency(latency_type, latency_us)
    ctx.config_changed()
    return True


@rpc_method(
    "bdev_delay_delete",
    Param("name", str, pos=0, help="delay bdev name"),
    aliases=("delete_delay_bdev",),
)
def bdev_delay_delete(ctx: Any, name: str) -> bool:
    return _delete(ctx, name, DelayBdev)


# ------------------------------------------------------------------ error
@rpc_method(
    "bdev_error_create",
    Param("base_name", str, pos=0, help="base bdev name"),
    Param("uuid", str, required=False, help="UUID for this bdev"),
    aliases=("construct_error_bdev",),
    cli_out=OUT_JSON,
)
def bdev_error_create(ctx: Any, base_name: str, uuid: str | None = None) -> str:
    base = _claimable(ctx, base_name, "error")
    _check_new_name(ctx, "EE_" + base.name)
    ctx.add_bdev(_create(ctx, ErrorBdev.create, ctx.instance, base, _uuid(uuid)))
    return "EE_" + base.name


@rpc_method(
    "bdev_error_inject_error",
    Param("name", str, pos=0, help="the name of the error injection bdev"),
    Param(
        "io_type",
        str,
        pos=1,
        help="io_type: 'clear' 'read' 'write' 'unmap' 'flush' 'all'",
    ),
    Param(
        "error_type",
        str,
        pos=2,
        help="error_type: 'failure' 'pending' (refused) 'corrupt_data' 'nomem'",
    ),
    Param(
        "num",
        int,
        required=False,
        min=0,
        max=MAX_NUM,
        short="-n",
        help="the number of commands you want to fail",
    ),
    Param(
        "queue_depth",
        int,
        required=False,
        min=0,
        short="-q",
        help="the queue depth at which to trigger the error (refused)",
    ),
    Param(
        "corrupt_offset",
        int,
        required=False,
        min=0,
        max=1 << 32,
        short="-o",
        help="the offset in bytes to xor with corrupt_value",
    ),
    Param(
        "corrupt_value",
        int,
        required=False,
        min=0,
        max=255,
        short="-v",
        help="the value for xor (1-255, 0 is invalid)",
    ),
)
def bdev_error_inject_error(
    ctx: Any,
    name: str,
    io_type: str,
    error_type: str,
    num: int | None = None,
    queue_depth: int | None = None,
    corrupt_offset: int | None = None,
    corrupt_value: int | None = None,
) -> bool:
    """Arm ``num`` (default 1) injections of ``error_type`` for ``io_type``
    (a total over all reactors). ``corrupt_data`` needs a non-zero
    ``corrupt_value`` (XORed into byte ``corrupt_offset`` of the data)."""
    _choice("io_type", io_type, (*IO_TYPES, "all", "clear"))
    _choice("error_type", error_type, (*ERROR_TYPES, "pending"))
    b: ErrorBdev = _of(ctx, name, ErrorBdev, "error")
    if error_type == "pending":
        raise invalid_params(
            "error_type 'pending' (an I/O never completed) is not supported: it would hold "
            "a host buffer forever; use a delay bdev for slow I/O"
        )
    if queue_depth:
        raise invalid_params("parameter 'queue_depth' (inject only above a depth) is not supported")
    if error_type == "corrupt_data" and io_type != "clear" and not corrupt_value:
        raise invalid_params("error_type corrupt_data needs a non-zero corrupt_value")
    if io_type in ("flush", "unmap") and error_type == "corrupt_data":
        raise invalid_params(f"io_type {io_type} carries no data to corrupt")
    b.inject(
        io_type, error_type, 1 if num is None else num, corrupt_offset or 0, corrupt_value or 0
    )
    return True


@rpc_method(
    "bdev_error_delete",
    Param("name", str, pos=0, help="error bdev name"),
    aliases=("delete_error_bdev",),
)
def bdev_error_delete(ctx: Any, name: str) -> bool:
    return _delete(ctx, name, ErrorBdev)


# ------------------------------------------------------------------ raid
@rpc_method(
    "bdev_raid_create",
    Param("name", str, short="-n", help="raid bdev name"),
    Param(
        "raid_level",
        str,
        short="-r",
        help="raid level, raid0, raid1 and a special level concat are supported",
    ),
    Param(
        "base_bdevs",
        (list, str),
        short="-b",
        parse=words,
        help="base bdevs name, whitespace separated list in quotes",
    ),
    Param(
        "strip_size_kb",
        int,
        required=False,
        min=0,
        max=1 << 20,
        short="-z",
        help="strip size in KB",
    ),
    Param("strip_size", int, required=False, min=0, max=1 << 20, cli=False),
    Param("uuid", str, required=False, help="UUID for this raid bdev"),
    Param(
        "superblock",
        bool,
        required=False,
        short="-s",
        help="store the raid configuration in a superblock (refused: save_config holds it)",
    ),
    aliases=("construct_raid_bdev",),
)
def bdev_raid_create(
    ctx: Any,
    name: str,
    raid_level: str,
    base_bdevs: list[str] | str,
    strip_size_kb: int | None = None,
    strip_size: int | None = None,
    uuid: str | None = None,
    superblock: bool | None = None,
) -> bool:
    """``raid_level``: 0/raid0, 1/raid1 or concat; ``base_bdevs``: a list or
    a space-separated string (as SPDK's rpc.py -b "B1 B2")."""
    level = LEVELS.get(raid_level.lower())
    if level is None:
        raise invalid_params(
            f"parameter 'raid_level' must be 0, raid0, 1, raid1 or concat, got {raid_level!r}"
        )
    if superblock:
        raise invalid_params("superblock is not supported (the configuration lives in save_config)")
    names = base_bdevs.split() if isinstance(base_bdevs, str) else list(base_bdevs)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise invalid_params("parameter 'base_bdevs' must name at least one bdev")
    if len(names) > MAX_MEMBERS or len(set(names)) != len(names):
        raise invalid_params(f"parameter 'base_bdevs' must name 1 to {MAX_MEMBERS} distinct bdevs")
    strip = strip_size_kb if strip_size_kb is not None else strip_size
    if level == RAID1:
        if strip:
            raise invalid_params("raid1 has no strip: strip_size_kb must be 0 or left out")
        strip = 0
    elif not strip:
        raise invalid_params(f"{level} needs strip_size_kb")
    _check_new_name(ctx, name)
    bases = [_claimable(ctx, n, "raid") for n in names]
    ctx.add_bdev(
        _create(ctx, RaidBdev.create, ctx.instance, name, level, bases, strip or 0, _uuid(uuid))
    )
    return True


@rpc_method(
    "bdev_raid_delete",
    Param("name", str, pos=0, help="raid bdev name"),
    aliases=("destroy_raid_bdev",),
)
def bdev_raid_delete(ctx: Any, name: str) -> bool:
    return _delete(ctx, name, RaidBdev)


@rpc_method(
    "bdev_raid_get_bdevs",
    Param(
        "category",
        str,
        pos=0,
        help="all or online or configuring or offline",
    ),
    aliases=("get_raid_bdevs",),
    cli_out=OUT_JSON,
)
def bdev_raid_get_bdevs(ctx: Any, category: str) -> list[dict[str, Any]]:
    _choice("category", category, ("all", "online", "configuring", "offline"))
    out = []
    for b in ctx.bdevs.values():
        if isinstance(b, RaidBdev):
            info = b.raid_info()
            if category == "all" or info["state"] == category:
                out.append(info)
    return out


def _raid_of_member(ctx: Any, base: str) -> tuple[RaidBdev, int]:
    for b in ctx.bdevs.values():
        if isinstance(b, RaidBdev):
            for i, d in enumerate(b.base_descs):
                if d is not None and d["name"] == base:
                    return b, i
    raise RpcError(ENODEV, f"bdev {base} is not a member of a raid bdev")


@rpc_method("bdev_raid_remove_base_bdev", Param("name", str, pos=0, help="base bdev name"))
def bdev_raid_remove_base_bdev(ctx: Any, name: str) -> bool:
    """Take member ``name`` out of its raid (a raid1 runs degraded, a
    raid0/concat goes offline); the bdev is then no longer claimed."""
    raid, slot = _raid_of_member(ctx, get_bdev(ctx, name).name)
    if (
        raid.level == RAID1
        and raid.slot_state(slot) == ONLINE
        and not any(raid.slot_state(i) == ONLINE for i in range(len(raid.base_descs)) if i != slot)
    ):
        raise RpcError(
            EBUSY, f"{name} is the last online member of {raid.name}: delete the raid instead"
        )
    raid.fail_slot(slot, keep_one=False)  # every reactor stops using it now
    raid.remove_slot(slot)
    ctx.config_changed()
    log.warning("raid %s: member %s removed", raid.name, name)
    return True


@rpc_method(
    "bdev_raid_add_base_bdev",
    Param("raid_bdev", str, pos=0, help="raid bdev name"),
    Param("base_bdev", str, pos=1, help="base bdev name"),
)
def bdev_raid_add_base_bdev(ctx: Any, raid_bdev: str, base_bdev: str) -> bool:
    """raid1: add ``base_bdev`` in an empty or failed slot and rebuild it
    from an online member in the background (``bdev_raid_get_bdevs`` shows
    the progress as ``process``); it serves reads once the copy completed."""
    raid: RaidBdev = _of(ctx, raid_bdev, RaidBdev, "raid")
    base = _claimable(ctx, base_bdev, "raid")
    _create(ctx, raid.add_member, base)
    ctx.config_changed()  # every reactor writes to the new member from now
    _run_rebuild(ctx, raid)
    return True


def _run_rebuild(ctx: Any, raid: RaidBdev) -> None:
    loop = getattr(ctx, "loop", None)

    def step() -> None:
        if raid.name not in ctx.bdevs or ctx.bdevs[raid.name] is not raid:
            return
        try:
            done = raid.rebuild_step()
        except (OSError, ValueError, TimeoutError) as e:
            log.error("raid %s: rebuild failed: %s", raid.name, e)
            slot = int(raid.state().q[2]) - 1
            if slot >= 0:
                raid.fail_slot(slot, keep_one=False)
            return
        if not done and loop is not None:
            loop.call_later(REBUILD_TICK_S, step)

    if loop is None:  # no event loop (unit tests): rebuild now
        while not raid.rebuild_step():
            pass
        return
    loop.call_later(REBUILD_TICK_S, step)


__all__ = ["StackedBdev"]
