"""bdev_rbd RPC methods (SPDK names and parameters) and the supervisor's side
of RBD: registered clusters, image lookup at create, resize.

The supervisor keeps one connection per cluster while bdevs use it (the same
shared `rbd.Connection` the reactors use for I/O); what it does through it
(stat, resize) blocks the RPC for at most the librados timeouts
(``rbd.RBD_OP_TIMEOUT``)."""

from __future__ import annotations

import logging
from typing import Any

from ..control.cli_forms import key_value
from ..control.errors import EEXIST, ENODEV, RpcError, invalid_params
from ..control.registry import OUT_DICT, OUT_JSON, Param, rpc_method
from . import rbd as R
from .rpc import BLOCK_SIZES, EBUSY, FORCE, _check_new_name, _delete, _uuid, get_bdev

log = logging.getLogger(__name__)

EIO = -5
EINVAL = -22
CLUSTERS: dict[str, dict[str, Any]] = {}  # name -> registration (supervisor process only)
# the supervisor's connection held for each RBD bdev (released on delete)
_HELD: dict[str, R.Connection] = {}


def _ceph_error(what: str, e: BaseException) -> RpcError:
    if isinstance(e, ImportError):
        return RpcError(ENODEV, str(e))
    n = R.rbd_errno(e)
    return RpcError(-n, f"{what}: {type(e).__name__}: {e}")


def _config_map(v: Any, pname: str) -> dict[str, str] | None:
    """SPDK passes config as {key: value}; the CLI form key=value strings."""
    if v is None:
        return None
    if isinstance(v, list):
        out: dict[str, str] = {}
        for item in v:
            if not isinstance(item, str) or "=" not in item:
                raise invalid_params(f"parameter '{pname}': {item!r} is not key=value")
            k, _, val = item.partition("=")
            out[k.strip()] = val.strip()
        return out
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise invalid_params(f"parameter '{pname}' must be an object of strings")
    return {str(k): str(x) for k, x in v.items()}


def _pairs_to_map(key: str) -> Any:
    """cli_build: the repeated ``--config k=v`` pairs become rpc.py's map."""

    def build(args: dict[str, Any]) -> dict[str, Any]:
        if args.get(key) is not None:
            args[key] = dict(args[key])
        return args

    return build


def _cluster_desc(reg: dict[str, Any]) -> dict[str, Any]:
    keys = ("user_id", "config_file", "key_file", "config_param", "core_mask")
    return {k: reg[k] for k in keys if reg.get(k)}


@rpc_method(
    "bdev_rbd_register_cluster",
    Param("name", str, max=255, pos=0, help="Name of the Rados cluster only known to rbd bdev"),
    Param(
        "user_id",
        str,
        required=False,
        long="--user",
        help="Ceph user name (i.e. admin, not client.admin)",
    ),
    Param(
        "config_param",
        (dict, list),
        required=False,
        parse=key_value,
        help="adds a key=value configuration option for rados_conf_set (repeatable)",
    ),
    Param("config_file", str, required=False, help="The file path of the Rados configuration file"),
    Param("key_file", str, required=False, help="The file path of the Rados keyring file"),
    Param("core_mask", str, required=False, help="Set core mask for librbd IO context threads"),
    cli_out=OUT_JSON,
    cli_build=_pairs_to_map("config_param"),
)
def bdev_rbd_register_cluster(
    ctx: Any,
    name: str,
    user_id: str | None = None,
    config_param: Any = None,
    config_file: str | None = None,
    key_file: str | None = None,
    core_mask: str | None = None,
) -> str:
    """Register a Ceph cluster (connection parameters) that bdev_rbd_create
    -c NAME uses; the connection is made once here to check it."""
    if not name or any(c.isspace() for c in name):
        raise invalid_params(f"parameter 'name' {name!r} is not a valid cluster name")
    if name in CLUSTERS:
        raise RpcError(EEXIST, f"cluster {name} is already registered")
    reg: dict[str, Any] = {"name": name}
    if user_id:
        reg["user_id"] = user_id
    cp = _config_map(config_param, "config_param")
    if cp:
        reg["config_param"] = cp
    if config_file:
        reg["config_file"] = config_file
    if key_file:
        reg["key_file"] = key_file
    if core_mask:
        try:
            if not R.parse_core_mask(core_mask):
                raise ValueError
        except ValueError:
            raise invalid_params(f"parameter 'core_mask' {core_mask!r} is not a CPU mask") from None
        reg["core_mask"] = core_mask  # the CPUs of librados/librbd's threads in reactors
    try:
        c = R.proc().acquire(_cluster_desc(reg))
    except Exception as e:
        raise _ceph_error(f"cannot connect to cluster {name}", e) from None
    R.proc().release(c)
    CLUSTERS[name] = reg
    return name


@rpc_method(
    "bdev_rbd_unregister_cluster",
    Param("name", str, pos=0, help="Name of the Rados cluster to unregister"),
)
def bdev_rbd_unregister_cluster(ctx: Any, name: str) -> bool:
    if name not in CLUSTERS:
        raise RpcError(ENODEV, f"cluster {name} is not registered")
    users = [
        b.name for b in ctx.bdevs.values() if isinstance(b, R.RbdBdev) and b.cluster_name == name
    ]
    if users:
        raise RpcError(
            EBUSY, f"cluster {name} is used by rbd bdev(s) {', '.join(users)}: delete them first"
        )
    del CLUSTERS[name]
    return True


def _info(reg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"cluster_name": reg["name"]}
    for k in ("user_id", "config_param", "config_file", "key_file", "core_mask"):
        if reg.get(k):
            out[k] = reg[k]
    return out


@rpc_method(
    "bdev_rbd_get_clusters_info",
    Param("name", str, required=False, short="-b", help="Name of the registered Rados cluster"),
    cli_out=OUT_DICT,
)
def bdev_rbd_get_clusters_info(ctx: Any, name: str | None = None) -> Any:
    if name is not None:
        reg = CLUSTERS.get(name)
        if reg is None:
            raise RpcError(ENODEV, f"cluster {name} is not registered")
        return _info(reg)
    return [_info(r) for r in CLUSTERS.values()]


def _image_size(conn: R.Connection, pool: str, image: str) -> int:
    _, rbd = R.bindings()
    img = rbd.Image(conn.ioctx(pool), image, read_only=True)
    try:
        return int(img.size())
    finally:
        img.close()


@rpc_method(
    "bdev_rbd_create",
    Param("pool_name", str, pos=0, help="rbd pool name"),
    Param("rbd_name", str, pos=1, help="rbd image name"),
    Param("block_size", int, pos=2, help="rbd block size"),
    Param("name", str, required=False, short="-b", help="Name of the bdev"),
    Param(
        "user_id",
        str,
        required=False,
        long="--user",
        help="Ceph user name (i.e. admin, not client.admin)",
    ),
    Param(
        "config",
        (dict, list),
        required=False,
        parse=key_value,
        help="adds a key=value configuration option for rados_conf_set (repeatable)",
    ),
    Param(
        "cluster_name",
        str,
        required=False,
        short="-c",
        help="cluster name to identify the Rados cluster",
    ),
    Param("uuid", str, required=False, short="-u", help="UUID of the bdev"),
    aliases=("construct_rbd_bdev",),
    cli_out=OUT_JSON,
    cli_build=_pairs_to_map("config"),
)
def bdev_rbd_create(
    ctx: Any,
    pool_name: str,
    rbd_name: str,
    block_size: int,
    name: str | None = None,
    user_id: str | None = None,
    config: Any = None,
    cluster_name: str | None = None,
    uuid: str | None = None,
) -> str:
    """A bdev on RBD image POOL/IMAGE. With ``cluster_name`` it uses a
    registered cluster; without, ``user_id`` and ``config`` (or Ceph's default
    config file) describe the connection, as in SPDK."""
    if block_size not in BLOCK_SIZES:
        raise invalid_params(
            f"parameter 'block_size' must be a power of two from 512 to 65536, got {block_size}"
        )
    if cluster_name is not None:
        reg = CLUSTERS.get(cluster_name)
        if reg is None:
            raise RpcError(ENODEV, f"cluster {cluster_name} is not registered")
        if user_id is not None or config is not None:
            raise invalid_params(
                "parameters 'user_id'/'config' conflict with 'cluster_name' "
                "(the registered cluster has its own)"
            )
        cluster = _cluster_desc(reg)
    else:
        cluster = {}
        if user_id:
            cluster["user_id"] = user_id
        cm = _config_map(config, "config")
        if cm:
            cluster["config_param"] = cm
    if name is None:
        i = 0
        while f"Ceph{i}" in ctx.bdevs:
            i += 1
        name = f"Ceph{i}"
    _check_new_name(ctx, name)
    u = _uuid(uuid)
    try:
        conn = R.proc().acquire(cluster)
    except Exception as e:
        raise _ceph_error("cannot connect to the Ceph cluster", e) from None
    try:
        size = _image_size(conn, pool_name, rbd_name)
    except Exception as e:
        R.proc().release(conn)
        raise _ceph_error(f"cannot open rbd image {pool_name}/{rbd_name}", e) from None
    if size < block_size:
        R.proc().release(conn)
        raise RpcError(EINVAL, f"rbd image {pool_name}/{rbd_name} is smaller than one block")
    kw: dict[str, Any] = {"uuid": u} if u else {}
    b = R.RbdBdev(
        name=name,
        block_size=block_size,
        num_blocks=size // block_size,
        product_name=R.RbdBdev.PRODUCT,
        **kw,
    )
    b.pool_name, b.rbd_name = pool_name, rbd_name
    b.cluster_name = cluster_name or ""
    b.cluster = cluster
    b.create_method = "bdev_rbd_create"
    p: dict[str, Any] = {
        "name": name,
        "pool_name": pool_name,
        "rbd_name": rbd_name,
        "block_size": block_size,
        "uuid": b.uuid,
    }
    if cluster_name:
        p["cluster_name"] = cluster_name
    else:
        if user_id:
            p["user_id"] = user_id
        if cluster.get("config_param"):
            p["config"] = dict(cluster["config_param"])
    b.create_params = p
    _HELD[name] = conn
    ctx.add_bdev(b)
    return name


def release(name: str) -> None:
    """The bdev is gone: drop the supervisor's hold on its connection."""
    c = _HELD.pop(name, None)
    if c is not None:
        R.proc().release(c)


@rpc_method(
    "bdev_rbd_delete",
    Param("name", str, pos=0, help="rbd bdev name"),
    FORCE,
    aliases=("delete_rbd_bdev",),
)
def bdev_rbd_delete(ctx: Any, name: str, force: bool | None = None) -> bool:
    b = get_bdev(ctx, name)
    ok = _delete(ctx, name, R.RbdBdev, bool(force))
    release(b.name)
    return ok


@rpc_method(
    "bdev_rbd_resize",
    Param("name", str, pos=0, help="rbd bdev name"),
    Param(
        "new_size",
        int,
        min=1,
        pos=1,
        help="new bdev size for resize operation. The unit is MiB",
    ),
    cli_out=OUT_JSON,
)
def bdev_rbd_resize(ctx: Any, name: str, new_size: int) -> bool:
    """Grow the image to ``new_size`` MiB (SPDK refuses shrinking); hosts are
    told: an NVMe namespace-attribute-changed event, a SCSI capacity-data-
    changed unit attention."""
    b = get_bdev(ctx, name)
    if not isinstance(b, R.RbdBdev):
        raise RpcError(ENODEV, f"bdev {name} is a {b.product_name}, not an rbd bdev")
    new_bytes = new_size << 20
    if new_bytes < b.size_bytes:
        raise RpcError(EINVAL, "The new bdev size must be larger than current bdev size.")
    if new_bytes > (1 << 50):
        raise invalid_params("parameter 'new_size' is beyond 1 PiB")
    conn = _HELD.get(b.name)
    if conn is None or conn.retired:
        try:
            conn = R.proc().acquire(b.cluster)
        except Exception as e:
            raise _ceph_error("cannot connect to the Ceph cluster", e) from None
        old = _HELD.pop(b.name, None)
        _HELD[b.name] = conn
        if old is not None:
            R.proc().release(old)
    _, rbd = R.bindings()
    try:
        img = rbd.Image(conn.ioctx(b.pool_name), b.rbd_name)
        try:
            if new_bytes != int(img.size()):
                img.resize(new_bytes)
        finally:
            img.close()
    except Exception as e:
        raise _ceph_error(f"cannot resize rbd image {b.pool_name}/{b.rbd_name}", e) from None
    old_blocks = b.num_blocks
    b.num_blocks = new_bytes // b.block_size
    if b.num_blocks != old_blocks:
        ctx.config_changed()  # reactors take the new geometry ...
        ctx.send_event(None, "bdev.resized", {"name": b.name})  # ... then tell hosts
    return True


def save_config() -> list[dict[str, Any]]:
    """The cluster registrations, which save_config lists before the bdevs."""
    return [
        {"method": "bdev_rbd_register_cluster", "params": dict(reg)} for reg in CLUSTERS.values()
    ]
