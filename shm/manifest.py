"""Per-instance manifest of shared objects: /dev/shm/blockfabric.<instance>.manifest.

It lives next to the objects (tmpfs, gone on reboot like them) and records who
created each one (pid + process create time, so a recycled pid is not mistaken
for the owner). The cleanup tool reads it to decide whether an instance is
dead. Control path only: every change is a locked read-modify-write.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from . import names

KINDS = ("shm", "hugetlbfs", "sem")


def process_ctime(pid: int | None = None) -> float:
    import psutil

    return float(psutil.Process(pid).create_time())


@dataclass
class ManifestEntry:
    name: str
    kind: str
    path: str
    size: int
    owner_pid: int
    owner_ctime: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ManifestEntry:
        return cls(
            name=str(d["name"]),
            kind=str(d["kind"]),
            path=str(d["path"]),
            size=int(d["size"]),
            owner_pid=int(d["owner_pid"]),
            owner_ctime=float(d["owner_ctime"]),
        )


class Manifest:
    def __init__(self, instance: str) -> None:
        self.instance = names.validate_instance(instance)
        self.path = names.manifest_path(instance)
        self.created: float = 0.0
        self.objects: list[ManifestEntry] = []

    # ------------------------------------------------------------ reading --
    @classmethod
    def load(cls, instance: str) -> Manifest:
        """The manifest as on disk (empty ``objects`` when there is none)."""
        m = cls(instance)
        try:
            text = m.path.read_text()
        except FileNotFoundError:
            return m
        m._parse(text)
        return m

    def _parse(self, text: str) -> None:
        if not text.strip():
            return
        try:
            d = json.loads(text)
            self.created = float(d.get("created", 0.0))
            self.objects = [ManifestEntry.from_dict(o) for o in d.get("objects", [])]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"corrupt manifest {self.path}: {e}") from None

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def owner_pids(self) -> list[tuple[int, float]]:
        return sorted({(o.owner_pid, o.owner_ctime) for o in self.objects})

    def entry(self, name: str, kind: str | None = None) -> ManifestEntry | None:
        return next(
            (o for o in self.objects if o.name == name and (kind is None or o.kind == kind)), None
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "created": self.created,
            "objects": [asdict(o) for o in self.objects],
        }

    @staticmethod
    def list_instances() -> list[str]:
        out = []
        for p in names.SHM_DIR.glob(f"{names.PREFIX}.*.manifest"):
            inst = p.name[len(names.PREFIX) + 1 : -len(".manifest")]
            with contextlib.suppress(ValueError):
                out.append(names.validate_instance(inst))
        return sorted(out)

    # ------------------------------------------------------------ writing --
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """flock the manifest file itself for a read-modify-write.

        Writers replace the file (new inode), so after getting the lock check
        that we locked the inode the path names now; otherwise retry.
        """
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            with os.fdopen(os.dup(fd), "r") as f:
                self._parse(f.read())
            yield
        finally:
            os.close(fd)

    def _write(self) -> None:
        if not self.objects:
            # Nothing left to record: the manifest goes too (unlink while
            # locked; waiters see the inode change and retry).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        if not self.created:
            self.created = time.time()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def add(
        self,
        name: str,
        kind: str,
        path: str,
        size: int,
        owner_pid: int | None = None,
        owner_ctime: float | None = None,
    ) -> ManifestEntry:
        if kind not in KINDS:
            raise ValueError(f"manifest kind must be one of {KINDS}, not {kind!r}")
        pid = os.getpid() if owner_pid is None else owner_pid
        ctime = process_ctime(pid) if owner_ctime is None else owner_ctime
        e = ManifestEntry(name, kind, str(path), int(size), pid, ctime)
        with self._locked():
            # A shm segment and a semaphore may share a name: key on both.
            self.objects = [o for o in self.objects if (o.name, o.kind) != (name, kind)] + [e]
            self._write()
        return e

    def remove(self, name: str, kind: str | None = None) -> bool:
        """Drop the entries for ``name`` (of ``kind`` if given); True if there was one."""
        if not self.path.exists():
            return False
        with self._locked():
            before = len(self.objects)
            self.objects = [
                o for o in self.objects if o.name != name or (kind is not None and o.kind != kind)
            ]
            if len(self.objects) == before:
                if not self.objects:
                    self._write()  # an empty file left by a crashed writer
                return False
            self._write()
        return True

    def delete(self) -> None:
        """Remove the manifest file (cleanup of a dead instance)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
