"""pyverbs at the C level, shared by the NVMe/RDMA target glue (rdma_verbs.py)
and the host glue (nvmf_host/rdma_verbs.py): whether pyverbs loads (the
refusal names the Debian packages), the address of a buffer, the C pointers
pyverbs wraps (checked against the object layout: `RdmaUnsupported` if
pyverbs changed), the fds of RDMA CM event channels and completion channels
an event loop needs, the status and cm_id of an RDMA CM event.

No NVMe and no reactor here (the host side sits below the transports).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from typing import Any

PYVERBS_PACKAGES = "python3-pyverbs rdma-core ibverbs-providers"

_KEEP: list[Any] = []  # verbs contexts librdmacm owns: never deallocated by us


def pyverbs_missing() -> str | None:
    """None if pyverbs imports, else why (naming the packages)."""
    try:
        import pyverbs.cmid  # noqa: F401
        import pyverbs.cq  # noqa: F401
    except Exception as e:  # ImportError, or libibverbs/librdmacm missing
        return (
            f"pyverbs is not installed or does not load ({type(e).__name__}: {e}); "
            f"install the Debian packages {PYVERBS_PACKAGES} and run scripts/install-deps.sh "
            "(it links pyverbs into .venv)"
        )
    return None


class RdmaUnsupported(RuntimeError):
    pass


# ----------------------------------------------------------- C-level helpers
class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_ReleaseBuffer = ctypes.pythonapi.PyBuffer_Release
_ReleaseBuffer.argtypes = [ctypes.POINTER(_PyBuffer)]


def addr_of(buf: Any) -> int:
    """The address of the first byte of a buffer (read-only ones too)."""
    b = _PyBuffer()
    if _GetBuffer(buf, ctypes.byref(b), 0) != 0:
        raise ValueError("not a buffer")
    try:
        return int(b.buf or 0)
    finally:
        _ReleaseBuffer(ctypes.byref(b))


# Cython object layout of the pyverbs classes we read: PyObject head (16),
# vtable (8), __weakref__ (8), logger (8), then the C pointer
_CPTR_OFF = 40
_LAYOUT = {"CMEvent": 48, "CMID": 80, "CMEventChannel": 48, "CompChannel": 64}


def _cptr(obj: Any) -> int:
    name = type(obj).__name__
    if type(obj).__basicsize__ != _LAYOUT.get(name, -1):
        raise RdmaUnsupported(f"pyverbs {name} layout changed ({type(obj).__basicsize__} bytes)")
    return int(ctypes.c_void_p.from_address(id(obj) + _CPTR_OFF).value or 0)


def event_cm_id(ev: Any) -> int:
    """The rdma_cm_id pointer of an event (``event->id``, its first field)."""
    p = _cptr(ev)
    return int(ctypes.c_void_p.from_address(p).value or 0) if p else 0


def event_status(ev: Any) -> int:
    p = _cptr(ev)  # struct rdma_cm_event { id, listen_id, event (4), status (4) }
    return int(ctypes.c_int.from_address(p + 20).value) if p else 0


# struct rdma_cm_id { verbs, channel, context, qp, struct rdma_route route ... }:
# route.addr.src_addr at 32, route.addr.dst_addr at 32 + 128
_SRC_OFF, _DST_OFF = 32, 160


def cm_id_addr(cm_id: int, peer: bool) -> str:
    if not cm_id:
        return "?"
    base = cm_id + (_DST_OFF if peer else _SRC_OFF)
    raw = ctypes.string_at(base, 28)
    fam = struct.unpack_from("<H", raw, 0)[0]
    port = struct.unpack_from(">H", raw, 2)[0]
    if fam == socket.AF_INET:
        return f"{socket.inet_ntop(socket.AF_INET, raw[4:8])}:{port}"
    if fam == socket.AF_INET6:
        return f"[{socket.inet_ntop(socket.AF_INET6, raw[8:24])}]:{port}"
    return "?"


def _nonblock(fd: int) -> int:
    fl = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
    return fd


def event_channel_fd(chan: Any) -> int:
    """The fd of a CMEventChannel (struct rdma_event_channel { int fd; }), non-blocking."""
    p = _cptr(chan)
    if not p:
        raise RdmaUnsupported("CMEventChannel has no rdma_event_channel")
    fd = int(ctypes.c_int.from_address(p).value)
    os.fstat(fd)  # EBADF if the layout guess were wrong
    return _nonblock(fd)


def comp_channel_fd(chan: Any) -> int:
    """The fd of a CompChannel (struct ibv_comp_channel { context; int fd; ... })."""
    p = _cptr(chan)
    if not p:
        raise RdmaUnsupported("CompChannel has no ibv_comp_channel")
    fd = int(ctypes.c_int.from_address(p + 8).value)
    os.fstat(fd)
    return _nonblock(fd)
