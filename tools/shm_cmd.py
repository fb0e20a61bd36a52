"""``blockfabric shm list|cleanup``: find and remove what dead instances left.

An instance is alive when its instance lock is held, or when any owner process
recorded in its manifest still runs (pid present *and* same create time, so a
recycled pid does not keep a dead instance alive; a zombie, exited but not yet
reaped, is dead). Objects of an instance with
no manifest are judged by the lock alone. Live instances are never touched.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..shm import names
from ..shm.lock import InstanceLock
from ..shm.manifest import Manifest
from ..shm.procs import pid_alive
from ..shm.segment import hugetlbfs_mounts


def _pid_alive(pid: int, ctime: float) -> bool:
    """Runs, is the recorded process (same start time) and is no zombie: a
    killed instance whose processes nobody reaped yet is dead."""
    return pid_alive(pid, ctime)


def instance_alive(instance: str, manifest: Manifest | None = None) -> bool:
    if InstanceLock.is_held(instance):
        return True
    if manifest is None:
        try:
            manifest = Manifest.load(instance)
        except ValueError:  # corrupt manifest: the lock alone decides
            return False
    return any(_pid_alive(pid, ct) for pid, ct in manifest.owner_pids())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _looks_like_lock(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            data = f.read(33)
    except OSError:
        return False
    return len(data) <= 32 and data.strip().isdigit() or data == b""


def _scan() -> list[tuple[str, str, str, Path]]:
    """(instance, name, kind, path) of every blockfabric file on this host."""
    found: list[tuple[str, str, str, Path]] = []
    with contextlib.suppress(OSError):
        for p in names.SHM_DIR.iterdir():
            if p.name.startswith(names.SEM_PREFIX + names.PREFIX + "."):
                parsed = names.parse_object_name(p.name)
                if parsed:
                    found.append((parsed[0], p.name[len(names.SEM_PREFIX) :], "sem", p))
            elif p.name.startswith(names.PREFIX + ".") and p.name.endswith(".manifest"):
                inst = p.name[len(names.PREFIX) + 1 : -len(".manifest")]
                with contextlib.suppress(ValueError):
                    found.append((names.validate_instance(inst), p.name, "manifest", p))
            else:
                parsed = names.parse_object_name(p.name)
                if parsed and p.name.startswith(names.PREFIX + "."):
                    found.append((parsed[0], p.name, "shm", p))
    for m in hugetlbfs_mounts():
        with contextlib.suppress(OSError):
            for p in Path(m.path).iterdir():
                parsed = names.parse_object_name(p.name)
                if parsed and p.name.startswith(names.PREFIX + "."):
                    found.append((parsed[0], p.name, "hugetlbfs", p))
    # RUN_DIR may be shared with other software (BLOCKFABRIC_RUN_DIR=/tmp):
    # only lock files in our format, sockets, and files of instances known by
    # a lock file or manifest count as ours.
    known = {inst for inst, _, kind, _ in found if kind == "manifest"}
    run_files: list[tuple[str, str, Path]] = []
    with contextlib.suppress(OSError):
        for p in names.run_dir().iterdir():
            inst, dot, rest = p.name.partition(".")
            if not dot:
                continue
            try:
                names.validate_instance(inst)
            except ValueError:
                continue
            if rest == "lock" and _looks_like_lock(p):
                known.add(inst)
                found.append((inst, p.name, "lock", p))
            elif rest != "lock":
                run_files.append((inst, rest, p))
    for inst, _rest, p in run_files:
        with contextlib.suppress(OSError):
            if inst in known or stat.S_ISSOCK(p.lstat().st_mode):
                found.append((inst, p.name, "ipc", p))
    return found


def list_objects() -> list[dict[str, Any]]:
    """Every blockfabric object on this host, with its instance's liveness."""
    manifests: dict[str, Manifest] = {}
    alive: dict[str, bool] = {}
    out: list[dict[str, Any]] = []
    for inst, name, kind, path in _scan():
        if inst not in manifests:
            try:
                manifests[inst] = Manifest.load(inst)
            except ValueError:
                manifests[inst] = Manifest(inst)
            alive[inst] = instance_alive(inst, manifests[inst])
        m = manifests[inst]
        if kind == "manifest":
            owners = sorted({pid for pid, _ in m.owner_pids()})
        elif kind == "lock":
            pid = InstanceLock.holder_pid(inst) if alive[inst] else None
            owners = [pid] if pid else []
        else:
            owners = sorted({o.owner_pid for o in m.objects if o.name == name and o.kind == kind})
        out.append(
            {
                "instance": inst,
                "name": name,
                "kind": kind,
                "path": str(path),
                "size": _size(path),
                "owners": owners,
                "alive": alive[inst],
            }
        )
    order = {"shm": 0, "hugetlbfs": 0, "sem": 1, "ipc": 2, "lock": 3, "manifest": 4}
    out.sort(key=lambda o: (o["instance"], order.get(o["kind"], 9), o["name"]))
    return out


def _matches(obj: dict[str, Any], name: str | None) -> bool:
    if name is None:
        return True
    name = name.lstrip("/")
    return name in (obj["instance"], obj["name"], obj["path"].lstrip("/"))


def _remove_lock(path: Path) -> bool:
    """Unlink a lock file only while holding it, so a starting instance can't
    be robbed of a lock it is taking right now (see InstanceLock.acquire)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def cleanup(name: str | None = None, dry_run: bool = False) -> list[dict[str, Any]]:
    """Remove objects of dead instances (all, or those of instance/object ``name``).

    Returns the objects removed (or, with ``dry_run``, that would be).
    """
    removed = []
    objs = [o for o in list_objects() if _matches(o, name) and not o["alive"]]
    # Manifests last: if we are interrupted they still describe what is left.
    objs.sort(key=lambda o: o["kind"] == "manifest")
    for o in objs:
        # Re-check right before touching anything: the instance may have
        # been restarted since we listed it.
        if instance_alive(o["instance"]):
            continue
        if dry_run:
            removed.append(o)
            continue
        path = Path(o["path"])
        if o["kind"] == "lock":
            ok = _remove_lock(path)
        else:
            try:
                path.unlink()
                ok = True
            except FileNotFoundError:
                ok = False
        if ok:
            removed.append(o)
    return removed


# ------------------------------------------------------------------ CLI ---
def _fmt_size(n: int) -> str:
    if n < 1024:
        return f"{n}B"
    v = float(n)
    for unit in ("K", "M", "G", "T"):
        v /= 1024
        if v < 1024 or unit == "T":
            break
    return f"{v:.1f}{unit}"


def _table(objs: list[dict[str, Any]]) -> str:
    rows = [("INSTANCE", "NAME", "KIND", "SIZE", "OWNERS", "STATE")]
    for o in objs:
        rows.append(
            (
                o["instance"],
                o["name"],
                o["kind"],
                _fmt_size(o["size"]),
                ",".join(map(str, o["owners"])) or "-",
                "alive" if o["alive"] else "dead",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def cmd_list(args: argparse.Namespace) -> int:
    objs = list_objects()
    if args.json:
        print(json.dumps(objs, indent=1))
    elif objs:
        print(_table(objs))
    else:
        print("no blockfabric shared objects")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    removed = cleanup(args.name, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for o in removed:
        print(f"{verb} {o['kind']} {o['path']} (instance {o['instance']})")
    if args.name and not removed:
        live = [o for o in list_objects() if _matches(o, args.name) and o["alive"]]
        if live:
            print(f"{args.name}: instance is alive; nothing removed", file=sys.stderr)
            return 1
    if not removed:
        print("nothing to clean up")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``shm list`` and ``shm cleanup`` to an argparse subparsers object.

    Each leaf parser sets ``func`` (args -> exit code).
    """
    shm = subparsers.add_parser("shm", help="list or remove shared-memory objects")
    sub = shm.add_subparsers(dest="shm_cmd", metavar="{list,cleanup}")
    sub.required = True
    p = sub.add_parser("list", help="list blockfabric objects in /dev/shm, hugetlbfs and RUN_DIR")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("cleanup", help="remove objects of instances that are not running")
    p.add_argument("--name", help="only this instance (or object name)")
    p.add_argument("--dry-run", action="store_true", help="show what would be removed")
    p.set_defaults(func=cmd_cleanup)
    return shm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blockfabric")
    register(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
