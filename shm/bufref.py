"""`BufRef`: a slice of a shared-memory segment, named so another process can map it.

Buffers never travel inside messages between processes: a `BufRef` (segment
name, offset, length) does, and the receiver resolves it against the segment
it has mapped (`BufferPool.view_of`). It lives in shm, the lowest layer that
knows segments; actors/messages.py re-exports it for the messages that carry one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class BufRef:
    """A slice of a shared-memory segment, passed by reference."""

    segment: str
    offset: int
    length: int

    def pack(self) -> list[str | int]:
        return [self.segment, self.offset, self.length]

    @classmethod
    def unpack(cls, v: list[Any]) -> BufRef:
        return cls(str(v[0]), int(v[1]), int(v[2]))
