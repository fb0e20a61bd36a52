"""bdev RPC methods (SPDK names and parameters)."""

from __future__ import annotations

import time
from typing import Any

from ..control.cli_forms import mib_to_blocks
from ..control.errors import EEXIST, ENODEV, RpcError, invalid_params
from ..control.registry import OUT_DICT, OUT_JSON, Param, rpc_method
from .aio import AioBdev
from .base import Bdev, IoStats
from .claims import bdev_claimers, claimers, export_claimers
from .malloc import MallocBdev
from .null import NullBdev
from .wcache import DEFAULT_MAX_DIRTY_MB, WcacheBdev

EBUSY = -16

BLOCK_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
NAME_MAX = 255


def _check_new_name(ctx: Any, name: str) -> None:
    if not name or len(name) > NAME_MAX or any(c.isspace() for c in name) or ":" in name:
        raise invalid_params(
            f"parameter 'name' {name!r} is not a valid bdev name (1-255 chars, no spaces or ':')"
        )
    if name in ctx.bdevs or any(name in b.aliases for b in ctx.bdevs.values()):
        raise RpcError(EEXIST, f"bdev {name} already exists")


def _check_geometry(num_blocks: int, block_size: int) -> None:
    if block_size not in BLOCK_SIZES:
        raise invalid_params(
            f"parameter 'block_size' must be a power of two from 512 to 65536, got {block_size}"
        )
    if num_blocks * block_size > (1 << 40):
        raise invalid_params("bdev larger than 1 TiB is refused")


def _uuid(u: str | None) -> str | None:
    if u is None:
        return None
    import uuid as uuid_mod

    try:
        return str(uuid_mod.UUID(u))
    except ValueError:
        raise invalid_params(f"parameter 'uuid' is not a UUID: {u!r}") from None


def get_bdev(ctx: Any, name: str) -> Bdev:
    b = ctx.bdevs.get(name)
    if b is None:
        for x in ctx.bdevs.values():
            if name in x.aliases or name == x.uuid:
                return x  # type: ignore[no-any-return]
        raise RpcError(ENODEV, f"bdev {name} not found")
    return b  # type: ignore[no-any-return]


def _claimed_by(ctx: Any, name: str) -> str | None:
    """The first bdev built on ``name`` (a raid, split, passthru, wcache...)."""
    owners = bdev_claimers(ctx, name)
    return owners[0] if owners else None


def _delete(ctx: Any, name: str, cls: type[Bdev], force: bool = False) -> bool:
    """Delete unless claimed. A bdev another bdev is built on is never
    deleted; one only exported (namespace, LUN) is hot-removed with ``force``."""
    b = get_bdev(ctx, name)
    if not isinstance(b, cls):
        raise RpcError(ENODEV, f"bdev {b.name} is a {b.product_name}, not a {cls.__name__}")
    owners = bdev_claimers(ctx, b.name)
    if owners:
        raise RpcError(EBUSY, f"bdev {b.name} is claimed by {', '.join(owners)}: delete that first")
    exports = export_claimers(ctx, b.name)
    if exports and not force:
        raise RpcError(
            EBUSY,
            f"bdev {b.name} is claimed by {', '.join(exports)}: remove it there first "
            "(or pass force: true to hot-remove it)",
        )
    ctx.remove_bdev(b.name)
    return True


def _size_in_mb(args: dict[str, Any]) -> dict[str, Any]:
    """rpc.py's ``TOTAL_SIZE BLOCK_SIZE`` (MiB) -> num_blocks."""
    total = args.pop("total_size")
    return {"num_blocks": mib_to_blocks(total, args["block_size"]), **args}


# parameters several create methods share (metadata: only md_size 0 is supported)
_UUID = Param("uuid", str, required=False, short="-u", help="UUID of the bdev")
_MD_SIZE = Param("md_size", int, required=False, max=0, short="-m", help="Metadata size (only 0)")
_DIF_TYPE = Param(
    "dif_type", int, required=False, max=0, short="-t", help="Protection information type (only 0)"
)
_DIF_IS_HEAD_OF_MD = Param(
    "dif_is_head_of_md",
    bool,
    required=False,
    short="-d",
    help="Protection information is in the first 8 bytes of metadata",
)
_PHYSICAL_BLOCK_SIZE = Param(
    "physical_block_size", int, required=False, short="-p", help="Physical block size"
)

_TOTAL_SIZE_MB = Param("total_size", float, pos=0, help="Size of malloc bdev in MB (float > 0)")


FORCE = Param(
    "force",
    bool,
    required=False,
    spdk=False,
    help="blockfabric extension: hot-remove even when a namespace or LUN exports it",
)


@rpc_method(
    "bdev_malloc_create",
    Param("num_blocks", int, min=1, cli=False),
    Param("block_size", int, pos=1, help="Block size for this bdev"),
    Param("name", str, required=False, short="-b", help="Name of the bdev"),
    _UUID,
    Param(
        "optimal_io_boundary",
        int,
        required=False,
        short="-o",
        help="Split on optimal IO boundary, in blocks",
    ),
    _MD_SIZE,
    Param("md_interleave", bool, required=False, short="-i", help="Metadata interleaved"),
    _DIF_TYPE,
    _DIF_IS_HEAD_OF_MD,
    _PHYSICAL_BLOCK_SIZE,
    aliases=("construct_malloc_bdev",),
    cli_out=OUT_JSON,
    cli_extra=(_TOTAL_SIZE_MB,),
    cli_build=_size_in_mb,
)
def bdev_malloc_create(
    ctx: Any,
    num_blocks: int,
    block_size: int,
    name: str | None = None,
    uuid: str | None = None,
    **_: Any,
) -> str:
    """Create a RAM disk in shared memory."""
    _check_geometry(num_blocks, block_size)
    if name is None:
        i = 0
        while f"Malloc{i}" in ctx.bdevs:
            i += 1
        name = f"Malloc{i}"
    _check_new_name(ctx, name)
    try:
        b = MallocBdev.create(
            ctx.instance, name, num_blocks, block_size, _uuid(uuid), hugepages=ctx.hugepages
        )
    except OSError as e:
        raise RpcError(
            -12, f"cannot allocate {num_blocks * block_size} bytes of shared memory: {e}"
        ) from None
    ctx.add_bdev(b)
    return name


@rpc_method(
    "bdev_malloc_delete",
    Param("name", str, pos=0, help="malloc bdev name"),
    FORCE,
    aliases=("delete_malloc_bdev",),
)
def bdev_malloc_delete(ctx: Any, name: str, force: bool | None = None) -> bool:
    return _delete(ctx, name, MallocBdev, bool(force))


@rpc_method(
    "bdev_null_create",
    Param("name", str, pos=0, help="Block device name"),
    Param("num_blocks", int, min=1, cli=False),
    Param("block_size", int, pos=2, help="Block size for this bdev"),
    _UUID,
    _MD_SIZE,
    _DIF_TYPE,
    _DIF_IS_HEAD_OF_MD,
    _PHYSICAL_BLOCK_SIZE,
    Param("dif_pi_format", int, required=False, short="-f", help="Protection information format"),
    aliases=("construct_null_bdev",),
    cli_out=OUT_JSON,
    cli_extra=(Param("total_size", int, pos=1, help="Size of null bdev in MB (int > 0)"),),
    cli_build=_size_in_mb,
)
def bdev_null_create(
    ctx: Any, name: str, num_blocks: int, block_size: int, uuid: str | None = None, **_: Any
) -> str:
    _check_geometry(num_blocks, block_size)
    _check_new_name(ctx, name)
    ctx.add_bdev(NullBdev.create(name, num_blocks, block_size, _uuid(uuid)))
    return name


@rpc_method(
    "bdev_null_delete",
    Param("name", str, pos=0, help="null bdev name"),
    FORCE,
    aliases=("delete_null_bdev",),
)
def bdev_null_delete(ctx: Any, name: str, force: bool | None = None) -> bool:
    return _delete(ctx, name, NullBdev, bool(force))


@rpc_method(
    "bdev_aio_create",
    Param("filename", str, pos=0, help="Path to device or file (ex: /dev/sda)"),
    Param("name", str, pos=1, help="Block device name"),
    Param("block_size", int, required=False, pos=2, help="Block size for this bdev"),
    Param("readonly", bool, required=False, short="-r", help="Set this bdev as read-only"),
    Param("fallocate", bool, required=False, help="Support unmap/write zeroes by fallocate"),
    _UUID,
    Param("direct", bool, required=False, spdk=False, help="Open the file with O_DIRECT"),
    aliases=("construct_aio_bdev",),
    cli_out=OUT_JSON,
)
def bdev_aio_create(
    ctx: Any,
    filename: str,
    name: str,
    block_size: int | None = None,
    uuid: str | None = None,
    direct: bool | None = None,
    **_: Any,
) -> str:
    """``direct`` (a blockfabric extension): open the file with O_DIRECT."""
    _check_new_name(ctx, name)
    try:
        b = AioBdev.create(
            name, filename, block_size or None, _uuid(uuid), bool(direct), instance=ctx.instance
        )
    except ValueError as e:
        raise invalid_params(str(e)) from None
    ctx.add_bdev(b)
    return name


@rpc_method(
    "bdev_aio_delete",
    Param("name", str, pos=0, help="aio bdev name"),
    FORCE,
    aliases=("delete_aio_bdev",),
)
def bdev_aio_delete(ctx: Any, name: str, force: bool | None = None) -> bool:
    return _delete(ctx, name, AioBdev, bool(force))


@rpc_method(
    "bdev_wcache_create",
    Param("base_bdev_name", str, short="-b", help="Name of the base bdev"),
    Param("name", str, short="-p", help="Name of the wcache bdev"),
    Param(
        "max_dirty_mb", int, required=False, min=1, max=1024, help="Cache size in MiB (default 16)"
    ),
    Param(
        "ignore_fua",
        bool,
        required=False,
        help="TEST ONLY: treat FUA writes and flushes as ordinary cached writes",
    ),
    _UUID,
    cli_out=OUT_JSON,
)
def bdev_wcache_create(
    ctx: Any,
    base_bdev_name: str,
    name: str,
    max_dirty_mb: int | None = None,
    ignore_fua: bool | None = None,
    uuid: str | None = None,
) -> str:
    """A volatile write cache in front of BASE (power-loss testing, see README).
    ``ignore_fua`` is a test-only knob: FUA writes and flushes are not honoured."""
    base = get_bdev(ctx, base_bdev_name)
    if base.MODULE not in ("malloc", "aio", "null"):
        raise invalid_params(
            f"parameter 'base_bdev_name': {base.name} is a {base.product_name}; "
            "a wcache sits on a malloc, aio or null bdev"
        )
    owner = _claimed_by(ctx, base.name)
    if owner is not None:
        raise RpcError(EBUSY, f"bdev {base.name} already has wcache bdev {owner} in front")
    _check_new_name(ctx, name)
    try:
        b = WcacheBdev.create(
            ctx.instance,
            name,
            base,
            max_dirty_mb or DEFAULT_MAX_DIRTY_MB,
            bool(ignore_fua),
            _uuid(uuid),
        )
    except ValueError as e:
        raise invalid_params(str(e)) from None
    except OSError as e:
        raise RpcError(-12, f"cannot create the cache of {name}: {e}") from None
    ctx.add_bdev(b)
    return name


@rpc_method("bdev_wcache_delete", Param("name", str, pos=0, help="wcache bdev name"))
def bdev_wcache_delete(ctx: Any, name: str) -> bool:
    """Delete the cache bdev (what is still dirty in it is lost, like a power failure)."""
    return _delete(ctx, name, WcacheBdev)


@rpc_method(
    "bdev_wcache_power_fail",
    Param("name", str, pos=0, help="wcache bdev name"),
    Param("reorder", bool, required=False, help="a random subset of dirty writes persists first"),
    Param("seed", int, required=False, min=0, help="seed of the random choice"),
    cli_out=OUT_DICT,
)
def bdev_wcache_power_fail(
    ctx: Any, name: str, reorder: bool | None = None, seed: int | None = None
) -> dict[str, Any]:
    """Drop every write not yet durable; with ``reorder`` a random subset of
    them (seeded by ``seed``) reaches the base first, in random order."""
    b = get_bdev(ctx, name)
    if not isinstance(b, WcacheBdev):
        raise RpcError(ENODEV, f"bdev {name} is a {b.product_name}, not a wcache bdev")
    try:
        return b.power_fail(bool(reorder), seed)
    except (OSError, TimeoutError) as e:
        raise RpcError(-5, f"power_fail of {name}: {e}") from None


@rpc_method(
    "bdev_get_bdevs",
    Param("name", str, required=False, short="-b", help="Name of the Blockdev. Example: Nvme0n1"),
    Param(
        "timeout",
        int,
        required=False,
        min=0,
        short="-t",
        long="--timeout-ms",
        help="Time in ms to wait for the bdev to appear",
    ),
    aliases=("get_bdevs",),
    cli_out=OUT_DICT,
)
def bdev_get_bdevs(
    ctx: Any, name: str | None = None, timeout: int | None = None
) -> list[dict[str, Any]]:
    bdevs = [get_bdev(ctx, name)] if name is not None else list(ctx.bdevs.values())
    out = []
    for b in bdevs:
        e = b.get_bdevs_entry()
        owners = claimers(ctx, b.name)
        e["claimed"] = bool(owners)
        if owners:
            e["claim_type"] = "exclusive_write"
            e["claimed_by"] = owners  # blockfabric extension: who holds it
        out.append(e)
    return out


@rpc_method(
    "bdev_get_iostat",
    Param("name", str, required=False, short="-b", help="Name of the Blockdev. Example: Nvme0n1"),
    Param(
        "per_channel",
        bool,
        required=False,
        short="-c",
        help="Display per channel IO stats for specified device",
    ),
    aliases=("get_bdevs_iostat",),
    cli_out=OUT_DICT,
)
def bdev_get_iostat(
    ctx: Any, name: str | None = None, per_channel: bool | None = None
) -> dict[str, Any]:
    names = [get_bdev(ctx, name).name] if name else list(ctx.bdevs)
    per_reactor = ctx.gather("bdev.iostat", {"names": names})
    out = []
    for n in names:
        b = ctx.bdevs[n]
        total = IoStats()
        channels = []
        for rid, stats in enumerate(per_reactor):
            s = (stats or {}).get(n)
            if s:
                st = IoStats(**s)
                total.add(st)
                channels.append({"thread_id": rid + 1, **st.as_dict()})
        entry: dict[str, Any] = {"name": n, "uuid": b.uuid, **total.as_dict()}
        if per_channel:
            entry = {"name": n, "channels": channels}
        out.append(entry)
    return {"tick_rate": 1_000_000_000, "ticks": time.monotonic_ns(), "bdevs": out}
