"""A real single-node Ceph cluster for the tests (scripts/ceph-single-node.sh).

`ceph` (session scope) starts one ceph-mon and one ceph-osd on a sparse file
in a temporary folder, bound to 127.0.0.1 with its own config and keyring,
creates pool ``rbd``, and at the end stops it and asserts that no Ceph
process and no file of it is left. Under CI a missing Ceph is a failure with
the reason (bftest.missing_tool), never a skip.

Import the fixture into a test module or conftest:
``from ceph_fixtures import ceph  # noqa: F401``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bftest import missing_tool

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ceph-single-node.sh"
POOL = "rbd"
_images = itertools.count()


def ceph_missing() -> str | None:
    for tool in ("ceph-mon", "ceph-osd", "ceph", "rbd", "monmaptool", "ceph-authtool"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install ceph-mon ceph-osd ceph-common)"
    try:
        import rados  # noqa: F401
        import rbd  # noqa: F401
    except ImportError as e:
        return f"Ceph's Python bindings are not importable from the venv ({e})"
    return None


def procs_of(folder: Path) -> list[int]:
    """Pids of processes whose command line names ``folder`` (its daemons)."""
    out = []
    needle = str(folder).encode()
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if needle in cmd and b"ceph-" in cmd:
            out.append(int(p))
    return out


class CephCluster:
    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.conf = folder / "ceph.conf"
        self.keyring = folder / "keyring"
        self.pool = POOL

    def _script(self, *args: str, timeout: float = 180) -> None:
        p = subprocess.run(
            ["sh", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
        )
        if p.returncode:
            logs = ""
            for f in sorted((self.dir / "log").glob("*.log")):
                logs += f"\n--- {f.name}\n" + f.read_text(errors="replace")[-3000:]
            raise AssertionError(f"ceph-single-node.sh {' '.join(args)}: {p.stderr}{logs}")

    def up(self) -> None:
        self._script("up", str(self.dir), self.pool)

    def stop(self) -> None:
        self._script("stop", str(self.dir))

    def destroy(self) -> None:
        self._script("destroy", str(self.dir))

    def cmd(self, *args: str, timeout: float = 60) -> str:
        p = subprocess.run(
            [args[0], "-c", str(self.conf), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if p.returncode:
            raise AssertionError(f"{' '.join(args)} failed: {p.stderr}")
        return p.stdout

    def new_image(self, size_mb: int = 64, prefix: str = "img") -> str:
        name = f"{prefix}{os.getpid()}x{next(_images)}"
        self.cmd("rbd", "create", "--size", str(size_mb), f"{self.pool}/{name}")
        return name

    def cluster_params(self, name: str, **extra: object) -> dict[str, object]:
        """bdev_rbd_register_cluster params for this cluster."""
        return {
            "name": name,
            "user_id": "admin",
            "config_file": str(self.conf),
            "key_file": str(self.keyring),
            **extra,
        }

    def read_image(self, image: str, offset: int, length: int) -> bytes:
        """Read straight from Ceph (librbd in this process), not through blockfabric."""
        import rados
        import rbd

        with rados.Rados(conffile=str(self.conf), conf={"keyring": str(self.keyring)}) as r:
            with r.open_ioctx(self.pool) as io:
                with rbd.Image(io, image, read_only=True) as img:
                    return bytes(img.read(offset, length))


# One cluster per test session even when several modules import the fixture
# (each import is its own session-scoped fixture): they share it, the last
# one to finish stops it.
_shared: dict[str, object] = {}


def _start() -> CephCluster:
    c = _shared.get("cluster")
    if isinstance(c, CephCluster):
        _shared["users"] = int(str(_shared["users"])) + 1
        return c
    # short path: admin socket paths are limited to 107 bytes
    folder = Path(f"/tmp/bfceph-{os.getpid()}")
    shutil.rmtree(folder, ignore_errors=True)
    c = CephCluster(folder)
    _shared.update(cluster=c, users=1)
    try:
        c.up()
    except BaseException:
        _stop()
        raise
    return c


def _stop() -> None:
    users = int(str(_shared.get("users", 1))) - 1
    _shared["users"] = users
    c = _shared.get("cluster")
    if users > 0 or not isinstance(c, CephCluster):
        return
    _shared.clear()
    folder = c.dir
    try:
        c.destroy()
    finally:
        deadline = time.monotonic() + 10
        while procs_of(folder) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = procs_of(folder)
        for p in left:
            os.kill(p, 9)
        shutil.rmtree(folder, ignore_errors=True)
    assert not left, f"Ceph processes left behind: {left}"
    assert not folder.exists(), f"{folder} left behind"


@pytest.fixture(scope="session")
def ceph() -> Iterator[CephCluster]:
    why = ceph_missing()
    if why:
        missing_tool(why)
    c = _start()
    try:
        yield c
    finally:
        _stop()
