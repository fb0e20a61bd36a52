"""Split bdev (SPDK's ``bdev_split``): a base cut into N equal parts named
``BASEp0`` .. ``BASEpN-1``. Part i covers blocks ``[i*size, (i+1)*size)`` of
the base; an I/O beyond a part's end is refused (OUT_OF_RANGE) before it
reaches the base, so no part can touch its neighbour."""

from __future__ import annotations

import uuid as uuid_mod
from typing import Any

from .base import Bdev, IoChannel
from .stacked import ForwardChannel, StackedBdev


class SplitBdev(StackedBdev):
    MODULE = "split"
    PRODUCT = "Split Disk"
    offset_blocks: int = 0
    index: int = 0

    def _description(self) -> dict[str, Any]:
        return {**super()._description(), "offset_blocks": self.offset_blocks, "index": self.index}

    def _restore(self, d: dict[str, Any]) -> None:
        super()._restore(d)
        self.offset_blocks = int(d["offset_blocks"])
        self.index = int(d["index"])

    @classmethod
    def create_parts(
        cls, base: Bdev, split_count: int, split_size_mb: int | None = None
    ) -> list[SplitBdev]:
        """The parts; raises ValueError when they do not fit in the base."""
        bs = base.block_size
        if split_size_mb:
            if (split_size_mb << 20) % bs:
                raise ValueError(
                    f"split_size_mb {split_size_mb} is not a multiple of the block size"
                )
            per = (split_size_mb << 20) // bs
            if per * split_count > base.num_blocks:
                raise ValueError(
                    f"{split_count} parts of {split_size_mb} MiB do not fit in {base.name} "
                    f"({base.size_bytes >> 20} MiB)"
                )
        else:
            per = base.num_blocks // split_count
        if per < 1:
            raise ValueError(
                f"{base.name} has {base.num_blocks} blocks: too small for {split_count} parts"
            )
        desc = base.describe()
        parts = []
        for i in range(split_count):
            p = cls(
                name=f"{base.name}p{i}",
                block_size=bs,
                num_blocks=per,
                product_name=cls.PRODUCT,
                # stable across restarts: derived from the base and the index
                uuid=str(uuid_mod.uuid5(uuid_mod.UUID(base.uuid), f"split{i}")),
            )
            p.base_descs = [desc]
            p.offset_blocks = i * per
            p.index = i
            p.supports_unmap = base.supports_unmap
            p.supports_write_zeroes = base.supports_write_zeroes
            p.supports_flush = base.supports_flush
            parts.append(p)
        # one bdev_split_create recreates all parts: the first part carries it
        parts[0].create_method = "bdev_split_create"
        parts[0].create_params = {"base_bdev": base.name, "split_count": split_count}
        if split_size_mb:
            parts[0].create_params["split_size_mb"] = split_size_mb
        return parts

    def open_channel(self, loop: Any = None) -> IoChannel:
        return ForwardChannel(self, self.base_bdev(0).open_channel(loop), self.offset_blocks)

    def driver_specific(self) -> dict[str, Any]:
        return {"split": {"base_bdev": self.base_names()[0], "offset_blocks": self.offset_blocks}}
