"""Wire format of the loopback LLD (sans-I/O): FC-NVMe sequences over a stream.

A real HBA moves FC frames; the loopback LLD moves whole FC *sequences* (one
IU, one LS payload, one data burst) over a Unix stream socket, each preceded
by a 16-byte header (big-endian)::

    0  type      u8   (T_*)
    1  flags     u8   (0)
    2  reserved  u16
    4  xid       u32  exchange id, chosen by the exchange's originator (OX_ID)
    8  offset    u32  relative offset (DATA, XFER_RDY), else 0
    12 length    u32  payload bytes that follow

The first frame from the host is LOGIN (the host port's and the wanted
target port's names, standing in for FLOGI/PLOGI/PRLI); the target answers
LOGIN_ACC or LOGIN_RJT. After that: LS_REQ/LS_RSP (FC-NVMe link services),
CMD (CMD IU) / XFER_RDY (target wants ``length`` bytes at ``offset``) / DATA /
RSP (good response or ERSP, closes the exchange), ABTS / BA_ACC.

`FrameReader` bounds every payload by ``max_payload`` *before* buffering it
and raises `FrameError` on anything malformed: the LLD then drops the
connection (the link went down), which tears the nexus down.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from ...shm import names
from .addr import FcName

T_LOGIN = 1
T_LOGIN_ACC = 2
T_LOGIN_RJT = 3
T_LS_REQ = 4
T_LS_RSP = 5
T_CMD = 6
T_XFER_RDY = 7
T_DATA = 8
T_RSP = 9
T_ABTS = 10
T_BA_ACC = 11
T_LOGOUT = 12

TYPE_NAMES = {
    T_LOGIN: "LOGIN",
    T_LOGIN_ACC: "LOGIN_ACC",
    T_LOGIN_RJT: "LOGIN_RJT",
    T_LS_REQ: "LS_REQ",
    T_LS_RSP: "LS_RSP",
    T_CMD: "CMD",
    T_XFER_RDY: "XFER_RDY",
    T_DATA: "DATA",
    T_RSP: "RSP",
    T_ABTS: "ABTS",
    T_BA_ACC: "BA_ACC",
    T_LOGOUT: "LOGOUT",
}

HDR = struct.Struct(">BBHIII")
HDR_LEN = HDR.size
LOGIN_LEN = 32  # host FcName + target FcName, packed
# payloads that are not data are small; data bursts are bounded by the reader's max_payload
_CTRL_MAX = {
    T_LOGIN: LOGIN_LEN,
    T_LOGIN_ACC: 0,
    T_LOGIN_RJT: 256,
    T_LS_REQ: 2048,
    T_LS_RSP: 2048,
    T_CMD: 96,
    T_XFER_RDY: 0,
    T_RSP: 32,
    T_ABTS: 0,
    T_BA_ACC: 0,
    T_LOGOUT: 0,
}


def socket_dir() -> Path:
    d = names.run_dir() / "fc"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def socket_path(port: FcName) -> str:
    """Where the loopback target port ``port`` listens: ``RUN_DIR/fc/<WWPN>.sock``."""
    return str(socket_dir() / f"{port.wwpn:016x}.sock")


class FrameError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    xid: int
    offset: int
    length: int  # payload length (XFER_RDY: the burst length asked for, no payload)
    payload: memoryview

    def __repr__(self) -> str:
        return (
            f"Frame({TYPE_NAMES.get(self.type, self.type)}, xid={self.xid:#x}, "
            f"off={self.offset}, len={self.length})"
        )


def header(ftype: int, xid: int, offset: int, length: int) -> bytes:
    return HDR.pack(ftype, 0, 0, xid & 0xFFFFFFFF, offset, length)


def encode(ftype: int, xid: int, payload: bytes = b"", offset: int = 0) -> bytes:
    return header(ftype, xid, offset, len(payload)) + payload


def xfer_rdy(xid: int, offset: int, burst: int) -> bytes:
    """Transfer-ready: the length field is the burst asked for; no payload follows."""
    return HDR.pack(T_XFER_RDY, 0, 0, xid, offset, burst)


class FrameReader:
    """Reassembles frames from a byte stream; bounded memory.

    Zero copy where it can: a frame that arrived whole in one ``feed`` has a
    payload that is a view of the caller's buffer, valid until the caller
    reuses that buffer (both LLD ends consume every frame before their next
    receive). Only the bytes of an incomplete frame are kept, and a header is
    checked (type, bounds) as soon as its 16 bytes are in.
    """

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def _plen(self, ftype: int, flags: int, rsvd: int, length: int) -> int:
        """Payload bytes following a header; FrameError when it is invalid."""
        if ftype not in TYPE_NAMES:
            raise FrameError(f"unknown frame type {ftype}")
        if flags or rsvd:
            raise FrameError(f"{TYPE_NAMES[ftype]}: reserved header bits set")
        if ftype == T_XFER_RDY:
            if length == 0 or length > self.max_payload:
                raise FrameError(f"XFER_RDY burst {length} outside 1..{self.max_payload}")
            return 0
        limit = self.max_payload if ftype == T_DATA else _CTRL_MAX[ftype]
        if length > limit:
            raise FrameError(f"{TYPE_NAMES[ftype]} payload {length} > {limit}")
        if ftype == T_DATA and length == 0:
            raise FrameError("DATA frame without data")
        if ftype == T_LOGIN and length != LOGIN_LEN:
            raise FrameError(f"LOGIN payload {length}, expected {LOGIN_LEN}")
        return length

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        mv = memoryview(data)
        if mv.ndim != 1 or mv.format != "B":
            mv = mv.cast("B")
        out: list[Frame] = []
        if self._buf:
            # finish the incomplete frame first (only its bytes are copied)
            buf = self._buf
            if len(buf) < HDR_LEN:
                k = min(HDR_LEN - len(buf), len(mv))
                buf += mv[:k]
                mv = mv[k:]
                if len(buf) < HDR_LEN:
                    return out
            ftype, flags, rsvd, xid, offset, length = HDR.unpack_from(buf, 0)
            need = HDR_LEN + self._plen(ftype, flags, rsvd, length) - len(buf)
            k = min(need, len(mv))
            buf += mv[:k]
            mv = mv[k:]
            if k < need:
                return out
            out.append(Frame(ftype, xid, offset, length, memoryview(bytes(buf[HDR_LEN:]))))
            self._buf = bytearray()
        pos = 0
        end = len(mv)
        unpack = HDR.unpack_from
        while end - pos >= HDR_LEN:
            ftype, flags, rsvd, xid, offset, length = unpack(mv, pos)
            plen = self._plen(ftype, flags, rsvd, length)
            start = pos + HDR_LEN
            if end - start < plen:
                break
            out.append(Frame(ftype, xid, offset, length, mv[start : start + plen]))
            pos = start + plen
        if pos < end:
            self._buf = bytearray(mv[pos:])
        return out
