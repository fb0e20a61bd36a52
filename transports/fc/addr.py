"""FC transport addresses: ``nn-0x<WWNN>:pn-0x<WWPN>`` as nvme-cli and SPDK write them.

A World Wide Name is 64 bits, written as 16 hex digits. nvme-cli's
``traddr`` for FC is ``nn-0x20000090fa942779:pn-0x10000090fa942779``; SPDK
accepts the same (``spdk_nvme_transport_id_parse`` with ``trtype:FC``).
Parsing is strict: both parts, in that order, exactly 16 hex digits each
(case-insensitive); the canonical form is lower-case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TRADDR_RE = re.compile(r"nn-0x([0-9A-Fa-f]{16}):pn-0x([0-9A-Fa-f]{16})\Z")
ADRFAM = "fc"
TRTYPE = "FC"


class FcAddrError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class FcName:
    """A port's names: node name (WWNN) and port name (WWPN)."""

    wwnn: int
    wwpn: int

    @property
    def traddr(self) -> str:
        return f"nn-0x{self.wwnn:016x}:pn-0x{self.wwpn:016x}"

    def __str__(self) -> str:
        return self.traddr

    def pack(self) -> bytes:
        return self.wwnn.to_bytes(8, "big") + self.wwpn.to_bytes(8, "big")

    @classmethod
    def unpack(cls, b: bytes | bytearray | memoryview) -> FcName:
        if len(b) != 16:
            raise FcAddrError(f"a packed FC name is 16 bytes, not {len(b)}")
        return cls(int.from_bytes(b[:8], "big"), int.from_bytes(b[8:16], "big"))


def parse_traddr(traddr: str) -> FcName:
    m = _TRADDR_RE.match(traddr.strip())
    if m is None:
        raise FcAddrError(
            f"invalid FC traddr {traddr!r}: expected nn-0x<16 hex digits>:pn-0x<16 hex digits>"
        )
    wwnn, wwpn = int(m.group(1), 16), int(m.group(2), 16)
    if wwnn == 0 or wwpn == 0:
        raise FcAddrError(f"invalid FC traddr {traddr!r}: a WWN of zero")
    return FcName(wwnn, wwpn)
