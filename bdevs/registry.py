"""Rebuild a Bdev in a reactor from the supervisor's description."""

from __future__ import annotations

from typing import Any

from .aio import AioBdev
from .base import Bdev
from .delay import DelayBdev
from .error import ErrorBdev
from .malloc import MallocBdev
from .null import NullBdev
from .nvme import NvmeBdev
from .passthru import PassthruBdev
from .raid import RaidBdev
from .rbd import RbdBdev
from .split import SplitBdev
from .wcache import WcacheBdev

MODULES: dict[str, type[Bdev]] = {
    c.MODULE: c for c in (MallocBdev, NullBdev, AioBdev, NvmeBdev, WcacheBdev, RbdBdev)
}
# the stackable bdevs (bdevs/stacked.py)
MODULES.update({c.MODULE: c for c in (PassthruBdev, SplitBdev, DelayBdev, ErrorBdev, RaidBdev)})


def bdev_from_description(d: dict[str, Any]) -> Bdev:
    cls = MODULES.get(d.get("module", ""))
    if cls is None:
        raise ValueError(f"unknown bdev module {d.get('module')!r}")
    return cls.from_description(d)
