"""Names of an instance's shared objects and where its run files live.

Every object an instance creates is called ``blockfabric.<instance>.<tag>``:
the POSIX name is ``/blockfabric.<instance>.<tag>``, which Linux shows as
``/dev/shm/blockfabric.<instance>.<tag>`` (shared memory) or
``/dev/shm/sem.blockfabric.<instance>.<tag>`` (named semaphore). A fixed
prefix plus the instance name is what lets ``blockfabric shm cleanup`` find
what a crashed instance left behind without touching anything else.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PREFIX = "blockfabric"
SHM_DIR = Path("/dev/shm")
SEM_PREFIX = "sem."  # glibc stores named semaphores as /dev/shm/sem.<name>
DEFAULT_RUN_DIR = "/var/tmp/blockfabric"

_INSTANCE_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
# A tag may contain dots ("bufpool.lock") but not slashes; "manifest" is taken
# by the instance's manifest file.
_TAG_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
RESERVED_TAGS = frozenset({"manifest"})


def validate_instance(instance: str) -> str:
    if not isinstance(instance, str) or not _INSTANCE_RE.fullmatch(instance):
        raise ValueError(
            f"invalid instance name {instance!r}: use 1-32 characters from A-Z a-z 0-9 _ -"
        )
    return instance


def validate_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _TAG_RE.fullmatch(tag) or tag in RESERVED_TAGS:
        raise ValueError(
            f"invalid object tag {tag!r}: use 1-64 characters from A-Z a-z 0-9 _ - . "
            f"(not starting with '.', not {sorted(RESERVED_TAGS)})"
        )
    return tag


def object_name(instance: str, tag: str) -> str:
    """``blockfabric.<instance>.<tag>``: the name as it shows in /dev/shm or a hugetlbfs mount."""
    return f"{PREFIX}.{validate_instance(instance)}.{validate_tag(tag)}"


def posix_name(instance: str, tag: str) -> str:
    """The name to give shm_open()/sem_open() (leading slash)."""
    return "/" + object_name(instance, tag)


def shm_path(instance: str, tag: str) -> Path:
    return SHM_DIR / object_name(instance, tag)


def sem_path(instance: str, tag: str) -> Path:
    return SHM_DIR / (SEM_PREFIX + object_name(instance, tag))


def manifest_path(instance: str) -> Path:
    return SHM_DIR / f"{PREFIX}.{validate_instance(instance)}.manifest"


def parse_object_name(name: str) -> tuple[str, str] | None:
    """``(instance, tag)`` of a blockfabric object name, else None.

    Accepts ``blockfabric.I.T``, ``/blockfabric.I.T``, ``sem.blockfabric.I.T``
    and a path whose last component is one of these.
    """
    base = name.rsplit("/", 1)[-1]
    if base.startswith(SEM_PREFIX + PREFIX + "."):
        base = base[len(SEM_PREFIX) :]
    parts = base.split(".", 2)
    if len(parts) != 3 or parts[0] != PREFIX:
        return None
    instance, tag = parts[1], parts[2]
    if not _INSTANCE_RE.fullmatch(instance) or not _TAG_RE.fullmatch(tag):
        return None
    return instance, tag


def run_dir() -> Path:
    """The directory for lock files and IPC sockets, created mode 0700.

    Read from the environment on every call so tests (and a second daemon
    started with a different BLOCKFABRIC_RUN_DIR) see the right one.
    """
    path = Path(os.environ.get("BLOCKFABRIC_RUN_DIR") or DEFAULT_RUN_DIR)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def __getattr__(name: str) -> Path:
    # ``names.RUN_DIR`` stays a plain attribute for callers but follows the
    # environment like run_dir() (PEP 562 module __getattr__).
    if name == "RUN_DIR":
        return run_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
