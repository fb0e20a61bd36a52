"""Passthru bdev (SPDK's ``bdev_passthru``): a new name on a base bdev, every
operation passed down unchanged. The template for a stacked module, and the
measure of what one stacking layer costs (bench/stack.py)."""

from __future__ import annotations

from typing import Any

from .base import Bdev, IoChannel
from .stacked import ForwardChannel, StackedBdev


class PassthruBdev(StackedBdev):
    MODULE = "passthru"
    PRODUCT = "passthru"

    @classmethod
    def create(cls, name: str, base: Bdev, uuid: str | None = None) -> PassthruBdev:
        kw: dict[str, Any] = {"uuid": uuid} if uuid else {}
        b = cls(
            name=name,
            block_size=base.block_size,
            num_blocks=base.num_blocks,
            product_name=cls.PRODUCT,
            **kw,
        )
        b.base_descs = [base.describe()]
        b.supports_unmap = base.supports_unmap
        b.supports_write_zeroes = base.supports_write_zeroes
        b.supports_flush = base.supports_flush
        b.create_method = "bdev_passthru_create"
        b.create_params = {"base_bdev_name": base.name, "name": name, "uuid": b.uuid}
        return b

    def open_channel(self, loop: Any = None) -> IoChannel:
        return ForwardChannel(self, self.base_bdev(0).open_channel(loop))

    def driver_specific(self) -> dict[str, Any]:
        return {"passthru": {"name": self.name, "base_bdev_name": self.base_names()[0]}}
