"""Typed messages between the supervisor and the reactors (msgpack on ZeroMQ).

Every message kind is a small dataclass registered under a short tag. On the
wire a message is a msgpack array ``[tag, corr, field1, field2, ...]`` in field
order: compact, and decoding checks the field count. ``corr`` is the
correlation id: a request carries a fresh non-zero id and its `Reply` carries
the same one; 0 means "no reply expected".

Buffers never travel inside messages: a `BufRef` (segment, offset, length)
names a slice of a shared-memory segment that both sides have mapped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, dataclass_transform

import msgpack

# BufRef lives in shm (the layer that knows segments); re-exported for messages
from ..shm.bufref import BufRef as BufRef


class MessageError(ValueError):
    pass


_KINDS: dict[str, type[Message]] = {}


class Message:
    TAG: ClassVar[str] = ""
    # set by @message (every kind is a dataclass); declared so that
    # dataclasses.fields() accepts a Message for mypy
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def fields(self) -> list[Any]:
        """The field values in order (msgpack-encodable values)."""
        return [getattr(self, f.name) for f in dataclasses.fields(self)]


_M = TypeVar("_M", bound=type[Message])


@dataclass_transform(field_specifiers=(field,))
def message(tag: str) -> Callable[[_M], _M]:
    """Register a message kind under ``tag`` and make it a dataclass."""

    def deco(cls: _M) -> _M:
        dataclass(cls)  # in place: the same class object comes back (no slots)
        cls.TAG = tag
        if tag in _KINDS:
            raise ValueError(f"duplicate message tag {tag}")
        _KINDS[tag] = cls
        return cls

    return deco


def encode(msg: Message, corr: int = 0) -> bytes:
    return msgpack.packb([msg.TAG, corr, *msg.fields()], use_bin_type=True)


def decode(data: bytes) -> tuple[Message, int]:
    try:
        arr = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several types
        raise MessageError(f"undecodable message: {e}") from None
    if not isinstance(arr, list) or len(arr) < 2 or not isinstance(arr[0], str):
        raise MessageError("message is not [tag, corr, ...]")
    cls = _KINDS.get(arr[0])
    if cls is None:
        raise MessageError(f"unknown message kind {arr[0]!r}")
    nf = len(dataclasses.fields(cls))
    if len(arr) - 2 != nf:
        raise MessageError(f"{arr[0]}: expected {nf} fields, got {len(arr) - 2}")
    return cls(*arr[2:]), int(arr[1])


# ---------------------------------------------------------------- generic ---
@message("reply")
class Reply(Message):
    ok: bool
    result: Any = None
    error: str = ""


@message("ping")
class Ping(Message):
    sent_ns: int = 0


@message("hello")
class Hello(Message):
    """First message of a reactor: it is up and its mailbox works."""

    reactor_id: int
    pid: int


@message("shutdown")
class Shutdown(Message):
    """Supervisor -> reactor: stop accepting, fail in-flight work, exit."""

    reason: str = ""


@message("config")
class ConfigUpdate(Message):
    """Supervisor -> every reactor: the new configuration snapshot.

    ``bdevs`` maps bdev name -> module description (Bdev.describe());
    ``nvmf`` and ``iscsi`` are the protocol configs as plain dicts. Reactors
    replace their views atomically between two callbacks and reply once done.
    """

    generation: int
    bdevs: dict[str, Any] = field(default_factory=dict)
    nvmf: dict[str, Any] = field(default_factory=dict)
    iscsi: dict[str, Any] = field(default_factory=dict)


@message("bdev_remove")
class BdevRemove(Message):
    """Hot-remove: fail new I/O on the bdev, let in-flight I/O complete, close
    the channel, reply when nothing references the memory any more."""

    name: str


@message("set_poll_mode")
class SetPollMode(Message):
    mode: str
    spin_us: int = 200


@message("ctrl_call")
class ControllerCall(Message):
    """A request to the actor that owns an NVMe-oF controller or iSCSI object.

    ``op`` names the operation (e.g. "create_ctrlr", "find_ctrlr",
    "destroy_ctrlr", "qpair_gone", "pr_out"); ``args`` its arguments.
    """

    op: str
    args: dict[str, Any] = field(default_factory=dict)


@message("event")
class Event(Message):
    """A notification without reply (e.g. namespace changed -> AEN)."""

    op: str
    args: dict[str, Any] = field(default_factory=dict)
